"""The trained inpainting stage (SD-inpainting style) through the command line, tiny sizes.

tests/configs/tiny.py:sr with --config.concat.degradation=inpaint_large_masks trains 2 steps on
MNIST on a random-weight f = 1 first stage (32x32x1 -> 32x32x2): c = [mask, s E(x * (m < 0.5))],
so the UNet reads 2 + 1 + 2 channels. The export loads as a pipeline whose `inpaint` takes the
trained path: the same c the loss builds (with the encoder's posterior mean), compiled once per
shape, bad inputs refused before compiling; the RePaint path of other models is unchanged.
"""

import jax
import numpy as np
import pytest

from ldm_jax import samplers
from ldm_jax.data import to_float
from ldm_jax.diffusion import concat
from ldm_jax.models.unet import concat_conditioning
from ldm_jax.pipeline import LatentDiffusionPipeline
from ldm_jax.train import metrics as metrics_lib
from tests import cli_runs

STEPS = 2
BACKEND_COMPILES = cli_runs.BACKEND_COMPILES
KW = dict(method="ddim", num_steps=2)


@pytest.fixture(scope="module")
def inpaint_run(ae_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("inpaint"))
  cli_runs.run(f"--config={cli_runs.TINY}:sr", f"--workdir={workdir}",
               f"--config.first_stage.workdir={ae_dir}", f"--config.train.num_steps={STEPS}",
               "--config.concat.degradation=inpaint_large_masks", "--config.concat.p_drop=0.1",
               "--config.train.image_every=2")
  return workdir


@pytest.fixture(scope="module")
def pipe(inpaint_run):
  return LatentDiffusionPipeline.from_workdir(inpaint_run, max_batch=4)


@pytest.fixture(scope="module")
def digits():
  """3 smooth blobs uint8 [3, 32, 32, 1] and binary masks [3, 32, 32] (a box, a band, a stroke)."""
  x = cli_runs.blob_images(3)
  yy, xx = np.mgrid[0:32, 0:32]
  m = np.zeros((3, 32, 32), np.float32)
  m[0, 8:20, 6:18] = 1
  m[1, :, 12:20] = 1
  m[2][np.abs(yy - xx) < 4] = 1
  return x, m


def test_run_trains_and_exports_the_mask_channels(inpaint_run):
  assert sorted(cli_runs.logged(inpaint_run)) == list(range(1, STEPS + 1))
  params = cli_runs.exported_params(inpaint_run)
  assert params["['conv_in']['kernel']"].shape == (3, 3, 2 + 1 + 2, 8)  # [z_t, m, masked latents]
  assert params["['conv_out']['kernel']"].shape == (3, 3, 8, 2)
  shapes = {r["step"]: r["inpainted_shape"] for r in metrics_lib.read_jsonl(inpaint_run)
            if "inpainted_shape" in r}
  assert shapes == {2: [96, 256, 1]}  # rows: masked inputs, fills, originals of 8 held-out digits


def test_from_workdir_knows_the_model_inpaints(pipe):
  assert pipe.conditioning == "concat" and pipe.concat_degradation == "inpaint_large_masks"
  assert pipe.inpainting_model and pipe.low_res_shape is None
  assert pipe.latent_shape == (32, 32, 2) and pipe.unet.in_channels == 5
  assert pipe.num_classes is None and not pipe.text_conditioned


def test_inpaint_is_the_sampler_on_the_training_conditioning(pipe, digits):
  """inpaint's latents equal `samplers.sample` of eps_theta([z_t, c], t), c built by the loss's
  function `concat.inpainting_conditioning` with the encoder's posterior mean, from the same noise."""
  x, m = digits
  rng = jax.random.key(3)
  z = pipe.inpaint(rng, x, m, output="latent", **KW)
  encode = lambda v: pipe.autoencoder.apply({"params": pipe.ae_params}, v, method="latents") * pipe.scale_factor
  c = concat.inpainting_conditioning(encode, to_float(x), m[..., None])
  assert c.shape == (3, 32, 32, 1 + 2)
  np.testing.assert_array_equal(c[..., 0], m)  # f = 1: the mask itself

  def reference(c):
    model_fn = lambda v, t: pipe.unet.apply({"params": pipe.unet_params}, concat_conditioning(v, c), t)
    return jax.jit(lambda v: samplers.sample(model_fn, pipe.schedule, v, rng, prediction_type=pipe.prediction_type,
                                             **KW, **pipe.sampler_grid))(pipe.initial_noise(rng, 3))

  np.testing.assert_allclose(z, reference(c), rtol=1e-4, atol=1e-4)
  # The comparison can fail: the other channel order, [z_t, masked latents, m], is far off.
  assert np.abs(np.asarray(reference(c[..., ::-1])) - z).max() > 1e-2


