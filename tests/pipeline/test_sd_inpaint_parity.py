"""Inpainting end to end against diffusers: a tiny random-weight StableDiffusionInpaintPipeline (SD
1.x-style, its UNet reading [z_t, mask, masked-image latents] = 4 + 1 + 4 channels) saved with
`save_pretrained` and loaded by `LatentDiffusionPipeline.from_pretrained`, both run from the same
initial latents on the same images and binary masks, must give the same images to within 1/255
per pixel: DDIM and DPM-Solver++(2M), without guidance, with guidance and with negative prompts.

diffusers samples the masked image's latents from the VAE posterior with its generator; ldm_jax
takes the posterior mean, so the reference is given masked_image_latents= (the mean, formed by
diffusers' own image and mask processors, `sd_refs.inpainting_inputs`). The masks are not constant
on the latent grid's 2 x 2 blocks, so the rule that brings them to the grid (nearest, as torch's
F.interpolate) is exercised, not just assumed. `save_pretrained` writes the loaded pipeline back as
a StableDiffusionInpaintPipeline folder that diffusers runs to the same images."""

import json
import os
import types

import diffusers

import jax
import numpy as np
import pytest
import torch

import sd_refs
from ldm_jax.data import to_float
from ldm_jax.diffusion import concat
from ldm_jax.pipeline import LatentDiffusionPipeline
from ldm_jax.pipeline import loading

pytestmark = [pytest.mark.slow,  # end to end, torch + jax
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]
PROMPTS, NEGATIVE = sd_refs.PROMPTS, sd_refs.NEGATIVE
STEPS = 4
CASES = [(1.0, None), (7.5, None), (7.5, NEGATIVE)]  # (guidance_scale, negative_prompts)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory, torch_one_thread):  # pylint: disable=unused-argument
  folder, reference = sd_refs.tiny_sd_pipeline(tmp_path_factory.mktemp("sd"), "sd1",
                                               inpainting=True)
  return folder, LatentDiffusionPipeline.from_pretrained(folder, max_batch=4), reference


@pytest.fixture(scope="module")
def inputs():
  """Images uint8 [2, 16, 16, 3] and binary masks [2, 16, 16]: a box at odd offsets, a diagonal
  stroke (neither constant on 2 x 2 blocks)."""
  x = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  yy, xx = np.mgrid[0:16, 0:16]
  m = np.zeros((2, 16, 16), np.float32)
  m[0, 3:11, 5:12] = 1
  m[1][np.abs(yy - xx) < 3] = 1
  return x, m


def _reference(reference, noise, x, m, w, negative):
  """diffusers' inpainted images [N, H, W, 3] in [0, 1] (masked latents: the posterior mean)."""
  images, masks = x.astype(np.float32) / 255.0, m[..., None]
  _, z_masked = sd_refs.inpainting_inputs(reference, images, masks)
  return sd_refs.reference_images(reference, noise, PROMPTS, num_steps=STEPS, guidance_scale=w,
                                  negative_prompts=negative, image=images, mask_image=masks,
                                  masked_image_latents=z_masked)


def test_from_pretrained_reads_an_inpainting_folder(pipes):
  _, pipe, _ = pipes
  assert pipe.unet.in_channels == 9 and pipe.latent_shape == (8, 8, 4)  # not 9 latent channels
  assert pipe.conditioning == "concat" and pipe.inpainting_model and pipe.text_conditioned
  assert pipe.concat_degradation == loading.INPAINTING_DEGRADATION
  assert pipe.inpainting_null == "unchanged"  # diffusers' guidance
  assert pipe.defaults == {"method": "ddim", "num_steps": 50, "guidance_scale": 7.5}


