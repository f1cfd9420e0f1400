"""Super-resolution end to end against diffusers: a tiny random-weight LDMSuperResolutionPipeline
(UNet2DModel reading [z_t, low-res image] = 3 + 3 channels, VQModel f = 4 with a random codebook,
DDIM) saved with `save_pretrained` and loaded by `LatentDiffusionPipeline.from_pretrained`; both
upscale the same 16 x 16 low-res images to 64 x 64 from the same initial noise and must agree to
within 1/255 per pixel, for DDIM and DPM-Solver++(2M), uint8 and float inputs.

LDMSuperResolutionPipeline.__call__ takes no latents: it draws them with `randn_tensor(shape,
generator=...)`; the reference's `randn_tensor` is replaced by one that checks the shape it is asked
for (B, in_channels // 2, h, w: the low-res size) and returns the noise of
`pipe.initial_noise(rng, B)`. Everything else runs diffusers' own code.

`save_pretrained` writes a super-resolution model with a latent scale factor s != 1 (as this
project's runs have) as an LDMSuperResolutionPipeline folder, s folded into the VQModel, which
diffusers runs to the same images."""

import json
import os
import shutil
import types

import jax
import numpy as np
import pytest
import torch
from diffusers.pipelines.latent_diffusion import pipeline_latent_diffusion_superresolution as ref_sr
from PIL import Image

import sd_refs
from ldm_jax.data import to_float
from ldm_jax.pipeline import LatentDiffusionPipeline
from ldm_jax.pipeline import loading
from ldm_jax.pipeline import low_res
from ldm_jax.pipeline import single_file

pytestmark = [pytest.mark.slow,  # end to end, torch + jax
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]
STEPS = 4
LOW_RES = (16, 16, 3)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory, torch_one_thread):  # pylint: disable=unused-argument
  folder, reference = sd_refs.tiny_ldm_sr_pipeline(tmp_path_factory.mktemp("sr"))
  return folder, LatentDiffusionPipeline.from_pretrained(folder, max_batch=4), reference


@pytest.fixture(scope="module")
def low_res_images():
  return sd_refs.colour_ramps()