def test_inpaint_shapes_determinism_and_no_recompile(pipe, digits):
  x, m = digits
  a = pipe.inpaint(jax.random.key(0), x, m, **KW)
  assert a.shape == (3, 32, 32, 1) and a.dtype == np.uint8
  traces, compiles = dict(pipe.trace_counts), len(BACKEND_COMPILES)
  b = pipe.inpaint(jax.random.key(0), x[::-1].copy(), m, **KW)  # new images of the same shape
  c = pipe.inpaint(jax.random.key(0), x, m[::-1].copy(), **KW)  # new masks
  d = pipe.inpaint(jax.random.key(0), x.astype(np.float32) / 127.5 - 1, m.astype(bool), **KW)
  e = pipe.inpaint(jax.random.key(1), x, m, guidance_scale=2.0, **KW)  # against the full mask
  assert dict(pipe.trace_counts) == traces and len(BACKEND_COMPILES) == compiles
  assert traces["denoise"] == 1 and traces["inpainting_conditioning"] == 1
  np.testing.assert_array_equal(a, pipe.inpaint(jax.random.key(0), x, m, **KW))
  np.testing.assert_array_equal(a, d)
  assert np.abs(a[0].astype(int) - b[0].astype(int)).max() > 0  # the images matter
  assert np.abs(a[0].astype(int) - c[0].astype(int)).max() > 0  # and the masks
  assert e.shape == a.shape


def test_bad_inputs_raise_before_compiling(pipe, digits):
  x, m = digits
  traces = dict(pipe.trace_counts)
  soft = m * 0.5
  with pytest.raises(ValueError, match=r"mask must be binary \(1 = fill, 0 = keep\) for a trained "
                     r"inpainting model .*'inpaint_large_masks'.* e.g. 0.5; threshold it"):
    pipe.inpaint(jax.random.key(0), x, soft, **KW)
  with pytest.raises(ValueError, match=r"mask must have shape \[3, 32, 32\]"):
    pipe.inpaint(jax.random.key(0), x, m[:, :16], **KW)
  with pytest.raises(ValueError, match="mask"):
    pipe.inpaint(jax.random.key(0), x, m * 2, **KW)
  with pytest.raises(ValueError, match=r"resample=4 is an option of the training-free inpainting "
                     r"path .* needs resample=1"):
    pipe.inpaint(jax.random.key(0), x, m, resample=4, **KW)
  with pytest.raises(ValueError, match=r"strength=0.5 .* needs strength=1.0"):
    pipe.inpaint(jax.random.key(0), x, m, strength=0.5, **KW)
  with pytest.raises(ValueError, match=r"context=<array of shape \(3, 4, 8\)> is an option of the "
                     r"training-free .* needs context=None"):
    pipe.inpaint(jax.random.key(0), x, m, context=np.zeros((3, 4, 8), np.float32), **KW)
  with pytest.raises(ValueError, match=r"prompts='a 7' .* needs prompts=None"):
    pipe.inpaint(jax.random.key(0), x, m, prompts="a 7", **KW)
  with pytest.raises(ValueError, match="no class labels .* labels must be None"):
    pipe.inpaint(jax.random.key(0), x, m, labels=3, **KW)
  with pytest.raises(ValueError, match=r"trained inpainting model .*: upscale does not run it; use "
                     r"pipe.inpaint\(rng, images, mask\)"):
    pipe.upscale(jax.random.key(0), np.zeros((3, 8, 8, 1), np.uint8), **KW)
  with pytest.raises(ValueError, match=r"use pipe.inpaint\(rng, images, mask\)"):
    pipe.sample(jax.random.key(0), 2, **KW)
  with pytest.raises(ValueError, match=r"use pipe.inpaint\(rng, images, mask\)"):
    pipe.img2img(jax.random.key(0), x, 0.5, **KW)
  assert dict(pipe.trace_counts) == traces


