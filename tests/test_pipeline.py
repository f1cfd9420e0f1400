"""Tests of ldm_jax.pipeline on a tiny randomly initialised class-conditional model (16x16x1 images,
8x8x3 latents), loaded through `from_workdir` from exports written with the MNIST configs; restoration
on a pipeline that knows its data (`restorer`)."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import gaussian_reference
from experiments.configs import mnist_autoencoder, mnist_ldm
from ldm_jax import samplers
from ldm_jax.host_devices import OPTIMIZED_PROGRAM
from ldm_jax.models import autoencoder
from ldm_jax.pipeline import LatentDiffusionPipeline, image_grid, random_params, slerp, start_for_noise
from ldm_jax.stages import builders, export
from tests import cli_runs

STEPS = 4
BACKEND_COMPILES = cli_runs.BACKEND_COMPILES


def tiny_configs(ae_dir):
  ae = mnist_autoencoder.get_config()
  ae.data.image_size = 16
  ae.model.block_out_channels = (32, 32)  # f = 2
  ae.model.norm_groups = 8
  ae.model.mid_attention = False
  ldm = mnist_ldm.get_config()
  ldm.data.image_size = 16
  ldm.first_stage.workdir = ae_dir
  ldm.model.block_out_channels = (32, 64)
  ldm.model.layers_per_block = 1
  ldm.model.attention_head_dim = 16
  ldm.model.norm_num_groups = 8
  return ae, ldm


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  ae_dir, ldm_dir = str(root / "ae"), str(root / "ldm")
  ae_config, ldm_config = tiny_configs(ae_dir)
  ae = builders.autoencoder(ae_config.model)
  ae_params = random_params(ae, jnp.zeros((1, 16, 16, 1)), seed=0)
  export.save(ae_dir, ae_config, {"autoencoder": ae_params}, {"autoencoder": ae_params},
              {"stage": "autoencoder"})
  unet = builders.unet(ldm_config.model, in_channels=3, num_class_embeds=11)
  unet_params = random_params(unet, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)),
                              y=jnp.zeros((1,), jnp.int32), seed=1)
  ema = jax.tree.map(lambda p: p * 1.01, unet_params)  # distinguishable from params
  export.save(ldm_dir, ldm_config, unet_params, ema,
              {"stage": "latent_diffusion", "latent_scale_factor": 0.8, "first_stage_workdir": ae_dir})
  return {"ae": ae_dir, "ldm": ldm_dir, "ae_params": ae_params, "ema": ema, "unet": unet}


@pytest.fixture(scope="module")
def pipe(workdirs):
  return LatentDiffusionPipeline.from_workdir(workdirs["ldm"], max_batch=4)


@pytest.fixture(scope="module")
def images():
  """Four distinct smooth test images (uint8 [4, 16, 16, 1])."""
  yy, xx = np.mgrid[0:16, 0:16] / 15.0
  ims = [np.sin(3 * xx + k) * np.cos(2 * yy - k) for k in range(4)]
  return np.round((np.stack(ims)[..., None] + 1) * 127.5).astype(np.uint8)


def test_from_workdir_loads_ema_weights_and_metadata(pipe, workdirs):
  assert pipe.num_classes == 10 and pipe.conditioning == "class"
  assert pipe.latent_shape == (8, 8, 3) and pipe.image_shape == (16, 16, 1)
  assert pipe.scale_factor == pytest.approx(0.8)
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), pipe.unet_params, workdirs["ema"])
  assert all(jax.tree.leaves(same))
  assert pipe.unet.num_class_embeds == 11


def test_sample_shapes_dtypes_determinism(pipe):
  labels = [0, 1, 2, 3]
  a = pipe.sample(jax.random.key(0), 4, labels, num_steps=STEPS)
  b = pipe.sample(jax.random.key(0), 4, labels, num_steps=STEPS)
  c = pipe.sample(jax.random.key(1), 4, labels, num_steps=STEPS)
  f = pipe.sample(jax.random.key(0), 4, labels, num_steps=STEPS, output="float")
  z = pipe.sample(jax.random.key(0), 4, labels, num_steps=STEPS, output="latent")
  assert a.shape == (4, 16, 16, 1) and a.dtype == np.uint8
  assert f.shape == (4, 16, 16, 1) and f.dtype == np.float32
  assert z.shape == (4, 8, 8, 3) and z.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - c.astype(int)).max() > 0
  np.testing.assert_allclose(f, pipe.decode(z, output="float"), atol=1e-6)
  np.testing.assert_array_equal(a, np.clip(np.round((f + 1) * 127.5), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("method", ["ddim", "dpmpp_2m", "euler", "heun"])
def test_pipe_sample_equals_samplers_sample(workdirs, method):
  """What users run (the pipeline's program: traced start step, per-sample keys) equals the driver
  checked against diffusers (`samplers.sample`, tests/samplers/test_diffusers_parity.py) on the
  same guided model function and initial noise. (Its own pipeline: the shared one counts traces.)"""
  pipe = LatentDiffusionPipeline.from_workdir(workdirs["ldm"], max_batch=4)
  rng, labels, w = jax.random.key(11), np.array([0, 1, 2, 3], np.int32), 2.0
  z = pipe.sample(rng, 4, labels, method=method, num_steps=STEPS, guidance_scale=w, output="latent")
  unet = lambda x, t, y: pipe.unet.apply({"params": pipe.unet_params}, x, t, y=y)
  model_fn = samplers.classifier_free_guidance(unet, labels, np.full(4, pipe.num_classes, np.int32), w)
  ref = jax.jit(lambda x: samplers.sample(
      model_fn, pipe.schedule, x, rng, method=method, num_steps=STEPS,
      prediction_type=pipe.prediction_type, **pipe.sampler_grid))(pipe.initial_noise(rng, 4))
  np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-4)
  assert np.abs(z).max() > 0.1


def test_no_recompilation_when_traced_arguments_change(pipe, images):
  pipe.sample(jax.random.key(0), 4, [0, 1, 2, 3], num_steps=STEPS)
  pipe.img2img(jax.random.key(0), images, 0.5, labels=1, num_steps=STEPS)
  traces, compiles = dict(pipe.trace_counts), len(BACKEND_COMPILES)
  outs = [pipe.sample(jax.random.key(5), 4, [9, 8, 7, 6], num_steps=STEPS, guidance_scale=3.0),
          pipe.sample(jax.random.key(6), 4, 2, num_steps=STEPS, guidance_scale=[0.0, 1.0, 2.0, 4.0]),
          pipe.img2img(jax.random.key(7), images, 0.25, labels=3, num_steps=STEPS, guidance_scale=2.0),
          pipe.img2img(jax.random.key(7), images, 0.75, labels=3, num_steps=STEPS)]
  assert dict(pipe.trace_counts) == traces
  assert len(BACKEND_COMPILES) == compiles
  assert traces["denoise"] == 1  # sample and img2img share one program per (method, steps, batch)
  assert all(o.shape == (4, 16, 16, 1) for o in outs)
  assert np.abs(outs[2].astype(int) - outs[3].astype(int)).max() > 0  # strength mattered


def test_upscale_needs_a_concat_conditioned_model(pipe):
  traces = dict(pipe.trace_counts)
  assert pipe.low_res_shape is None
  with pytest.raises(ValueError, match="upscale needs a concat-conditioned .* this one is 'class'-"):
    pipe.upscale(jax.random.key(0), np.zeros((2, 4, 4, 1), np.uint8), num_steps=STEPS)
  assert dict(pipe.trace_counts) == traces


def test_ddim_eta_is_traced_and_deterministic(pipe):
  before = pipe.trace_counts["denoise"]
  a = pipe.sample(jax.random.key(2), 4, 5, method="ddim", num_steps=STEPS, eta=1.0, output="float")
  b = pipe.sample(jax.random.key(2), 4, 5, method="ddim", num_steps=STEPS, eta=1.0, output="float")
  c = pipe.sample(jax.random.key(2), 4, 5, method="ddim", num_steps=STEPS, eta=0.0, output="float")
  assert pipe.trace_counts["denoise"] == before + 1  # one new (method, num_steps) program, cached
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 1e-3


def test_img2img_strength_endpoints(pipe, images):
  rec = pipe.reconstruct(images, output="float")
  zero = pipe.img2img(jax.random.key(3), images, 0.0, labels=4, num_steps=STEPS, output="float")
  np.testing.assert_allclose(zero, rec, atol=1e-5)
  other = images[::-1].copy()
  one_a = pipe.img2img(jax.random.key(3), images, 1.0, labels=4, num_steps=STEPS, output="float")
  one_b = pipe.img2img(jax.random.key(3), other, 1.0, labels=4, num_steps=STEPS, output="float")
  fresh = pipe.sample(jax.random.key(3), 4, 4, num_steps=STEPS, output="float")
  np.testing.assert_allclose(one_a, one_b, atol=1e-5)
  np.testing.assert_allclose(one_a, fresh, atol=1e-5)
  half = pipe.img2img(jax.random.key(3), images, 0.5, labels=4, num_steps=STEPS, output="float")
  assert np.abs(half - rec).max() > 1e-3 and np.abs(half - fresh).max() > 1e-3


def test_inpaint_keeps_known_region(pipe, images):
  mask = np.zeros((16, 16), np.float32)
  mask[:, :8] = 1.0  # regenerate the left half
  z_in = pipe.encode(images)
  z = pipe.inpaint(jax.random.key(4), images, mask, labels=2, num_steps=STEPS, resample=2, output="latent")
  known = np.zeros((8, 8), bool)
  known[:, 4:] = True
  np.testing.assert_allclose(z[:, known], z_in[:, known], atol=1e-5)  # exact in latent space
  assert np.abs(z[:, ~known] - z_in[:, ~known]).mean() > 0.1
  out = pipe.decode(z, output="float")
  rec = pipe.reconstruct(images, output="float")
  err_kept, err_filled = np.abs(out - rec)[:, :, 8:].mean(), np.abs(out - rec)[:, :, :8].mean()
  # The decoder mixes latents across the mask border (an untrained one strongly), so the kept region
  # is close to the reconstruction, not equal; with nothing to fill it is equal (below).
  assert err_kept < 0.75 * err_filled
  # Nothing to fill: the output is the reconstruction.
  full = pipe.inpaint(jax.random.key(4), images, np.zeros((4, 16, 16, 1)), labels=2, num_steps=STEPS,
                      resample=2, output="float")
  np.testing.assert_allclose(full, rec, atol=1e-5)


def test_interpolation_endpoints_match_samples(pipe):
  frames = pipe.interpolate(jax.random.key(8), 1, 7, 4, num_steps=STEPS, output="float")
  ends = pipe.sample(jax.random.key(8), 4, [1, 7, 0, 0], num_steps=STEPS, output="float")[:2]
  assert frames.shape == (4, 16, 16, 1)
  np.testing.assert_allclose(frames[[0, -1]], ends, atol=1e-5)
  assert np.abs(frames[1] - ends[0]).max() > 1e-4 and np.abs(frames[2] - ends[1]).max() > 1e-4


def test_slerp_endpoints_and_norm():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(8, 8, 3)), rng.normal(size=(8, 8, 3))
  b *= np.linalg.norm(a) / np.linalg.norm(b)
  s = slerp(a, b, np.linspace(0, 1, 5))
  np.testing.assert_allclose(s[0], a, rtol=1e-6)
  np.testing.assert_allclose(s[-1], b, rtol=1e-6)
  norms = np.linalg.norm(s.reshape(5, -1), axis=1)  # slerp keeps the norm; lerp would shrink it ~1/sqrt(2)
  np.testing.assert_allclose(norms, np.linalg.norm(a), rtol=1e-5)


class ExactGaussianDenoiser(nn.Module):
  """E[z0 | z_t] (prediction_type "sample") of latents z0 ~ N(mu, cov), the exact denoiser of
  `experiments.gaussian_reference`, as a parameter-free stand-in for a UNet that knows its data.
  z_t [B, h, w, c], t [B]; mu [h*w*c], cov [h*w*c, h*w*c]."""
  schedule: object
  mu: np.ndarray
  cov: np.ndarray
  dtype: object = None  # read by the pipeline

  def __call__(self, z_t, t):
    x0 = gaussian_reference.exact_x0_model(self.schedule, self.mu, self.cov)
    return x0(z_t.reshape(z_t.shape[0], -1), t).reshape(z_t.shape)


@pytest.fixture(scope="module")
def restorer(pipe, images):
  """A pipeline that knows `images`, so that restoring can be judged against them.

  Autoencoder: a tiny KL one with f = 1 (16x16x3 latents), fitted (120 Adam steps, MSE) to the four
  images plus 12 fresh uniform-noise images per step, so that it passes noise through rather than
  removing it itself (an f = 2 one fitted to the four images alone denoises them on its own, which
  would hide whether `restore` does anything); measured: reconstruction MSE 6e-4 on [0, 1].
  Denoiser: the exact E[z0 | z_t] of z0 ~ N(mu, S), mu and S the mean and covariance of the four
  images' scaled latents (rank 3) plus 1e-3 x the mean variance on the diagonal, so it removes
  latent noise off the span of the four latents. Schedule: the pipe's.
  """
  ae = autoencoder.KL_TINY(in_channels=1, out_channels=1, z_channels=3, block_out_channels=(8,),
                           norm_groups=4, mid_attention=False)
  x = jnp.asarray(images / 127.5 - 1.0, jnp.float32)
  tx = optax.adam(1e-2)

  def rec_loss(params, xb):
    z = ae.apply({"params": params}, xb, method="latents")
    return jnp.mean(jnp.square(ae.apply({"params": params}, z, method="decode") - xb))

  def fit(params):
    def step(carry, i):
      p, opt = carry
      noise = jax.random.uniform(jax.random.fold_in(jax.random.key(1), i), (12,) + x.shape[1:],
                                 minval=-1.0, maxval=1.0)
      updates, opt = tx.update(jax.grad(rec_loss)(p, jnp.concatenate([x, noise])), opt, p)
      return (optax.apply_updates(p, updates), opt), None
    return jax.lax.scan(step, (params, tx.init(params)), jnp.arange(120))[0][0]

  params = jax.jit(fit, compiler_options=OPTIMIZED_PROGRAM)(  # 40 -> 7 s
      random_params(ae, x[:1], seed=0))
  z = np.asarray(ae.apply({"params": params}, x, method="latents"), np.float64)
  scale = 1.0 / z.std()  # LDM app. D.1
  zs = (z * scale).reshape(len(z), -1)
  cov = np.cov(zs.T, bias=True)
  cov += 1e-3 * np.trace(cov) / len(cov) * np.eye(len(cov))
  unet = ExactGaussianDenoiser(pipe.schedule, zs.mean(0).astype(np.float32), cov.astype(np.float32))
  return LatentDiffusionPipeline(unet, {}, ae, params, pipe.schedule, scale_factor=scale,
                                 latent_shape=z.shape[1:], prediction_type="sample", max_batch=4)


def test_restore(restorer, images):
  tables = samplers.make_tables(restorer.schedule, method="dpmpp_2m", num_steps=STEPS)
  starts = [start_for_noise(tables, s) for s in (0.0, 1e-3, 0.3, 3.0, 1e3)]
  assert starts[0] == STEPS and starts[-1] == 0 and starts == sorted(starts, reverse=True)
  key, kw = jax.random.key(0), dict(num_steps=10, output="float")
  rec = restorer.reconstruct(images, output="float")
  np.testing.assert_allclose(restorer.restore(key, images, 0.0, **kw), rec, atol=1e-5)
  clean = images / 255.0
  noisy = np.clip(clean + 0.2 * np.random.default_rng(0).normal(size=images.shape), 0, 1)
  noisy = np.round(noisy * 255).astype(np.uint8)
  error = lambda x: float(np.mean(np.square((x + 1) / 2 - clean)))  # MSE on [0, 1]
  noisy_error = error(noisy / 127.5 - 1)
  as_is, restored, overdone = (error(restorer.restore(key, noisy, level, **kw))
                               for level in (0.0, 0.2, 2.0))
  # Measured: noisy 0.032; restored at its noise level 0.2: 0.004; at level 0 (the noisy
  # reconstruction) 0.038; at 10x its level 0.008 (the start is too early, so the clean part is
  # shrunk towards mu). Broken on purpose: starting from pure noise gives a new sample (0.05),
  # ignoring the level the noisy reconstruction (0.038), ignoring the encoder's gain on noise
  # 0.0041 at level 0.2 but 0.0046 at 2.0 (the start hardly moves).
  assert restored < 0.25 * min(noisy_error, as_is), (noisy_error, as_is, restored)
  assert restored < 0.7 * overdone, (restored, overdone)
  out = restorer.restore(key, noisy, 0.2, num_steps=10)
  assert out.shape == images.shape and out.dtype == np.uint8


def test_trajectory_and_batch_splitting(pipe):
  images, traj = pipe.sample(jax.random.key(9), 6, 3, num_steps=STEPS, output="float",
                             return_trajectory=True)
  assert traj["x_t"].shape == traj["x0_pred"].shape == (STEPS, 6, 8, 8, 3)
  assert traj["x0_images"].shape == (STEPS, 6, 16, 16, 1) and traj["t"].shape == (STEPS,)
  assert np.all(np.diff(traj["t"]) < 0) and traj["active"].all()
  np.testing.assert_allclose(traj["x_t"][0], pipe.initial_noise(jax.random.key(9), 6), atol=1e-6)
  # DPM-Solver++(2M)'s last step (to sigma = 0) returns its x0 prediction.
  np.testing.assert_allclose(traj["x0_images"][-1], images, atol=1e-5)
  # 6 samples run as chunks of max_batch = 4 (the last padded): the same per-sample results as 8.
  eight = pipe.sample(jax.random.key(9), 8, 3, num_steps=STEPS, output="float")
  np.testing.assert_allclose(eight[:6], images, atol=1e-5)


def test_sharded_equals_single_device(workdirs, pipe):
  assert jax.device_count() == 8
  single = LatentDiffusionPipeline.from_workdir(workdirs["ldm"], max_batch=4, shard=False)
  z1 = single.sample(jax.random.key(11), 4, [1, 2, 3, 4], num_steps=STEPS, output="latent")
  z4 = pipe.sample(jax.random.key(11), 4, [1, 2, 3, 4], num_steps=STEPS, output="latent")
  np.testing.assert_allclose(z1, z4, rtol=1e-4, atol=1e-4)  # float reassociation only
  data_sharding = pipe._placement(4)[0]  # pylint: disable=protected-access
  assert len(data_sharding.device_set) == 4


def test_from_pretrained_diffusers_folder(tmp_path, pipe, images):
  import json  # pylint: disable=import-outside-toplevel
  from ldm_jax import convert  # pylint: disable=import-outside-toplevel
  convert.save_diffusers(pipe.unet, pipe.unet_params, str(tmp_path / "unet"))
  convert.save_diffusers(pipe.autoencoder, pipe.ae_params, str(tmp_path / "vae"))
  (tmp_path / "scheduler").mkdir()
  (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(
      {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.0015,
       "beta_end": 0.0195, "num_train_timesteps": 1000, "prediction_type": "epsilon"}))
  config = json.loads((tmp_path / "unet" / "config.json").read_text())
  config["sample_size"] = 8  # the latent size, as in diffusers pipeline folders
  (tmp_path / "unet" / "config.json").write_text(json.dumps(config))
  # The folder's VAE config carries scaling_factor 1.0; this project keeps s in its metadata.
  loaded = LatentDiffusionPipeline.from_pretrained(str(tmp_path), max_batch=4, scale_factor=pipe.scale_factor)
  assert loaded.num_classes == 10 and loaded.latent_shape == (8, 8, 3) and loaded.prediction_type == "epsilon"
  np.testing.assert_allclose(loaded.schedule.alphas_cumprod, pipe.schedule.alphas_cumprod, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(loaded.unet_params), jax.tree.leaves(pipe.unet_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.structure(loaded.unet_params) == jax.tree.structure(pipe.unet_params)
  np.testing.assert_allclose(loaded.reconstruct(images, output="float"),
                             pipe.reconstruct(images, output="float"), atol=1e-5)


def test_latent_bits_per_dim_matches_a_direct_bound_and_ignores_batching(workdirs, pipe, images):
  """latent_bits_per_dim = vlb_terms of the plain conditional UNet call (no guidance, no label
  interceptor) on encode(images), image by image with its own key; the same for any chunking or
  device count."""
  from ldm_jax import diffusion, schedules  # pylint: disable=import-outside-toplevel
  short = schedules.get_schedule("scaled_linear", 20, beta_start=0.0015, beta_end=0.0195)
  chunked = LatentDiffusionPipeline.from_workdir(workdirs["ldm"], max_batch=4, schedule=short)
  single = LatentDiffusionPipeline.from_workdir(workdirs["ldm"], max_batch=8, shard=False, schedule=short)
  x = np.concatenate([images, images[::-1, ::-1]])[:6]
  labels = np.array([0, 3, 9, 1, 3, 5])
  key = jax.random.key(4)
  got = chunked.latent_bits_per_dim(key, x, labels, timesteps_per_chunk=3)
  other = single.latent_bits_per_dim(key, x, labels, timesteps_per_chunk=20)
  assert got.terms_bpd.shape == (6, 20) and got.prior_bpd.shape == got.total_bpd.shape == (6,)
  np.testing.assert_allclose(other.total_bpd, got.total_bpd, rtol=1e-4)
  np.testing.assert_allclose(got.total_bpd, got.prior_bpd + got.terms_bpd.sum(1), rtol=1e-5)

  z = pipe.encode(x)
  params = pipe.unet_params
  for b in range(6):
    model_fn = lambda x_t, t, y=int(labels[b]): pipe.unet.apply(
        {"params": params}, x_t, t, y=jnp.full((x_t.shape[0],), y, jnp.int32))
    k = jax.random.fold_in(jax.random.fold_in(key, b), 5)  # the pipeline's per-image key
    want = diffusion.vlb_terms(model_fn, short, z[b:b + 1], k[None], prediction_type="epsilon",
                               decoder="gaussian", timesteps_per_chunk=20)
    np.testing.assert_allclose(got.terms_bpd[b], np.asarray(want.terms_bpd)[0], rtol=1e-4, atol=1e-6)
  # the label matters (the model is conditional), the key draws the Monte-Carlo noise
  relabelled = chunked.latent_bits_per_dim(key, x, (labels + 1) % 10, timesteps_per_chunk=3)
  assert not np.allclose(relabelled.terms_bpd, got.terms_bpd)
  with pytest.raises(ValueError, match="0..9"):
    chunked.latent_bits_per_dim(key, x, np.full(6, 10))
  with pytest.raises(ValueError, match="timesteps_per_chunk"):
    chunked.latent_bits_per_dim(key, x, labels, timesteps_per_chunk=0)


def test_bad_inputs_raise_before_compiling(workdirs, images):
  fresh = LatentDiffusionPipeline.from_workdir(workdirs["ldm"], max_batch=4)
  key = jax.random.key(0)
  cases = [
      (lambda: fresh.sample(key, 2, [3, 10]), "0..9"),
      (lambda: fresh.sample(key, 2, [-1, 0]), "0..9"),
      (lambda: fresh.sample(key, 2, None), "class-conditional"),
      (lambda: fresh.sample(key, 2, [1, 2], method="plms"), "valid choices"),
      (lambda: fresh.sample(key, 2, [1, 2], eta=0.5), "ddim"),
      (lambda: fresh.sample(key, 2, [1, 2], output="png"), "valid choices"),
      (lambda: fresh.sample(key, 0, []), "num_samples"),
      (lambda: fresh.img2img(key, images[:, :8], 0.5, labels=1), "[N, 16, 16, 1]"),
      (lambda: fresh.img2img(key, images, 1.5, labels=1), "strength"),
      (lambda: fresh.img2img(key, images, -0.1, labels=1), "strength"),
      (lambda: fresh.inpaint(key, images, np.zeros((4, 8, 8)), labels=1), "mask"),
      (lambda: fresh.inpaint(key, images, np.zeros((3, 16, 16)), labels=1), "mask"),
      (lambda: fresh.interpolate(key, 1, 12, 4), "0..9"),
      (lambda: fresh.restore(key, images, -1.0, labels=1), "noise_level"),
      (lambda: fresh.decode(np.zeros((2, 4, 4, 3))), "[N, 8, 8, 3]"),
  ]
  for fn, words in cases:
    with pytest.raises(ValueError, match=None) as err:
      fn()
    assert words in str(err.value), (words, str(err.value))
  assert not fresh.trace_counts  # nothing was traced or compiled


def test_image_grid():
  ims = np.arange(5 * 2 * 3 * 1, dtype=np.uint8).reshape(5, 2, 3, 1)
  grid = image_grid(ims, rows=2)
  assert grid.shape == (4, 9, 1)
  np.testing.assert_array_equal(grid[2:4, 3:6], ims[4])
  np.testing.assert_array_equal(grid[2:4, 6:9], 0)


def test_persistent_cache_writes_entries(tmp_path):
  code = ("import jax, numpy as np; from ldm_jax.pipeline import enable_persistent_cache; "
          f"enable_persistent_cache({str(tmp_path / 'cache')!r}); "
          "print(jax.jit(lambda x: x @ x.T + 1)(np.ones((8, 8), np.float32)).sum())")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert os.listdir(tmp_path / "cache")


def test_context_model_validation_before_compiling():
  from ldm_jax import schedules  # pylint: disable=import-outside-toplevel
  from ldm_jax.models import autoencoder, unet  # pylint: disable=import-outside-toplevel
  ae = autoencoder.KL_TINY(in_channels=1, out_channels=1, z_channels=4)
  net = unet.UNET_TINY_COND(in_channels=4, out_channels=4)
  params = random_params(net, jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)), context=jnp.zeros((1, 5, 32)))
  ctx_pipe = LatentDiffusionPipeline(net, params, ae, random_params(ae, jnp.zeros((1, 16, 16, 1))),
                                     schedules.get_schedule("scaled_linear"), scale_factor=1.0,
                                     latent_shape=(8, 8, 4))
  assert ctx_pipe.conditioning == "context" and ctx_pipe.context_dim == 32
  for kwargs, words in [({"labels": [1, 2], "context": np.zeros((5, 32))}, "labels must be None"),
                        ({}, "give context="),
                        ({"context": np.zeros((5, 16))}, "[2, L, 32]"),
                        ({"context": np.zeros((3, 5, 32))}, "[2, L, 32]")]:
    with pytest.raises(ValueError) as err:
      ctx_pipe.sample(jax.random.key(0), 2, **kwargs)
    assert words in str(err.value), (words, str(err.value))
  assert not ctx_pipe.trace_counts


@pytest.fixture(scope="module")
def pipe_bf16(workdirs):
  return LatentDiffusionPipeline.from_workdir(workdirs["ldm"], max_batch=4, dtype="bfloat16")


def test_bfloat16_pipeline_casts_weights_once_and_stays_close_to_float32(pipe, pipe_bf16):
  floats = lambda t: [a for a in jax.tree.leaves(t) if jnp.issubdtype(a.dtype, jnp.floating)]
  assert {a.dtype for a in floats(pipe_bf16.unet_params) + floats(pipe_bf16.ae_params)} == {jnp.dtype(jnp.bfloat16)}
  assert pipe_bf16.unet.dtype == jnp.bfloat16 and pipe_bf16.autoencoder.dtype == jnp.bfloat16
  kw = dict(labels=[1, 2, 3, 4], method="ddim", num_steps=STEPS, guidance_scale=2.0)
  z32 = pipe.sample(jax.random.key(3), 4, output="latent", **kw)
  z16 = pipe_bf16.sample(jax.random.key(3), 4, output="latent", **kw)
  x32 = pipe.sample(jax.random.key(3), 4, output="float", **kw)
  x16 = pipe_bf16.sample(jax.random.key(3), 4, output="float", **kw)
  assert z16.dtype == np.float32 and x16.dtype == np.float32  # sampler arithmetic and outputs in f32
  # bfloat16 keeps 8 significand bits (relative rounding 2^-9 ~ 0.002 per op); through the ~10
  # rounded layers of UNet and decoder and 4 guided steps, errors add up to about 1% of the signal
  # (measured: latents 0.9%, images 1.2% relative L2, max pixel error 0.023 of the range [-1, 1]).
  # The bounds are ~3x those: a float32 result would pass trivially, a wrong cast (e.g. the sampler
  # in bfloat16, or float16 overflow) would not.
  rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)
  assert rel(z16, z32) < 0.03 and rel(x16, x32) < 0.03, (rel(z16, z32), rel(x16, x32))
  assert np.max(np.abs(x16 - x32)) < 0.1
  traces = sum(pipe_bf16.trace_counts.values())
  pipe_bf16.sample(jax.random.key(4), 4, output="float", **{**kw, "guidance_scale": 3.0, "labels": [5, 6, 7, 8]})
  assert sum(pipe_bf16.trace_counts.values()) == traces  # new seed, labels, guidance: no recompile


def test_pipeline_dtype_is_validated(workdirs):
  with pytest.raises(ValueError, match="dtype='float8'; valid choices: float32, bfloat16, float16"):
    LatentDiffusionPipeline.from_workdir(workdirs["ldm"], dtype="float8")


def test_from_workdir_defaults_to_the_run_sample_settings(pipe):
  """Left out, method / num_steps / guidance_scale are the run config's `sample` section (what its
  own sample grids used; mnist_ldm: DPM-Solver++(2M), 25 steps, w = 2)."""
  section = mnist_ldm.get_config().sample
  assert pipe.defaults == {"method": section.method, "num_steps": section.num_steps,
                           "guidance_scale": section.guidance_scale}
  key, labels = jax.random.key(12), [1, 2, 3, 4]
  explicit = pipe.sample(key, 4, labels, method=section.method, num_steps=section.num_steps,
                         guidance_scale=section.guidance_scale, output="latent")
  np.testing.assert_array_equal(pipe.sample(key, 4, labels, output="latent"), explicit)


def test_save_pretrained_of_a_run_holds_its_scale_factor_schedule_and_settings(pipe, tmp_path):
  """A run's pipeline as a diffusers folder: the VAE config carries the run's latent scale factor
  (0.8 in its metadata; a bare autoencoder export says 1.0), the scheduler its training schedule,
  and from_pretrained reads back what from_workdir gave."""
  import json  # pylint: disable=import-outside-toplevel
  folder = pipe.save_pretrained(str(tmp_path / "ldm"))
  vae = json.loads((tmp_path / "ldm" / "vqvae" / "config.json").read_text())
  sched = json.loads((tmp_path / "ldm" / "scheduler" / "scheduler_config.json").read_text())
  assert vae["scaling_factor"] == pytest.approx(0.8) and vae["_class_name"] == "AutoencoderKL"
  assert sched["_class_name"] == "DPMSolverMultistepScheduler"  # the run's sample.method
  np.testing.assert_array_equal(np.asarray(sched["trained_betas"], np.float32), pipe.schedule.betas)
  loaded = LatentDiffusionPipeline.from_pretrained(folder, max_batch=4)
  for name in ("scale_factor", "latent_shape", "image_shape", "prediction_type", "num_classes",
               "defaults"):
    assert getattr(loaded, name) == getattr(pipe, name), name
  for a, b in zip(jax.tree.leaves(loaded.unet_params), jax.tree.leaves(pipe.unet_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
