"""Checkpoints: restore onto other device counts, fingerprint check, fall-back on corruption."""

import glob
import os
import shutil

import jax
import numpy as np
import pytest

import train_tiny
from ldm_jax.train import axis_rules, checkpoint, optim, parallel

STEPS = 3


_dp = train_tiny.data_parallel


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """Steps 1..3 saved from an 8-device mesh with fsdp=8, and host copies of each state."""
  directory = str(tmp_path_factory.mktemp("ckpt") / "run")
  dp = _dp(num_fsdp=8)
  state = dp.create_state(train_tiny.init_params, jax.random.key(0))
  ckpts = checkpoint.Checkpoints(directory, max_to_keep=5)
  hosts = {}
  for i in range(STEPS):
    state, _ = dp.step(state, dp.put_batch(train_tiny.make_batch(i, 16)))
    hosts[i + 1] = jax.tree.map(np.asarray, state)
    assert ckpts.save(i + 1, state, data_state={"position": i + 1},
                      metadata={"latent_scale_factor": 0.25}, config=optim.default_config())
  ckpts.close()
  assert hosts[3].params["head"]["kernel"].shape == (8, 3)
  return directory, hosts


def _target(dp, hosts):
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), hosts[1])
  return parallel.with_shardings(abstract, dp.global_shardings(abstract))


def _assert_equal(tree, host):
  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(host)):
    np.testing.assert_array_equal(np.asarray(a), b)


@pytest.mark.parametrize("n_devices,num_fsdp", [(1, 1), (2, 2)])
def test_restore_onto_other_device_counts(saved, n_devices, num_fsdp):
  directory, hosts = saved
  dp = _dp(num_fsdp=num_fsdp, num_devices=n_devices)
  ckpts = checkpoint.Checkpoints(directory)
  r = ckpts.restore(_target(dp, hosts))
  ckpts.close()
  assert r.step == STEPS and r.data_state == {"position": STEPS}
  assert r.metadata == {"latent_scale_factor": 0.25}
  assert r.config["learning_rate"] == optim.default_config().learning_rate
  _assert_equal(r.state, hosts[STEPS])
  kernel = r.state.params["conv_down"]["kernel"]
  assert len(kernel.sharding.device_set) == n_devices
  # and the restored state trains on: one step equals one step from the host copy
  nxt, _ = dp.step(r.state, dp.put_batch(train_tiny.make_batch(STEPS, 16)))
  assert int(nxt.step) == STEPS + 1


def test_restore_into_pmap_layout(saved):
  directory, hosts = saved
  dp = _dp(mode="pmap")
  ckpts = checkpoint.Checkpoints(directory)
  r = ckpts.restore(_target(dp, hosts))
  ckpts.close()
  local = dp.from_global(r.state)
  assert local.params["head"]["kernel"].shape == (8, 8, 3)
  _assert_equal(dp.to_global(local), hosts[STEPS])


def _corrupt(step_dir, how):
  data = sorted(f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"),
                                     recursive=True) if os.path.isfile(f))
  assert data, step_dir
  if how == "empty":
    shutil.rmtree(step_dir)
    os.makedirs(step_dir)
  elif how == "truncate":
    for f in data:
      with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
  elif how == "flip":
    for f in data:
      raw = bytearray(open(f, "rb").read())
      for i in range(len(raw) // 3, len(raw) // 3 + 8):
        raw[i] ^= 0xFF
      open(f, "wb").write(bytes(raw))
  elif how == "fingerprint":  # the arrays read fine, but differ from what was saved
    meta = os.path.join(step_dir, "meta", "metadata")
    text = open(meta).read()
    key = "\".params['head']['kernel']\": \""
    i = text.index(key) + len(key)
    open(meta, "w").write(text[:i] + ("0" if text[i] != "0" else "1") + text[i + 1:])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax asyncio
@pytest.mark.parametrize("how", ["flip", "truncate", "empty", "fingerprint"])
def test_corrupt_latest_falls_back(saved, tmp_path, how):
  source, hosts = saved
  directory = str(tmp_path / "run")
  shutil.copytree(source, directory)
  _corrupt(os.path.join(directory, str(STEPS)), how)
  dp = _dp(num_devices=1)
  ckpts = checkpoint.Checkpoints(directory)
  with pytest.warns(RuntimeWarning, match=f"step {STEPS} .* unusable"):
    r = ckpts.restore(_target(dp, hosts))
  assert r.step == STEPS - 1 and r.data_state == {"position": STEPS - 1}
  _assert_equal(r.state, hosts[STEPS - 1])
  # the bad step is moved aside, so the resumed run can write that step number again
  assert os.listdir(directory + ".bad") and ckpts.all_steps() == list(range(1, STEPS))
  assert ckpts.save(STEPS, r.state, data_state={"position": STEPS})
  ckpts.close()


def test_no_checkpoint_and_all_bad(saved, tmp_path):
  _, hosts = saved
  dp = _dp(num_devices=1)
  empty = checkpoint.Checkpoints(str(tmp_path / "none"))
  assert empty.restore(_target(dp, hosts)) is None
  empty.close()
  for step in (1, 2):
    os.makedirs(tmp_path / "bad" / str(step))
  bad = checkpoint.Checkpoints(str(tmp_path / "bad"))
  with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="no usable checkpoint"):
    bad.restore(_target(dp, hosts))
  bad.close()


def test_fingerprint_is_layout_independent_and_content_sensitive():
  x = np.arange(16, dtype=np.float32).reshape(4, 4)
  mesh = parallel.make_mesh(4)
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, axis_rules.fsdp_spec((4, 4), 4)))
  assert checkpoint.fingerprint({"a": sharded}) == checkpoint.fingerprint({"a": x})
  y = x.copy()
  y[3, 3] = np.nextafter(y[3, 3], np.float32(100))
  assert checkpoint.fingerprint({"a": y}) != checkpoint.fingerprint({"a": x})
  assert checkpoint.fingerprint({"a": x.astype(np.float64)}) != checkpoint.fingerprint({"a": x})
