"""`fit` in pmap mode: resume from its own checkpoint, metrics to JSONL and TensorBoard, the early
loss' program before its end (pmap and mesh)."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_tiny
from ldm_jax.train import checkpoint, loop, metrics, optim, parallel, state as state_lib


@pytest.fixture(scope="module")
def dp():
  return train_tiny.data_parallel("pmap")


def _fit(dp, workdir, num_steps, **kw):
  state = dp.create_state(train_tiny.init_params, jax.random.key(0))
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, "ckpt"))
  try:
    return loop.fit(dp, state, train_tiny.ArrayBatches(16), num_steps=num_steps,
                    checkpoints=ckpts, progress=False, **kw)
  finally:
    ckpts.close()


def test_fit_resumes_from_its_checkpoint(dp, tmp_path, capsys):
  full = _fit(dp, str(tmp_path / "full"), 4)
  assert full.restored_from is None and full.step == 4
  params = state_lib.count_params(train_tiny.init_params(jax.random.key(0)))
  assert f"params: {params:,} | mode: pmap" in capsys.readouterr().out
  first = _fit(dp, str(tmp_path / "split"), 3, save_every=2, metadata={"scale": 0.5})
  assert sorted(os.listdir(tmp_path / "split" / "ckpt")) == ["2", "3"]
  second = _fit(dp, str(tmp_path / "split"), 4)
  assert second.restored_from == 3 and second.metadata == {"scale": 0.5}
  assert first.step == 3 and second.step == 4
  want = jax.tree.leaves(dp.to_global(full.state))
  for a, b in zip(jax.tree.leaves(dp.to_global(second.state)), want):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fit_writes_metrics_every_log_step(dp, tmp_path):
  writer = metrics.MetricWriter(str(tmp_path), tensorboard=True)
  _fit(dp, str(tmp_path), 3, writer=writer, log_every=2)
  writer.close()
  rows = metrics.read_jsonl(str(tmp_path))
  assert [r["step"] for r in rows] == [2, 3]  # every log_every steps, and the last one
  assert {"loss", "grad_norm", "skipped", "bad_steps", "steps_per_sec"} <= set(rows[0])
  assert all(np.isfinite(r["loss"]) and r["skipped"] == 0 for r in rows)
  events = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  assert len(events) == 1 and b"grad_norm" in open(events[0], "rb").read()


def _marked(loss_fn, phase):
  """loss_fn with a "phase" metric, so a run's rows say which program took each step."""
  def marked(params, batch, rng, extra):
    loss, aux = loss_fn(params, batch, rng, extra)
    return loss, dict(aux, phase=jnp.float32(phase))
  return marked


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_fit_runs_the_early_loss_before_its_end_and_resumes_into_the_right_phase(tmp_path, mode):
  """data_parallel's early_loss: host steps 0, 1 run the early program, 2, 3 the main one, also
  across a resume from step 1; the state equals a run with the main loss throughout."""
  c = train_tiny.optimizer_config()
  make = lambda early: parallel.data_parallel(
      _marked(train_tiny.make_loss(), 1), optim.make_optimizer(c), mode=mode,
      mesh=parallel.make_mesh(1, jax.devices()[:2]), ema_decay=0.9,
      lr_schedule=optim.learning_rate_schedule(c),
      early_loss=(2, _marked(train_tiny.make_loss(), 0)) if early else None)
  phased, plain = make(True), make(False)
  writer = metrics.MetricWriter(str(tmp_path / "phased"))
  _fit(phased, str(tmp_path / "phased"), 1, writer=writer, log_every=1)
  got = _fit(phased, str(tmp_path / "phased"), 4, writer=writer, log_every=1)
  writer.close()
  assert got.restored_from == 1
  rows = metrics.read_jsonl(str(tmp_path / "phased"))
  assert [(r["step"], r["phase"]) for r in rows] == [(1, 0.0), (2, 0.0), (3, 1.0), (4, 1.0)]
  want = _fit(plain, str(tmp_path / "plain"), 4)
  for a, b in zip(jax.tree.leaves(phased.to_global(got.state)),
                  jax.tree.leaves(plain.to_global(want.state))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  # A step without `at` (callers outside `fit`) runs the main loss.
  _, m = phased.step(phased.create_state(train_tiny.init_params, jax.random.key(0)),
                     phased.put_batch(train_tiny.make_batch(0, 16)))
  assert phased.fetch_metrics(m)["phase"] == 1.0
