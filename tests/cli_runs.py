"""Helpers of the command-line tests: start `python -m ldm_jax.main` as one or several processes
(the coordinator in the environment, as on every worker of a pod), wait with a timeout, read what a
run wrote (exported parameters, logged steps), and a random-weight tiny first stage to train on."""

import json
import os
import socket
import subprocess
import sys
import tempfile

import flax.serialization
import jax
import jax.monitoring
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.host_devices import FAST_COMPILE_FLAGS
from ldm_jax.pipeline import random_params
from ldm_jax.stages import builders, export
from tests.configs import tiny

# Names of every XLA backend compile in this process (jax.monitoring), for "no recompiles" checks:
# compare len(BACKEND_COMPILES) before and after a call.
BACKEND_COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, *_, **__: BACKEND_COMPILES.append(name) if name.endswith("backend_compile_duration") else None)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")
TIMEOUT = 600  # generous: a CLI run takes 30-220 s alone, several times that beside other work
# Runs share compiled programs through JAX's persistent cache (keyed on the program and the device
# topology, so a reused entry is the same program): a rerun of a configuration skips its compile.
CACHE = os.environ.get("JAX_COMPILATION_CACHE_DIR",  # the session's cache (tests/conftest.py)
                       os.path.join(tempfile.gettempdir(), "ldm_jax_test_cache"))


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(**extra):
  """This environment without distributed settings, XLA_FLAGS only the fast-compile flags, plus `extra`."""
  e = {k: v for k, v in os.environ.items()
       if not k.startswith(("LDM_JAX_", "JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS"))}
  e["XLA_FLAGS"] = FAST_COMPILE_FLAGS  # no device count: the CLI chooses its own layout
  e.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=CACHE,
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
           **extra)
  return e


def start(*args, processes=1):
  """Starts `python -m ldm_jax.main *args` as `processes` processes (1: one process with 2
  simulated CPU devices; N > 1: N processes on 127.0.0.1, one CPU device each)."""
  cmd = [sys.executable, "-m", "ldm_jax.main", *args]
  if processes == 1:
    envs = [env(XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {FAST_COMPILE_FLAGS}")]
  else:
    port = free_port()
    envs = [env(LDM_JAX_COORDINATOR=f"127.0.0.1:{port}", LDM_JAX_NUM_PROCESSES=str(processes),
                LDM_JAX_PROCESS_ID=str(i)) for i in range(processes)]
  return [subprocess.Popen(cmd, env=e, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True) for e in envs]


def wait(procs, timeout=TIMEOUT):
  """(return codes, outputs); kills all and fails the test after `timeout` seconds."""
  try:
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail(f"CLI run did not finish within {timeout} s")
  return [p.returncode for p in procs], outs


def run(*args, processes=1):
  """Runs the CLI to completion; fails the test (with the output's tail) unless every process exits 0."""
  codes, outs = wait(start(*args, processes=processes))
  assert codes == [0] * processes, "\n".join(o[-3000:] for o in outs)
  return outs


def exported_params(workdir, name="params"):
  with open(os.path.join(workdir, "export", f"{name}.msgpack"), "rb") as f:
    tree = flax.serialization.msgpack_restore(f.read())
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def logged(workdir, key="loss"):
  """{step: value of `key`} of the rows of <workdir>/metrics.jsonl that have it."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return {r["step"]: r[key] for r in rows if key in r}


def tiny_autoencoder_export(workdir):
  """Writes a random-weight export of tests/configs/tiny.py:autoencoder (a frozen first stage)."""
  config = tiny.get_config("autoencoder")
  ae = builders.autoencoder(config.model)
  params = random_params(ae, jnp.zeros((1, 32, 32, 1)), seed=0)
  export.save(workdir, config, {"autoencoder": params}, {"autoencoder": params}, {"stage": "autoencoder"})
  return workdir


def blob_images(n: int = 3):
  """n smooth Gaussian blobs uint8 [n, 32, 32, 1], shifted 5 pixels apart (held-out-like inputs
  for the task runs' pipelines)."""
  yy, xx = np.mgrid[0:32, 0:32]
  ims = [np.exp(-((xx - 10 - 5 * k) ** 2 + (yy - 16) ** 2) / 30.0) for k in range(n)]
  return np.round(np.stack(ims)[..., None] * 255).astype(np.uint8)
