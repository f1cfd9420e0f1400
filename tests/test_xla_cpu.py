"""ldm_jax.xla_cpu: the convolution back end a CPU train step compiles with, chosen per stage."""

import os
import subprocess
import sys

import jax
import pytest

from ldm_jax import xla_cpu

YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# Prints one hash of the compiled program per options dict in argv[1] (a conv's fwd + both grads,
# big enough that jaxlib gives it to YNNPACK by default).
_PROGRAM = r"""
import hashlib, re, sys
import jax, jax.numpy as jnp
x, w = jnp.ones((16, 32, 32, 64)), jnp.ones((3, 3, 64, 64))
conv = lambda w, x: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
grads = jax.grad(lambda w, x: jnp.mean(conv(w, x) ** 2), argnums=(0, 1))
for options in eval(sys.argv[1]):
  text = jax.jit(grads, compiler_options=options).lower(w, x).compile().as_text()
  print(hashlib.md5(re.sub(r"\s+", " ", text).encode()).hexdigest())
"""


def _hashes(options_list, extra_flags=""):
  base = os.environ.get("XLA_FLAGS", "")
  env = dict(os.environ, XLA_FLAGS=f"{base} {extra_flags}".strip(), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _PROGRAM, repr(options_list)], env=env,
                       capture_output=True, text=True, timeout=300, check=True)
  return out.stdout.split()


def test_options_compile_the_same_program_as_the_measured_xla_flags():
  """"eigen" is the XLA_FLAGS setup `experiments/benchmarks/cpu_setup.py` timed (eigen_2dev),
  program for program, and differs from jaxlib's default. (The thread option leaves no trace in
  the program text; its effect is in that benchmark's "auto" row.)"""
  default, eigen = _hashes([None, xla_cpu.OPTIONS["eigen"]])
  assert default != eigen
  assert _hashes([None], YNN_OFF) == [eigen]
  assert _hashes([xla_cpu.OPTIONS["eigen_1thread"]]) == [eigen]


@pytest.mark.parametrize("choice, stage, local_devices, cores, want", [
    ("auto", "autoencoder", 2, 2, "ynnpack"),          # jaxlib's default wherever measured
    ("auto", "autoencoder", 1, 2, "ynnpack"),          # (2026-12-04, README "CPU setup")
    ("auto", "latent_diffusion", 2, 2, "ynnpack"),
    ("eigen", "latent_diffusion", 2, 2, "eigen"),      # an explicit choice is kept
    ("ynnpack", "autoencoder", 2, 2, "ynnpack"),
])
def test_resolve(choice, stage, local_devices, cores, want):
  assert xla_cpu.resolve(choice, stage, local_devices, cores) == want


def test_bad_choice_or_stage_names_the_valid_ones():
  with pytest.raises(ValueError, match="parallel.cpu_convolutions='mkl'; valid choices: auto, "
                     "ynnpack, eigen, eigen_1thread"):
    xla_cpu.compiler_options("mkl", "autoencoder")
  with pytest.raises(ValueError, match="stage 'vae'; valid choices: autoencoder, latent_diffusion"):
    xla_cpu.resolve("auto", "vae", 2)


def test_this_process_gets_the_resolved_options_and_names_them():
  assert jax.default_backend() == "cpu" and jax.local_device_count() == 8  # tests/conftest.py
  options = xla_cpu.compiler_options("eigen_1thread", "autoencoder")
  assert options == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
                     "xla_cpu_multi_thread_eigen": False}
  assert xla_cpu.name(options) == "eigen_1thread"
  assert xla_cpu.compiler_options("auto", "autoencoder") is None
  assert xla_cpu.compiler_options("auto", "latent_diffusion") is None
  assert xla_cpu.name(None) == "ynnpack"


def test_xla_flags_that_set_the_back_end_are_never_overridden(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " " + YNN_OFF)
  assert xla_cpu.user_flags() == ["xla_cpu_experimental_ynn_fusion_type"]
  assert xla_cpu.compiler_options("eigen_1thread", "autoencoder") is None
  assert xla_cpu.name(None) == "as XLA_FLAGS set (xla_cpu_experimental_ynn_fusion_type)"


def test_nothing_changes_off_cpu(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert xla_cpu.compiler_options("eigen_1thread", "autoencoder") is None
