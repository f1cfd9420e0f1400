"""`fit` in pmap mode: resume from its own checkpoint, metrics to JSONL and TensorBoard."""

import glob
import os

import jax
import numpy as np
import pytest

import train_tiny
from ldm_jax.train import checkpoint, loop, metrics, state as state_lib


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
