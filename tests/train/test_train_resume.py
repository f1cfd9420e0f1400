"""kill -9 and SIGTERM during a run in a subprocess; the resumed run is bit-identical."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ldm_jax.train import metrics as metrics_lib
from ldm_jax.train import preemption

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_STEPS, SAVE_EVERY, TIMEOUT = 16, 4, 240


def _start(workdir, *extra):
  args = [sys.executable, "-m", "tests.train.train_run_script", f"--workdir={workdir}", f"--num_steps={NUM_STEPS}",
          f"--save_every={SAVE_EVERY}", *extra]
  return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _finish(proc):
  try:
    out, _ = proc.communicate(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    pytest.fail(f"run did not finish in {TIMEOUT}s:\n{out[-3000:]}")
  return proc.returncode, out


def _done(out):
  line = [l for l in out.splitlines() if l.startswith("DONE")][-1].split()
  return int(line[1]), (None if line[2] == "None" else int(line[2]))


def _rows(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  return metrics_lib.read_jsonl(workdir) if os.path.exists(path) else []


def _wait_for_rows(proc, workdir, n):
  deadline = time.time() + TIMEOUT
  while len(_rows(workdir)) < n:
    if proc.poll() is not None or time.time() > deadline:
      proc.kill()
      pytest.fail(f"run ended or stalled before {n} steps:\n{proc.communicate()[0][-3000:]}")
    time.sleep(0.05)


def _params(workdir):
  with np.load(os.path.join(workdir, "final_0.npz")) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference"))
  code, out = _finish(_start(workdir))
  assert code == 0, out[-3000:]
  losses = {r["step"]: r["loss"] for r in _rows(workdir)}
  assert sorted(losses) == list(range(1, NUM_STEPS + 1))
  return losses, _params(workdir)


def _assert_matches(workdir, reference):
  ref_losses, ref_params = reference
  for row in _rows(workdir):  # every step, before the interruption and after the resume
    assert row["loss"] == ref_losses[row["step"]], row
  got = _params(workdir)
  assert got.keys() == ref_params.keys()
  for k in got:
    np.testing.assert_array_equal(got[k], ref_params[k], err_msg=k)


def test_kill9_resumes_bit_identical(reference, tmp_path):
  seed = random.randrange(10**6)
  rnd = random.Random(seed)
  workdir = str(tmp_path)
  proc = _start(workdir, "--delay=0.15")
  _wait_for_rows(proc, workdir, SAVE_EVERY + 1)  # past the first save, so a resume happens
  time.sleep(rnd.uniform(0.0, 1.2))
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=TIMEOUT)
  killed_at = max([r["step"] for r in _rows(workdir)], default=0)
  assert proc.returncode == -signal.SIGKILL and killed_at < NUM_STEPS, f"seed {seed}"
  code, out = _finish(_start(workdir))
  assert code == 0, out[-3000:]
  step, restored = _done(out)
  assert step == NUM_STEPS
  last_saved = (killed_at // SAVE_EVERY) * SAVE_EVERY  # it may still have been in flight
  assert restored in (last_saved, last_saved - SAVE_EVERY), (seed, killed_at, restored)
  resumed_rows = [r["step"] for r in _rows(workdir)][-(NUM_STEPS - restored):]
  assert resumed_rows == list(range(restored + 1, NUM_STEPS + 1)), seed
  _assert_matches(workdir, reference)


def test_sigterm_saves_current_step_and_exits_nonzero(reference, tmp_path):
  workdir = str(tmp_path)
  proc = _start(workdir, "--delay=0.15")
  _wait_for_rows(proc, workdir, 6)
  proc.send_signal(signal.SIGTERM)
  code, out = _finish(proc)
  assert code == preemption.PREEMPTED_EXIT_CODE, out[-3000:]
  stopped_at = max(r["step"] for r in _rows(workdir))
  assert stopped_at < NUM_STEPS
  assert str(stopped_at) in os.listdir(os.path.join(workdir, "ckpt"))
  code, out = _finish(_start(workdir))
  assert code == 0, out[-3000:]
  assert _done(out) == (NUM_STEPS, stopped_at)  # continues from exactly the saved step
  _assert_matches(workdir, reference)
