"""End to end on the embedded MNIST: autoencoder run -> LDM run -> resume -> pipeline samples."""

import json
import os

import jax
import numpy as np
import pytest

from experiments.configs import mnist_autoencoder, mnist_ldm
from ldm_jax.pipeline import LatentDiffusionPipeline
from ldm_jax.stages import export, run
from ldm_jax.train import metrics as metrics_lib


def _tiny_ae_config(steps):
  c = mnist_autoencoder.get_config()
  c.model.block_out_channels = (8, 16)  # f = 2: 32x32x1 -> 16x16x2
  c.model.z_channels = 2
  c.model.norm_groups = 4
  c.disc.base_channels = 8
  c.loss.disc_start = 2
  c.train.num_steps = steps
  c.train.global_batch_size = 8
  c.train.save_every = 2
  c.train.log_every = 1
  c.optim.decay_steps = 10
  c.optim.warmup_steps = 1
  c.parallel.mode = "pmap"
  c.parallel.num_devices = 2
  return c


def _tiny_ldm_config(ae_dir, steps):
  c = mnist_ldm.get_config()
  c.first_stage.workdir = ae_dir
  c.model.block_out_channels = (16, 32)
  c.model.layers_per_block = 1
  c.model.attention_head_dim = 8
  c.model.norm_num_groups = 8
  c.diffusion.num_timesteps = 100
  c.train.num_steps = steps
  c.train.global_batch_size = 8
  c.train.save_every = 2
  c.train.log_every = 1
  c.optim.decay_steps = 10
  c.optim.warmup_steps = 1
  c.parallel.mode = "mesh"
  c.parallel.num_devices = 4
  c.parallel.num_fsdp = 2
  return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  ae_dir, ldm_dir = str(root / "ae"), str(root / "ldm")
  ae_summary = run.train(_tiny_ae_config(3), ae_dir)
  ldm_summary = run.train(_tiny_ldm_config(ae_dir, 2), ldm_dir)
  return ae_dir, ldm_dir, ae_summary, ldm_summary


def test_autoencoder_run_trains_evaluates_and_exports(runs):
  ae_dir, _, summary, _ = runs
  assert summary["steps"] == 3 and summary["num_images"] == 1672
  assert np.isfinite(summary["psnr"]) and -1 <= summary["ssim"] <= 1
  rows = metrics_lib.read_jsonl(ae_dir)
  steps = [r["step"] for r in rows if "loss" in r]
  assert steps == [1, 2, 3]
  # disc_start = 2: the adversarial terms are off at the first step (factor read before the update).
  factors = [r["disc_factor"] for r in rows if "loss" in r]
  assert factors == [0.0, 0.0, 1.0]
  config, params, meta = export.load(ae_dir)
  assert meta["stage"] == "autoencoder" and set(params) == {"autoencoder", "discriminator", "logvar"}
  assert tuple(config.model.block_out_channels) == (8, 16)


def test_ldm_run_stores_scale_factor_and_resumes(runs):
  ae_dir, ldm_dir, _, summary = runs
  s = summary["latent_scale_factor"]
  assert np.isfinite(s) and s > 0
  with open(os.path.join(ldm_dir, "export", "metadata.json"), encoding="utf-8") as f:
    assert json.load(f)["latent_scale_factor"] == s
  # Continue the same run to 4 steps: it resumes from step 2 and keeps the scale factor.
  resumed = run.train(_tiny_ldm_config(ae_dir, 4), ldm_dir)
  assert resumed["steps"] == 4 and resumed["latent_scale_factor"] == s
  steps = [r["step"] for r in metrics_lib.read_jsonl(ldm_dir) if "loss" in r]
  assert steps == [1, 2, 3, 4]


def test_pipeline_samples_from_the_trained_workdir(runs):
  _, ldm_dir, _, _ = runs
  pipe = LatentDiffusionPipeline.from_workdir(ldm_dir)
  images = pipe.sample(jax.random.key(0), 3, labels=[1, 2, 3], method="ddim", num_steps=3,
                       guidance_scale=2.0)
  assert images.shape == (3, 32, 32, 1) and images.dtype == np.uint8
  again = pipe.sample(jax.random.key(0), 3, labels=[1, 2, 3], method="ddim", num_steps=3,
                      guidance_scale=2.0)
  np.testing.assert_array_equal(images, again)
  with pytest.raises(ValueError, match="labels must lie in 0..9"):
    pipe.sample(jax.random.key(0), 1, labels=[10])


def test_bad_stage_and_missing_first_stage_raise(tmp_path):
  c = _tiny_ae_config(1)
  c.stage = "vae"
  with pytest.raises(ValueError, match="valid choices: autoencoder, latent_diffusion"):
    run.train(c, str(tmp_path / "x"))
  with pytest.raises(ValueError, match="No exported model"):
    run.train(_tiny_ldm_config(str(tmp_path / "missing"), 1), str(tmp_path / "y"))
