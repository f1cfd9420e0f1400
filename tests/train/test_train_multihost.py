"""Two processes on 127.0.0.1 (2 CPU devices each, half the batch each) == one process."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import train_tiny
from ldm_jax.train import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_STEPS, BATCH, TIMEOUT = 6, 8, 240


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_two_processes(workdir, *extra):
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.train.train_run_script", f"--workdir={workdir}", f"--num_steps={NUM_STEPS}",
       f"--batch_size={BATCH}", "--devices=2", "--num_processes=2", f"--process_id={i}",
       f"--coordinator=127.0.0.1:{port}", "--noise=0", "--save_every=3", *extra],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = []
  try:
    for p in procs:  # a hung peer makes its partner time out too: fail, never hang CI
      outs.append(p.communicate(timeout=TIMEOUT)[0])
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail(f"multi-process run timed out after {TIMEOUT}s")
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  return outs


@pytest.fixture(scope="module")
def reference():
  """The same run in this process on one device, the whole batch at once."""
  dp = train_tiny.data_parallel("mesh", num_devices=1)
  state = dp.create_state(train_tiny.init_params, jax.random.key(0))
  data = train_tiny.ArrayBatches(BATCH)
  for _ in range(NUM_STEPS):
    state, _ = dp.step(state, dp.put_batch(next(data)))
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(state.params)}


@pytest.mark.parametrize("mode,fsdp", [("mesh", 2), ("pmap", 1)])
def test_two_processes_match_one(reference, tmp_path, mode, fsdp):
  outs = _run_two_processes(str(tmp_path), f"--mode={mode}", f"--fsdp={fsdp}")
  assert "on 2 process(es)" in outs[0] and f"DONE {NUM_STEPS}" in outs[1]
  for i in range(2):
    with np.load(tmp_path / f"final_{i}.npz") as f:
      assert set(f.files) == set(reference)
      for k in f.files:
        ref = reference[k]
        assert np.max(np.abs(f[k] - ref)) <= 1e-5 * np.max(np.abs(ref)), (i, k)
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["3", "6"]  # saved jointly by both processes


def test_resolve_distributed_settings():
  cfg = distributed.default_config()
  assert distributed.resolve(cfg, environ={}) == {}
  env = {"LDM_JAX_COORDINATOR": "10.0.0.1:1234", "LDM_JAX_NUM_PROCESSES": "4",
         "LDM_JAX_PROCESS_ID": "2", "LDM_JAX_LOCAL_DEVICE_IDS": "0,1"}
  assert distributed.resolve(cfg, environ=env) == {
      "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2,
      "local_device_ids": [0, 1]}
  cfg.coordinator_address = "h:1"
  with pytest.raises(ValueError, match="incomplete"):
    distributed.resolve(cfg, environ={})
