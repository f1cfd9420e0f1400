"""Shared pytest set-up: float32 CPU JAX with 8 simulated devices, seeded numpy."""

import gc
import os
import sys
import tempfile

import pytest

from ldm_jax.host_devices import FAST_COMPILE_FLAGS  # does not import JAX

# 8 simulated CPU devices for the data-parallel tests, and LLVM at -O0 (tests compile far more than
# they run; see ldm_jax/host_devices.py); must be set before JAX starts. Subprocesses inherit it.
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One JAX persistent compilation cache for the session: both pytest workers and every script or CLI
# process a test starts. Entries are keyed on the program, the flags and the devices, so a program
# compiled once (the same tiny network's init or step in several modules) is loaded elsewhere.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ldm_jax_test_cache"))
# Every program that compiles in 0.1 s or more, not JAX's default 1 s: most of the tiny runs'
# programs compile in 0.2-0.9 s and recur across processes and modules (measured: the inpainting
# ablation's tests after another tiny ablation, from a new cache, 149 -> 134 s).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="session")
def ae_dir(tmp_path_factory):
  """A random-weight tiny first stage (tests/configs/tiny.py:autoencoder), exported once per
  session: the frozen autoencoder of the command-line LDM runs."""
  from tests import cli_runs  # pylint: disable=import-outside-toplevel  (imports JAX)
  return cli_runs.tiny_autoencoder_export(str(tmp_path_factory.mktemp("ae")))


@pytest.fixture(scope="session")
def ablation_tiny(tmp_path_factory):
  """tests/ablation_runs.py's tiny runs (digit classifier, autoencoder, class LDM), trained once
  per worker for every ablation-script module; each script writes under its own NAME there."""
  from tests import ablation_runs  # pylint: disable=import-outside-toplevel  (imports JAX)
  return ablation_runs.tiny_runs(tmp_path_factory.mktemp("ablations"))


@pytest.fixture(scope="module", autouse=True)
def _free_compiled_programs():
  """Drops JAX's in-memory compiled programs after each test module. Without it a pytest worker
  keeps every executable it ever compiled and grows to ~9-10 GB resident by the end of the suite
  (two workers: ~20 of this 24 GiB machine's memory, so the page cache thrashes). Measured on
  tests/stages + models + pipeline in one process: peak RSS 6.5 -> 3.9 GB, 541 s either way.
  Session fixtures' jitted functions recompile on next use, from the persistent cache."""
  yield
  if "jax" in sys.modules:
    sys.modules["jax"].clear_caches()
  gc.collect()
