"""ldm_jax.xla_cpu: the convolution back end a CPU train step compiles with, chosen per stage."""

import os
import subprocess
import sys

import jax
import pytest

from ldm_jax import xla_cpu

YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# Prints the hash of the compiled program for the options dict in argv[1] (a conv's fwd + both
# grads, big enough that jaxlib gives it to YNNPACK by default, and a GroupNorm-like variance over
# positions, a reduction YNNPACK also fuses by default). One compile per process: instruction
# names carry a per-process counter, so a second compile in the same process hashes differently.
_PROGRAM = r"""
import hashlib, re, sys
import jax, jax.numpy as jnp
x, w = jnp.ones((16, 32, 32, 64)), jnp.ones((3, 3, 64, 64))
conv = lambda w, x: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
loss = lambda w, x: jnp.mean(jnp.var(conv(w, x), axis=(1, 2))) + jnp.mean(conv(w, x) ** 2)
grads = jax.grad(loss, argnums=(0, 1))
text = jax.jit(grads, compiler_options=eval(sys.argv[1])).lower(w, x).compile().as_text()
print(hashlib.md5(re.sub(r"\s+", " ", text).encode()).hexdigest())
"""


def _hashes(options_list, extra_flags=""):
  base = os.environ.get("XLA_FLAGS", "")
  env = dict(os.environ, XLA_FLAGS=f"{base} {extra_flags}".strip(), JAX_PLATFORMS="cpu")
  return [subprocess.run([sys.executable, "-c", _PROGRAM, repr(options)], env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout.strip()
          for options in options_list]


def test_options_compile_the_same_program_as_the_measured_xla_flags():
  """"eigen" is the XLA_FLAGS setup `experiments/benchmarks/cpu_setup.py` timed (eigen_2dev),
  program for program, and differs from jaxlib's default. (The thread option leaves no trace in
  the program text; its effect is in that benchmark's "auto" row.)"""
  default, eigen = _hashes([None, xla_cpu.OPTIONS["eigen"]])
  assert default != eigen
  assert _hashes([None], YNN_OFF) == [eigen]
  assert _hashes([xla_cpu.OPTIONS["eigen_1thread"]]) == [eigen]


@pytest.mark.parametrize("choice, stage, local_devices, cores, widest, want", [
    ("auto", "autoencoder", 2, 2, 64, "ynnpack"),      # the MNIST networks: jaxlib's default
    ("auto", "autoencoder", 1, 2, 64, "ynnpack"),      # (2026-12-04, README "CPU setup")
    ("auto", "latent_diffusion", 2, 2, 64, "ynnpack"),
    ("auto", "latent_diffusion", 2, 2, None, "ynnpack"),  # width unknown: as narrow
    ("auto", "latent_diffusion", 2, 2, 127, "ynnpack"),
    ("auto", "latent_diffusion", 2, 2, 128, "eigen"),  # widest 128-256: Eigen 1.18-1.44x faster
    ("auto", "sampling", 1, 2, 256, "eigen"),
    ("eigen", "latent_diffusion", 2, 2, 64, "eigen"),  # an explicit choice is kept
    ("ynnpack", "autoencoder", 2, 2, 512, "ynnpack"),
])
def test_resolve(choice, stage, local_devices, cores, widest, want):
  assert xla_cpu.resolve(choice, stage, local_devices, cores, widest=widest) == want


def test_bad_choice_or_stage_names_the_valid_ones():
  with pytest.raises(ValueError, match="parallel.cpu_convolutions='mkl'; valid choices: auto, "
                     "ynnpack, eigen, eigen_1thread"):
    xla_cpu.compiler_options("mkl", "autoencoder")
  with pytest.raises(ValueError, match="stage 'vae'; valid choices: autoencoder, latent_diffusion, sampling"):
    xla_cpu.resolve("auto", "vae", 2)


def test_this_process_gets_the_resolved_options_and_names_them():
  assert jax.default_backend() == "cpu" and jax.local_device_count() == 8  # tests/conftest.py
  options = xla_cpu.compiler_options("eigen_1thread", "autoencoder")
  assert options == {"xla_cpu_experimental_ynn_fusion_type":
                     "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
                     "xla_cpu_multi_thread_eigen": False}
  assert xla_cpu.name(options) == "eigen_1thread"
  assert xla_cpu.compiler_options("auto", "autoencoder") is None
  assert xla_cpu.compiler_options("auto", "latent_diffusion") is None
  assert xla_cpu.compiler_options("auto", "latent_diffusion", widest=320) == xla_cpu.OPTIONS["eigen"]
  assert xla_cpu.name(None) == "ynnpack"


def test_each_stage_of_a_run_and_the_pipeline_choose_by_their_network_width(monkeypatch):
  """The train step (stages/run.py) reads config.model's widest block, the pipeline its UNet's:
  the MNIST networks (64) keep jaxlib's default, a 128-wide UNet gets Eigen, and its samples are
  the default's up to float32 reassociation."""
  from experiments.configs import mnist_autoencoder, mnist_ldm, paper_autoencoder  # pylint: disable=import-outside-toplevel
  from ldm_jax import schedules  # pylint: disable=import-outside-toplevel
  from ldm_jax.models import autoencoder, unet  # pylint: disable=import-outside-toplevel
  from ldm_jax.pipeline import LatentDiffusionPipeline, random_params  # pylint: disable=import-outside-toplevel
  from ldm_jax.stages import builders, run  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  options = run._cpu_options  # pylint: disable=protected-access
  ae_config, ldm = mnist_autoencoder.get_config(), mnist_ldm.get_config()
  build_unet = lambda c: builders.unet(c.model, in_channels=3, num_class_embeds=10)
  assert options(ae_config, "autoencoder", builders.autoencoder(ae_config.model)) is None
  assert options(ldm, "latent_diffusion", build_unet(ldm)) is None
  ldm.model.block_out_channels = (64, 128)
  assert options(ldm, "latent_diffusion", build_unet(ldm)) == xla_cpu.OPTIONS["eigen"]
  # A preset's width counts though the config does not spell it out (KL_F8: up to 512 channels).
  paper = paper_autoencoder.get_config("kl_f8")
  assert "block_out_channels" not in paper.model
  assert options(paper, "autoencoder", builders.autoencoder(paper.model)) == xla_cpu.OPTIONS["eigen"]

  ae = autoencoder.KL_TINY(in_channels=1, out_channels=1, z_channels=4)
  ae_params = random_params(ae, jnp.zeros((1, 16, 16, 1)))
  def pipeline(channels):
    net = unet.UNET_TINY(in_channels=4, out_channels=4, block_out_channels=channels)
    return LatentDiffusionPipeline(net, random_params(net, jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,))),
                                   ae, ae_params, schedules.get_schedule("scaled_linear"),
                                   scale_factor=1.0, latent_shape=(8, 8, 4), shard=False)
  assert pipeline((32, 64)).unet_compiler_options is None
  wide = pipeline((32, 128))
  assert wide.unet_compiler_options == xla_cpu.OPTIONS["eigen"]
  z_eigen = wide.sample(jax.random.key(0), 2, num_steps=3, output="latent")
  monkeypatch.setattr(LatentDiffusionPipeline, "unet_compiler_options", None)
  default = pipeline((32, 128))
  assert default.unet_compiler_options is None
  z_default = default.sample(jax.random.key(0), 2, num_steps=3, output="latent")
  np.testing.assert_allclose(z_eigen, z_default, rtol=1e-4, atol=1e-4)


def test_xla_flags_that_set_the_back_end_are_never_overridden(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "") + " " + YNN_OFF)
  assert xla_cpu.user_flags() == ["xla_cpu_experimental_ynn_fusion_type"]
  assert xla_cpu.compiler_options("eigen_1thread", "autoencoder") is None
  assert xla_cpu.name(None) == "as XLA_FLAGS set (xla_cpu_experimental_ynn_fusion_type)"


def test_nothing_changes_off_cpu(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert xla_cpu.compiler_options("eigen_1thread", "autoencoder") is None