def test_conditioning_is_diffusers(pipes, inputs):
  """c = [mask on the latent grid, s E(x * (m < 0.5))] equals what diffusers' own
  prepare_mask_latents concatenates, for masks that are not constant on the latent blocks."""
  _, pipe, reference = pipes
  x, m = inputs
  mask_t, z_t = sd_refs.inpainting_inputs(reference, x.astype(np.float32) / 255.0, m[..., None])
  with torch.no_grad():
    mask_l, z_l = reference.prepare_mask_latents(mask_t, z_t, 2, 16, 16, torch.float32, "cpu", None,
                                                 False)
  encode = lambda v: pipe.autoencoder.apply({"params": pipe.ae_params}, v,
                                            method="latents") * pipe.scale_factor
  c = np.asarray(concat.inpainting_conditioning(encode, to_float(x), m[..., None]))
  assert c.shape == (2, 8, 8, 1 + 4)
  want_mask = mask_l.numpy().transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(c[..., :1], want_mask)
  # the rule matters here: "any pixel of the 2 x 2 block masked" gives another latent mask
  assert (m.reshape(2, 8, 2, 8, 2).max(axis=(2, 4)) != want_mask[..., 0]).any()
  np.testing.assert_allclose(c[..., 1:], z_l.numpy().transpose(0, 2, 3, 1), atol=1e-4)


@pytest.mark.parametrize("method", ["ddim", "dpmpp_2m"])
def test_inpaint_matches_diffusers(pipes, inputs, method):
  _, pipe, reference = pipes
  x, m = inputs
  sd_refs.with_scheduler(reference, method)
  noise = pipe.initial_noise(jax.random.key(0), 2)
  images, traces = [], None
  for w, negative in CASES:
    ours = pipe.inpaint(jax.random.key(0), x, m, prompts=PROMPTS, negative_prompts=negative,
                        method=method, num_steps=STEPS, guidance_scale=w, output="float")
    want = _reference(reference, noise, x, m, w, negative)
    got = np.clip(ours / 2.0 + 0.5, 0.0, 1.0)  # diffusers' output_type="np" scale
    assert got.shape == want.shape == (2, 16, 16, 3)
    diff = np.abs(got - want).max() * 255
    assert diff < 1.0, (method, w, negative, diff)  # measured: <= 0.0008
    images.append(got)
    if traces is None:
      traces = dict(pipe.trace_counts)
  assert dict(pipe.trace_counts) == traces  # new guidance and negative prompts: no recompile
  assert np.abs(images[1] - images[0]).max() * 255 > 10  # guidance and negatives act
  assert np.abs(images[2] - images[1]).max() * 255 > 10


def test_fully_masked_null_is_the_other_rule(pipes, inputs):
  """inpainting_null="fully_masked" (this project's training rule) changes the guided images, not
  the unguided ones: the option is what makes a loaded folder follow diffusers."""
  folder, pipe, _ = pipes
  x, m = inputs
  other = LatentDiffusionPipeline.from_pretrained(folder, max_batch=4,
                                                  inpainting_null="fully_masked")
  kw = dict(prompts=PROMPTS, method="ddim", num_steps=STEPS, output="float")
  for w, differs in ((1.0, False), (7.5, True)):
    a = pipe.inpaint(jax.random.key(0), x, m, guidance_scale=w, **kw)
    b = other.inpaint(jax.random.key(0), x, m, guidance_scale=w, **kw)
    assert (np.abs(a - b).max() * 127.5 > 10) == differs, (w, np.abs(a - b).max())  # 0.0001, 93


def test_bad_inputs_fail_before_compiling(pipes, inputs):
  _, pipe, _ = pipes
  x, m = inputs
  before = dict(pipe.trace_counts)
  kw = dict(prompts=PROMPTS, method="ddim", num_steps=STEPS)
  bad = [(dict(mask=np.where(m > 0, 0.7, 0.0)), "mask must be binary"),
         (dict(mask=m[:, :8, :8]), "mask must have shape"),
         (dict(images=x[:, :8]), "images must have shape"),
         (dict(prompts=None), "give prompts="),
         (dict(labels=3), "conditioned on text"),
         (dict(strength=0.5), "training-free inpainting path"),
         (dict(resample=2), "training-free inpainting path")]
  for change, message in bad:
    args = {"images": x, "mask": m, **kw, **change}
    with pytest.raises(ValueError, match=message):
      pipe.inpaint(0, args.pop("images"), args.pop("mask"), **args)
  with pytest.raises(ValueError, match=r"use pipe.inpaint\(rng, images, mask, prompts=...\)"):
    pipe.sample(0, 2, prompts=PROMPTS, num_steps=STEPS)
  assert dict(pipe.trace_counts) == before


