"""pmap and mesh (data, data+fsdp) on 8 simulated devices match one device on the same batch."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import train_tiny
from ldm_jax.train import parallel

NUM_STEPS, BATCH = 4, 16


def _train(mode, num_fsdp=1, num_devices=None):
  dp = train_tiny.data_parallel(mode, num_fsdp, num_devices)
  state = dp.create_state(train_tiny.init_params, jax.random.key(0))
  losses = []
  for i in range(NUM_STEPS):
    state, m = dp.step(state, dp.put_batch(train_tiny.make_batch(i, BATCH)))
    losses.append(dp.fetch_metrics(m)["loss"])
  return dp.to_global(state), losses


@pytest.fixture(scope="module")
def reference():
  return _train("mesh", num_devices=1)


@pytest.mark.parametrize("mode,num_fsdp", [("pmap", 1), ("mesh", 1), ("mesh", 2), ("mesh", 8)])
def test_eight_devices_match_one(reference, mode, num_fsdp):
  assert jax.device_count() == 8
  ref, ref_losses = reference
  got, losses = _train(mode, num_fsdp)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for name in ("params", "ema_params", "opt_state"):
    for a, b in zip(jax.tree.leaves(getattr(got, name)), jax.tree.leaves(getattr(ref, name))):
      a, b = np.asarray(a), np.asarray(b)
      assert np.max(np.abs(a - b)) <= 1e-5 * max(np.max(np.abs(b)), 1e-12), name
  assert int(got.step) == NUM_STEPS
  kernel = got.params["conv_down"]["kernel"]  # [3, 3, 4, 8]
  want = P(None, None, None, "fsdp") if num_fsdp > 1 and mode == "mesh" else P()
  assert kernel.sharding.spec == want
  if num_fsdp == 8:  # Adam moments are sharded like the params
    mu = got.opt_state[1][0].mu["conv_down"]["kernel"]
    assert mu.sharding.spec == want


def test_bad_inputs_raise_value_errors():
  with pytest.raises(ValueError, match="pmap"):
    parallel.data_parallel(train_tiny.make_loss(), None, mode="shard_map")
  with pytest.raises(ValueError, match=r"valid choices: \('pmap', 'mesh'\)"):
    parallel.data_parallel(train_tiny.make_loss(), None, mode="shard_map")
  with pytest.raises(ValueError, match="num_fsdp=3"):
    parallel.make_mesh(3)
  with pytest.raises(ValueError, match="multiple of the 8 local devices"):
    parallel.global_batch(train_tiny.make_batch(0, 12), parallel.make_mesh())
