"""Multi-process training through the command line (`python -m ldm_jax.main`), as a pod runs it.

Two processes on 127.0.0.1, started like every worker of a pod (the same command, the coordinator
in the environment), with one CPU device each (ldm_jax.launch), against one process with two
devices on the same global batch: pmap, and mesh with the fsdp axis across the two processes.
Then SIGTERM to both and a restart (resumes exactly), and kill -9 of one (the other exits with an
error in bounded time instead of hanging in a collective).
"""

import os
import signal
import time

import numpy as np
import pytest

from tests import cli_runs

STEPS = 20


def _start(workdir, ae_dir, *flags, processes=1):
  return cli_runs.start(f"--config={cli_runs.TINY}:latent_diffusion", f"--workdir={workdir}",
                        f"--config.first_stage.workdir={ae_dir}", f"--config.train.num_steps={STEPS}",
                        "--config.train.image_every=10", *flags, processes=processes)


def _run(workdir, ae_dir, *flags, processes=1):
  codes, outs = cli_runs.wait(_start(workdir, ae_dir, *flags, processes=processes))
  assert codes == [0] * processes, "\n".join(o[-3000:] for o in outs)
  return outs


def _assert_same_params(a, b, rtol=1e-5):
  assert set(a) == set(b)
  for k in a:
    assert np.max(np.abs(a[k] - b[k])) <= rtol * max(np.max(np.abs(b[k])), 1e-6), k


def _logged_steps(workdir):
  return sorted(cli_runs.logged(workdir))


MODES = {"pmap": ("--config.parallel.mode=pmap",),
         "mesh_fsdp": ("--config.parallel.mode=mesh", "--config.parallel.num_fsdp=2")}


@pytest.fixture(scope="module")
def two_process_runs(ae_dir, tmp_path_factory):
  """{mode: (one-process workdir, two-process workdir, process outputs)}."""
  out = {}
  for mode, flags in MODES.items():
    one, two = str(tmp_path_factory.mktemp(f"one_{mode}")), str(tmp_path_factory.mktemp(f"two_{mode}"))
    _run(one, ae_dir, *flags)
    out[mode] = (one, two, _run(two, ae_dir, *flags, processes=2))
  return out


@pytest.mark.parametrize("mode", list(MODES))
def test_two_processes_train_like_one_process_with_two_devices(two_process_runs, mode):
  one, two, outs = two_process_runs[mode]
  assert "devices: 2 x cpu (cpu) on 2 process(es)" in outs[0]
  _assert_same_params(cli_runs.exported_params(two), cli_runs.exported_params(one))
  # Process 0 alone wrote the logs, eval.json and the export; the checkpoint is joint.
  assert _logged_steps(two) == list(range(1, STEPS + 1))
  assert os.path.exists(os.path.join(two, "eval.json"))
  assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == [str(STEPS)]
  assert f"{{'steps': {STEPS}" in outs[0] and "{'steps'" not in outs[1]


def _wait_for_step(workdir, step, procs, timeout=cli_runs.TIMEOUT):
  t0 = time.time()
  while time.time() - t0 < timeout:
    try:
      if any(s >= step for s in _logged_steps(workdir)):
        return
    except (OSError, ValueError):  # not written yet, or a line being written
      pass
    if any(p.poll() is not None for p in procs):
      pytest.fail("a process ended before step %d: %s" % (step, [p.communicate()[0][-2000:] for p in procs]))
    time.sleep(0.05)
  pytest.fail(f"step {step} not reached in {timeout} s")


def test_sigterm_to_all_processes_saves_and_the_restart_resumes_exactly(two_process_runs, ae_dir, tmp_path):
  workdir = str(tmp_path)
  procs = _start(workdir, ae_dir, *MODES["pmap"], processes=2)
  _wait_for_step(workdir, 2, procs)
  for p in procs:
    p.send_signal(signal.SIGTERM)
  codes, outs = cli_runs.wait(procs)
  assert codes == [143, 143], outs  # Preempted: saved, then exit code 128 + SIGTERM
  saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
  assert len(saved) == 1 and 2 <= saved[0] < STEPS, saved  # one step both processes agreed on
  _run(workdir, ae_dir, *MODES["pmap"], processes=2)
  _assert_same_params(cli_runs.exported_params(workdir),
                      cli_runs.exported_params(two_process_runs["pmap"][1]), rtol=0)
  steps = _logged_steps(workdir)
  assert steps[-1] == STEPS and set(steps) == set(range(1, STEPS + 1))


def test_killed_process_ends_the_others_with_an_error_in_bounded_time(ae_dir, tmp_path):
  workdir = str(tmp_path)
  procs = _start(workdir, ae_dir, *MODES["pmap"], "--config.train.num_steps=100000", processes=2)
  _wait_for_step(workdir, 1, procs)
  procs[1].kill()
  t0 = time.time()
  codes, outs = cli_runs.wait(procs[:1], timeout=120)
  elapsed = time.time() - t0
  # The survivor's collective fails (gloo: connection reset) or, if it was not in one, JAX's
  # coordination service stops it after distributed.heartbeat_timeout (10 s in the tiny config).
  assert codes[0] not in (0, None) and elapsed < 90, (codes, elapsed)
  assert ("another task died" in outs[0] or "heartbeat timeout" in outs[0]
          or "Connection reset by peer" in outs[0]), outs[0][-3000:]
