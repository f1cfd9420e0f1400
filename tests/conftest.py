"""Shared pytest set-up: float32 CPU JAX with 8 simulated devices, seeded numpy."""

import os
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="session")
def ae_dir(tmp_path_factory):
  """A random-weight tiny first stage (tests/configs/tiny.py:autoencoder), exported once per
  session: the frozen autoencoder of the command-line LDM runs."""
  from tests import cli_runs  # pylint: disable=import-outside-toplevel  (imports JAX)
  return cli_runs.tiny_autoencoder_export(str(tmp_path_factory.mktemp("ae")))