def _reference(reference, noise, low_res_nchw, monkeypatch, method="ddim"):
  """diffusers' upscaled images float [N, H, W, 3] in [0, 1], its latents drawn as `noise`
  (NHWC); low_res_nchw: the tensor it is given, in [-1, 1]."""
  asked = []

  def randn_tensor(shape, generator=None, device=None, dtype=None):
    asked.append(tuple(shape))
    return torch.from_numpy(np.ascontiguousarray(noise.transpose(0, 3, 1, 2))).to(dtype)

  monkeypatch.setattr(ref_sr, "randn_tensor", randn_tensor)
  sd_refs.with_scheduler(reference, method)
  out = reference(image=low_res_nchw, num_inference_steps=STEPS, eta=0.0,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
  n, h, w, c = noise.shape
  assert asked == [(n, c, h, w)]  # latents at the low-res size, in_channels // 2 channels
  return out


def test_from_pretrained_reads_a_super_resolution_folder(pipes):
  folder, pipe, _ = pipes
  with open(os.path.join(folder, "vqvae", "config.json"), encoding="utf-8") as f:
    assert json.load(f)["scaling_factor"] == 0.18215  # written by diffusers, unused by its SR
  assert pipe.unet.in_channels == 6 and pipe.latent_shape == (16, 16, 3)
  assert pipe.image_shape == (64, 64, 3) and pipe.low_res_shape == LOW_RES
  assert pipe.conditioning == "concat" and not pipe.inpainting_model
  assert pipe.concat_degradation == loading.SUPER_RESOLUTION_DEGRADATION
  assert (pipe.scale_factor, pipe.shift_factor) == (1.0, 0.0)
  assert pipe.low_res_input == "diffusers"
  assert pipe.defaults == {"method": "ddim", "num_steps": 100, "guidance_scale": 1.0}


@pytest.mark.parametrize("method", ["ddim", "dpmpp_2m"])
def test_upscale_matches_diffusers(pipes, low_res_images, monkeypatch, method):
  _, pipe, reference = pipes
  x = low_res_images
  noise = pipe.initial_noise(jax.random.key(0), 2)
  tensor = torch.from_numpy(np.ascontiguousarray(to_float(x).transpose(0, 3, 1, 2)))
  want = _reference(reference, noise, tensor, monkeypatch, method)
  assert want.shape == (2, 64, 64, 3)
  for given in (x, to_float(x)):  # uint8, and the same images as floats in [-1, 1]
    got = pipe.upscale(jax.random.key(0), given, method=method, num_steps=STEPS, output="float")
    diff = np.abs(np.clip(got / 2.0 + 0.5, 0.0, 1.0) - want).max() * 255
    assert diff < 1.0, (method, given.dtype, diff)  # measured: <= 0.0007 (scale 0.18215: 118)
  as_uint8 = pipe.upscale(jax.random.key(0), x, method=method, num_steps=STEPS)
  assert np.abs(as_uint8.astype(int) - np.round(want * 255).astype(int)).max() <= 1
  # the low-res image reaches the UNet: the same noise with other images gives other outputs
  other = pipe.upscale(jax.random.key(0), x[::-1], method=method, num_steps=STEPS, output="float")
  assert np.abs(other - got).max() * 127.5 > 10


def test_diffusers_low_res_input_is_its_preprocess():
  """low_res_input="diffusers" resizes uint8 images as LDMSuperResolutionPipeline's `preprocess`
  does PIL images (sides floored to a multiple of 32, Lanczos); "exact" refuses them."""
  big = np.random.default_rng(1).integers(0, 256, (2, 45, 37, 3), dtype=np.uint8)
  got = low_res.images(big, (32, 32, 3), "diffusers", "a test")
  assert got.dtype == np.uint8 and got.shape == (2, 32, 32, 3)
  for mine, image in zip(got, big):
    want = ref_sr.preprocess(Image.fromarray(image)).numpy()[0].transpose(1, 2, 0)
    np.testing.assert_allclose(to_float(mine), want, atol=1e-6)
  assert np.abs(got.astype(int) - big[:, :32, :32].astype(int)).max() > 10  # resized, not cropped
  same = big[:, :32, :32]
  assert low_res.images(same, (32, 32, 3), "diffusers", "a test") is not None
  np.testing.assert_array_equal(low_res.images(same, (32, 32, 3), "diffusers", "a test"), same)
  bad = [(big, "exact", r"must have shape \[N, 32, 32, 3\] \(a test\), got \(2, 45, 37, 3\)"),
         (to_float(big), "diffusers", "be uint8 .* got float32"),
         (np.zeros((2, 64, 64, 3), np.uint8), "diffusers", r"h - h % 32 = 32"),
         (big[..., :1], "diffusers", "must have shape"),
         (big[:0], "diffusers", "must have shape")]
  for values, rule, message in bad:
    with pytest.raises(ValueError, match=message):
      low_res.images(values, (32, 32, 3), rule, "a test")
  with pytest.raises(ValueError, match="Unknown low_res_input 'pil'; valid choices: 'exact'"):
    low_res.check_rule("pil")


def test_bad_inputs_fail_before_compiling(pipes, low_res_images):
  _, pipe, _ = pipes
  x = low_res_images
  before = dict(pipe.trace_counts)
  bad = [(dict(low_res_images=x[:, :8, :8]), r"must have shape \[N, 16, 16, 3\].*x4 by "
                                             "'bicubic_x4'.*low_res_input='diffusers'"),
         (dict(low_res_images=x[0]), "must have shape"),
         (dict(low_res_images=x[..., :1]), "must have shape"),
         (dict(low_res_images=to_float(x) * 4), "low_res_images"),
         (dict(labels=3), "no class labels"),
         (dict(guidance_scale=np.nan), "guidance"),
         (dict(num_steps=0), "num_steps"),
         (dict(method="plms"), "Unknown method")]
  for change, message in bad:
    args = {"low_res_images": x, "num_steps": STEPS, **change}
    with pytest.raises(ValueError, match=message):
      pipe.upscale(0, args.pop("low_res_images"), **args)
  for call in (lambda: pipe.sample(0, 2, num_steps=STEPS),
               lambda: pipe.img2img(0, np.zeros((2, 64, 64, 3), np.uint8), 0.5)):
    with pytest.raises(ValueError, match=r"use pipe.upscale\(rng, low_res_images\)"):
      call()
  with pytest.raises(ValueError, match="valid choices: 'exact'.*'diffusers'"):
    LatentDiffusionPipeline(**{k: getattr(pipe, k) for k in (
        "unet", "unet_params", "autoencoder", "ae_params", "schedule", "scale_factor",
        "latent_shape", "concat_degradation")}, low_res_input="lanczos")
  assert dict(pipe.trace_counts) == before


def test_only_supported_channel_counts_load(pipes, tmp_path):
  """unet_concat_kind: 2 C = 6 is super-resolution for 3 latent and image channels; other counts
  are refused naming the supported ones; an f = 8 autoencoder or a single file are refused."""
  folder, _, _ = pipes
  ae = types.SimpleNamespace(latent_channels=3, in_channels=3)
  unet = lambda channels: types.SimpleNamespace(in_channels=channels, out_channels=3)
  kinds = {c: loading.unet_concat_kind("folder", unet(c), ae) for c in (3, 6, 7)}
  assert kinds == {3: None, 6: "image", 7: "mask"}
  with pytest.raises(ValueError, match=r"folder: the UNet reads 5 .*supported: in_channels 3 "
                                       r"\(z_t\) or 7 .* or 6 \(super-resolution"):
    loading.unet_concat_kind("folder", unet(5), ae)
  kl4 = types.SimpleNamespace(latent_channels=4, in_channels=3)
  with pytest.raises(ValueError, match=r"supported: in_channels 4 \(z_t\) or 9 [^)]*\) or 7 with "
                                       r"class embeddings .*\), with out_channels 4"):
    loading.unet_concat_kind("folder", types.SimpleNamespace(in_channels=8, out_channels=4), kl4)
  f8 = tmp_path / "f8"
  shutil.copytree(folder, f8)
  shutil.rmtree(f8 / "vqvae")
  sd_refs.tiny_vqvae(0, levels=4).save_pretrained(str(f8 / "vqvae"))
  with pytest.raises(ValueError, match="super-resolution.*needs an autoencoder with f = 4.*f = 8"):
    LatentDiffusionPipeline.from_pretrained(str(f8))
  conv = np.zeros((32, 6, 3, 3), np.float32)  # CompVis LDM-SR: no cond_stage_model
  with pytest.raises(ValueError, match=r"no text encoder .*reads 6 channels.*from_pretrained"):
    single_file.from_single_file({"model.diffusion_model.input_blocks.0.0.weight": conv})


def test_save_pretrained_writes_a_folder_diffusers_runs(pipes, low_res_images, monkeypatch,
                                                        tmp_path):
  """A project-style SR model (scale factor 0.5, low_res_input "exact") saved and run by
  diffusers' LDMSuperResolutionPipeline gives its images; loaded back it is the same model."""
  _, loaded, _ = pipes
  parts = {k: getattr(loaded, k) for k in ("unet", "unet_params", "autoencoder", "ae_params",
                                           "schedule", "latent_shape", "concat_degradation",
                                           "sampler_grid")}
  pipe = LatentDiffusionPipeline(**parts, scale_factor=0.5, max_batch=4,
                                 defaults={"method": "ddim", "num_steps": 50})
  saved = pipe.save_pretrained(str(tmp_path / "saved"))
  with open(os.path.join(saved, "model_index.json"), encoding="utf-8") as f:
    index = json.load(f)
  assert index["_class_name"] == "LDMSuperResolutionPipeline" and "vqvae" in index
  copy = ref_sr.LDMSuperResolutionPipeline.from_pretrained(saved)
  copy.set_progress_bar_config(disable=True)
  x = low_res_images
  noise = pipe.initial_noise(jax.random.key(1), 2)
  tensor = torch.from_numpy(np.ascontiguousarray(to_float(x).transpose(0, 3, 1, 2)))
  want = _reference(copy, noise, tensor, monkeypatch)
  ours = pipe.upscale(jax.random.key(1), x, method="ddim", num_steps=STEPS, output="float")
  diff = np.abs(np.clip(ours / 2.0 + 0.5, 0.0, 1.0) - want).max() * 255
  assert diff < 1.0, diff
  # s reaches the images (so folding it is what makes diffusers agree)
  unscaled = loaded.upscale(jax.random.key(1), x, method="ddim", num_steps=STEPS, output="float")
  assert np.abs(unscaled - ours).max() * 127.5 > 10
  back = LatentDiffusionPipeline.from_pretrained(saved, max_batch=4)
  assert (back.scale_factor, back.low_res_input, back.concat_degradation) == (
      1.0, "exact", pipe.concat_degradation)
  assert back.defaults == pipe.defaults and back.latent_shape == pipe.latent_shape
  again = back.upscale(jax.random.key(1), x, method="ddim", num_steps=STEPS, output="float")
  assert np.abs(again - ours).max() * 127.5 < 0.1
  with pytest.raises(ValueError, match="LDMSuperResolutionPipeline, which this one does not fit: "
                                       "it has class labels"):
    LatentDiffusionPipeline(**parts, scale_factor=1.0, num_classes=3).save_pretrained(
        str(tmp_path / "refused"))
  assert not os.path.exists(tmp_path / "refused")