def test_constructor_checks_the_mask_channels(pipe):
  parts = dict(unet=pipe.unet, unet_params=pipe.unet_params, autoencoder=pipe.autoencoder,
               ae_params=pipe.ae_params, schedule=pipe.schedule, scale_factor=pipe.scale_factor,
               latent_shape=pipe.latent_shape)
  with pytest.raises(ValueError, match=r"concat_degradation='bicubic_x4' needs a UNet reading "
                     r"latent \+ image channels = 2 \+ 1 = 3, got in_channels=5"):
    LatentDiffusionPipeline(**parts, concat_degradation="bicubic_x4")
  with pytest.raises(ValueError, match="Unknown degradation 'inpaint'; valid choices: bicubic_x4, "
                     "inpaint_large_masks"):
    LatentDiffusionPipeline(**parts, concat_degradation="inpaint")
  sr_unet = pipe.unet.clone(in_channels=3)
  with pytest.raises(ValueError, match=r"latent \+ mask \+ masked-image latent channels = 2 \+ 1 "
                     r"\+ 2 = 5, got in_channels=3"):
    LatentDiffusionPipeline(**{**parts, "unet": sr_unet}, concat_degradation="inpaint_large_masks")


def test_hybrid_inpainting_and_class_run_fills_per_label(ae_dir, digits, tmp_path):
  workdir = str(tmp_path / "hybrid")
  cli_runs.run(f"--config={cli_runs.TINY}:sr", f"--workdir={workdir}",
               f"--config.first_stage.workdir={ae_dir}", f"--config.train.num_steps={STEPS}",
               "--config.concat.degradation=inpaint_large_masks", "--config.concat.class_labels=True")
  hybrid = LatentDiffusionPipeline.from_workdir(workdir, max_batch=4)
  assert hybrid.inpainting_model and hybrid.num_classes == 10 and hybrid.unet.num_class_embeds == 11
  x, m = digits
  a = hybrid.inpaint(jax.random.key(0), x, m, labels=[1, 2, 3], **KW)
  traces = dict(hybrid.trace_counts)
  b = hybrid.inpaint(jax.random.key(0), x, m, labels=[7, 8, 9], **KW)
  c = hybrid.inpaint(jax.random.key(0), x, m, labels=4, guidance_scale=2.0, **KW)
  assert dict(hybrid.trace_counts) == traces  # new labels and guidance: no recompile
  assert a.shape == b.shape == c.shape == (3, 32, 32, 1)
  assert np.abs(a.astype(int) - b.astype(int)).max() > 0  # the labels reach the UNet
  with pytest.raises(ValueError, match="class-conditional: give labels in 0..9"):
    hybrid.inpaint(jax.random.key(0), x, m, **KW)


def test_sample_cli_says_to_use_inpaint_in_one_line(inpaint_run):
  codes, outs = cli_runs.wait(cli_runs.start("sample", f"--workdir={inpaint_run}", "--num_steps=2"))
  assert codes[0] not in (0, None), outs[0][-2000:]
  assert "Traceback" not in outs[0], outs[0][-3000:]
  line = [l for l in outs[0].splitlines() if "error:" in l]
  assert len(line) == 1 and "inpainting" in line[0] and ".inpaint(rng, images, mask)" in line[0]


def test_models_without_mask_channels_keep_the_repaint_path(ae_dir, digits, tmp_path):
  """A class model (no mask channels) keeps the training-free RePaint path: the known region's
  latents end exactly at encode(images) (f = 1: every unmasked pixel's latent)."""
  workdir = str(tmp_path / "ldm")
  cli_runs.run(f"--config={cli_runs.TINY}:latent_diffusion", f"--workdir={workdir}",
               f"--config.first_stage.workdir={ae_dir}", "--config.train.num_steps=1")
  plain = LatentDiffusionPipeline.from_workdir(workdir, max_batch=4)
  assert not plain.inpainting_model
  x, m = digits
  soft = np.where(m == 1, 1.0, 0.0).astype(np.float32)
  z = plain.inpaint(jax.random.key(0), x, soft, labels=[1, 2, 3], resample=2, output="latent", **KW)
  known = m[..., None] == 0
  np.testing.assert_allclose(np.where(known, z, 0), np.where(known, plain.encode(x), 0), atol=1e-5)