def test_save_pretrained_writes_an_inpaint_folder_diffusers_runs(pipes, inputs, tmp_path):
  _, pipe, _ = pipes
  x, m = inputs
  saved = pipe.save_pretrained(str(tmp_path / "saved"))
  with open(os.path.join(saved, "model_index.json"), encoding="utf-8") as f:
    assert json.load(f)["_class_name"] == "StableDiffusionInpaintPipeline"
  copy = diffusers.StableDiffusionInpaintPipeline.from_pretrained(saved)
  copy.set_progress_bar_config(disable=True)
  assert copy.unet.config.in_channels == 9 and type(copy.scheduler).__name__ == "DDIMScheduler"
  noise = pipe.initial_noise(jax.random.key(0), 2)
  for w, negative in CASES[1:]:  # the guided cases: prompts, negatives and c all act
    ours = pipe.inpaint(jax.random.key(0), x, m, prompts=PROMPTS, negative_prompts=negative,
                        method="ddim", num_steps=STEPS, guidance_scale=w, output="float")
    diff = np.abs(np.clip(ours / 2.0 + 0.5, 0.0, 1.0) - _reference(copy, noise, x, m, w, negative))
    assert diff.max() * 255 < 1.0, (w, negative, diff.max() * 255)
  loaded = LatentDiffusionPipeline.from_pretrained(saved, max_batch=4)
  for name in ("concat_degradation", "inpainting_null", "latent_shape", "scale_factor",
               "prediction_type", "sampler_grid", "defaults"):
    assert getattr(loaded, name) == getattr(pipe, name), name
  assert jax.tree.all(jax.tree.map(np.array_equal, loaded.unet_params, pipe.unet_params))
  # the project's rule is recorded for from_pretrained (diffusers itself always keeps c)
  LatentDiffusionPipeline.from_pretrained(saved, inpainting_null="fully_masked").save_pretrained(
      str(tmp_path / "fully_masked"))
  assert LatentDiffusionPipeline.from_pretrained(
      str(tmp_path / "fully_masked")).inpainting_null == "fully_masked"


def test_inpainting_settings_are_checked(pipes, tmp_path):
  _, pipe, _ = pipes
  parts = dict(unet=pipe.unet, unet_params=pipe.unet_params, autoencoder=pipe.autoencoder,
               ae_params=pipe.ae_params, schedule=pipe.schedule, scale_factor=pipe.scale_factor,
               latent_shape=pipe.latent_shape, concat_degradation=pipe.concat_degradation)
  with pytest.raises(ValueError, match="valid choices: 'fully_masked'.*'unchanged'"):
    LatentDiffusionPipeline(**parts, prompt_encoder=pipe.prompt_encoder,
                            inpainting_null="diffusers")
  with pytest.raises(ValueError, match="compare c with itself"):  # no prompts, no labels
    LatentDiffusionPipeline(**parts, inpainting_null="unchanged")
  with pytest.raises(ValueError, match="needs a CLIP text encoder.*has no text encoder"):
    LatentDiffusionPipeline(**parts).save_pretrained(str(tmp_path / "refused"))
  assert not os.path.exists(tmp_path / "refused")
  ae = types.SimpleNamespace(latent_channels=4, in_channels=3)
  unet = lambda channels: types.SimpleNamespace(in_channels=channels, out_channels=4)
  assert loading.unet_concat_kind("folder", unet(9), ae) == "mask"
  assert loading.unet_concat_kind("folder", unet(4), ae) is None
  with pytest.raises(ValueError, match=r"folder: .*supported: in_channels 4 .z_t. or 9 .*\), with"):
    loading.unet_concat_kind("folder", unet(7), ae)  # 4 + 3: not diffusers' SR (in_channels // 2)
