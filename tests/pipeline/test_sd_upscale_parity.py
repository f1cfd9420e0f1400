"""The SD x4 upscaler end to end against diffusers: a tiny random-weight
StableDiffusionUpscalePipeline (UNet2DConditionModel reading [z_t, noised low-res image] = 4 + 3
channels with the noise level as class label and cross-attention, AutoencoderKL f = 4, SD 2.x-style
text encoder, DDIM v-prediction, DDPM low_res_scheduler) saved with `save_pretrained` and loaded by
`LatentDiffusionPipeline.from_pretrained`; both upscale the same 16 x 16 low-res images to 64 x 64
from the same noise and must agree to within 1/255 per pixel, for DDIM and DPM-Solver++(2M),
without guidance, with guidance and with negative prompts, at several noise levels.

The same noise: the reference gets `latents=pipe.initial_noise(rng, N)`, and its module's
`randn_tensor` (which draws the low-res noise, the only draw left once latents are given) is
replaced by one that checks the shape it is asked for (the low-res image's) and returns
`pipe.low_res_noise(rng, N)`. Everything else runs diffusers' own code, on PIL images.

`save_pretrained` writes such a model back as a StableDiffusionUpscalePipeline folder (with a
default noise level and sampling defaults of its own) that diffusers runs to the same images."""

import json
import os
import shutil
import types

import jax
import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_upscale as ref_up
from PIL import Image

import sd_refs
from ldm_jax.data import to_float
from ldm_jax.pipeline import LatentDiffusionPipeline
from ldm_jax.pipeline import loading
from ldm_jax.pipeline import noise_augmentation as noise_aug

pytestmark = [pytest.mark.slow,  # end to end, torch + jax
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]
PROMPTS, NEGATIVE = sd_refs.PROMPTS, sd_refs.NEGATIVE
STEPS = 4
# (prompts, guidance_scale, negative_prompts, noise_level): level None is the default 20
CASES = [(PROMPTS, 1.0, None, None), (PROMPTS, 9.0, None, 100),
         (PROMPTS[::-1], 9.0, NEGATIVE, 350)]


@pytest.fixture(scope="module")
def pipes(tmp_path_factory, torch_one_thread):  # pylint: disable=unused-argument
  folder, reference = sd_refs.tiny_sd_upscale_pipeline(tmp_path_factory.mktemp("up"))
  return folder, LatentDiffusionPipeline.from_pretrained(folder, max_batch=4), reference


@pytest.fixture(scope="module")
def low_res_images():
  return sd_refs.colour_ramps()


def _nchw(a):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2))))


def _reference(reference, pipe, rng, x, monkeypatch, prompts, w, negative, level):
  """diffusers' upscaled images float [N, H, W, 3] in [0, 1] of the PIL images x from the noise
  of `rng` (`pipe.initial_noise`, `pipe.low_res_noise`)."""
  eps, asked = pipe.low_res_noise(rng, len(x)), []

  def randn_tensor(shape, generator=None, device=None, dtype=None):
    asked.append(tuple(shape))
    return _nchw(eps).to(dtype)

  monkeypatch.setattr(ref_up, "randn_tensor", randn_tensor)
  level = {} if level is None else {"noise_level": level}
  with torch.no_grad():
    out = reference(prompt=list(prompts), negative_prompt=negative,
                    image=[Image.fromarray(i) for i in x],
                    latents=_nchw(pipe.initial_noise(rng, len(x))),
                    num_inference_steps=STEPS, guidance_scale=w, eta=0.0, output_type="np",
                    **level).images
  assert asked == [(len(x), 3, 16, 16)]  # the low-res noise only: latents were given
  return out


def test_from_pretrained_reads_an_upscale_folder(pipes):
  folder, pipe, reference = pipes
  with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
    index = json.load(f)
  assert index["_class_name"] == "StableDiffusionUpscalePipeline"
  assert index["max_noise_level"] == 350 and "low_res_scheduler" in index
  assert pipe.unet.in_channels == 7 and pipe.latent_shape == (16, 16, 4)
  assert pipe.image_shape == (64, 64, 3) and pipe.low_res_shape == (16, 16, 3)
  assert pipe.conditioning == "concat" and pipe.text_conditioned and not pipe.inpainting_model
  assert pipe.concat_degradation == loading.SUPER_RESOLUTION_DEGRADATION
  assert pipe.num_classes is None  # the class labels are noise levels
  assert (pipe.scale_factor, pipe.shift_factor, pipe.low_res_input) == (0.08333, 0.0, "exact")
  assert pipe.prediction_type == "v_prediction"
  aug = pipe.noise_augmentation
  assert (aug.max_level, aug.default_level) == (350, 20)
  np.testing.assert_allclose(np.asarray(aug.schedule.alphas_cumprod),
                             reference.low_res_scheduler.alphas_cumprod.numpy(), rtol=1e-6)
  assert pipe.defaults == {"method": "ddim", "num_steps": 75, "guidance_scale": 9.0}


def test_noised_low_res_is_diffusers_add_noise(pipes, low_res_images):
  """c = q_sample(low-res schedule, x, s, eps) equals what diffusers' image_processor and
  low_res_scheduler.add_noise make of the PIL images, eps being `low_res_noise`."""
  _, pipe, reference = pipes
  x, rng = low_res_images, jax.random.key(3)
  eps = pipe.low_res_noise(rng, 2)
  assert eps.shape == (2, 16, 16, 3) and abs(float(eps.std()) - 1.0) < 0.1
  fn = noise_aug.noised_map_program((16, 16), pipe.noise_augmentation.schedule, lambda _: None)
  for level in (0, 20, 350):
    c = np.asarray(fn(to_float(x), rng, np.arange(2, dtype=np.int32), np.full((2,), level,
                                                                                np.int32)))
    image = reference.image_processor.preprocess([Image.fromarray(i) for i in x])
    want = reference.low_res_scheduler.add_noise(image, _nchw(eps),
                                                 torch.tensor([level], dtype=torch.long))
    np.testing.assert_allclose(c, want.numpy().transpose(0, 2, 3, 1), atol=2e-6)
  assert np.abs(c - to_float(x)).max() > 0.5  # level 350 noises visibly


@pytest.mark.parametrize("method", ["ddim", "dpmpp_2m"])
def test_upscale_matches_diffusers(pipes, low_res_images, monkeypatch, method):
  _, pipe, reference = pipes
  x, rng = low_res_images, jax.random.key(0)
  sd_refs.with_scheduler(reference, method)
  images, traces = [], None
  for prompts, w, negative, level in CASES:
    want = _reference(reference, pipe, rng, x, monkeypatch, prompts, w, negative, level)
    ours = pipe.upscale(rng, x, prompts=prompts, negative_prompts=negative, noise_level=level,
                        guidance_scale=w, method=method, num_steps=STEPS, output="float")
    got = np.clip(ours / 2.0 + 0.5, 0.0, 1.0)  # diffusers' output_type="np" scale
    assert got.shape == want.shape == (2, 64, 64, 3)
    diff = np.abs(got - want).max() * 255
    assert diff < 1.0, (method, w, negative, level, diff)  # measured: <= 0.0014
    images.append(got)
    if traces is None:
      traces = dict(pipe.trace_counts)
  # float input (the same images in [-1, 1]) and uint8 output
  again = pipe.upscale(rng, to_float(x), prompts=PROMPTS, guidance_scale=1.0, method=method,
                       num_steps=STEPS, output="float")
  assert np.abs(np.clip(again / 2.0 + 0.5, 0.0, 1.0) - images[0]).max() * 255 < 0.1
  as_uint8 = pipe.upscale(rng, x, prompts=PROMPTS, guidance_scale=1.0, method=method,
                          num_steps=STEPS)
  assert np.abs(as_uint8.astype(int) - np.round(images[0] * 255).astype(int)).max() <= 1
  # new prompts, negative prompts, guidance and noise levels: no recompile
  assert dict(pipe.trace_counts) == traces
  assert np.abs(images[1] - images[0]).max() * 255 > 10  # guidance and the level act
  assert np.abs(images[2] - images[1]).max() * 255 > 10


def test_noise_level_and_low_res_reach_the_images(pipes, low_res_images):
  """The noise level (class label and noise amount) and the low-res image act; image b's low-res
  noise comes from fold_in(rng, b), independent of the batch and of the initial noise."""
  _, pipe, _ = pipes
  x = low_res_images
  run = lambda images, level, prompts=PROMPTS: pipe.upscale(
      0, images, prompts=prompts, noise_level=level, guidance_scale=1.0, method="ddim",
      num_steps=STEPS, output="float")
  base = run(x, 20)
  assert np.abs(run(x, 0) - base).max() * 127.5 > 10
  assert np.abs(run(x, np.array([20, 0])) - base)[0].max() == 0  # per-image levels
  assert np.abs(run(x[::-1], 20) - base).max() * 127.5 > 10
  np.testing.assert_array_equal(run(x[:1], 20, PROMPTS[:1]), base[:1])  # batch-independent
  np.testing.assert_array_equal(pipe.low_res_noise(0, 2)[:1], pipe.low_res_noise(0, 1))
  assert np.abs(pipe.low_res_noise(0, 1) - pipe.initial_noise(0, 1)[..., :3]).max() > 1


def test_bad_inputs_fail_before_compiling(pipes, low_res_images, tmp_path):
  _, pipe, _ = pipes
  x = low_res_images
  before = dict(pipe.trace_counts)
  bad = [(dict(low_res_images=x[:, :8, :8]), r"must have shape \[N, 16, 16, 3\].*x4 by "
                                             "'bicubic_x4'"),
         (dict(low_res_images=x[..., :1]), "must have shape"),
         (dict(noise_level=351), r"noise_level must lie in \[0, 350\] \(max_noise_level\), got "
                                 r"\[351\]"),
         (dict(noise_level=-1), r"must lie in \[0, 350\]"),
         (dict(noise_level=2.5), r"noise_level must be an int .*got float64 \(\)"),
         (dict(noise_level="20"), "noise_level must be an int"),
         (dict(noise_level=np.array([20, 30, 40])), r"ints of shape \[2\]"),
         (dict(prompts=None), "conditioned on text: give prompts="),
         (dict(prompts=PROMPTS * 2), "prompts must be"),
         (dict(labels=3), "not labels=3"),
         (dict(guidance_scale=np.nan), "guidance"),
         (dict(num_steps=0), "num_steps")]
  for change, message in bad:
    args = {"low_res_images": x, "prompts": PROMPTS, "num_steps": STEPS, **change}
    with pytest.raises(ValueError, match=message):
      pipe.upscale(0, args.pop("low_res_images"), **args)
  for call in (lambda: pipe.sample(0, 2, prompts=PROMPTS, num_steps=STEPS),
               lambda: pipe.img2img(0, np.zeros((2, 64, 64, 3), np.uint8), 0.5, prompts=PROMPTS)):
    with pytest.raises(ValueError,
                       match=r"use pipe.upscale\(rng, low_res_images, prompts=\.\.\.\)"):
      call()
  parts = {k: getattr(pipe, k) for k in ("unet", "unet_params", "autoencoder", "ae_params",
                                         "schedule", "scale_factor", "latent_shape",
                                         "concat_degradation", "prompt_encoder")}
  aug = pipe.noise_augmentation
  with pytest.raises(ValueError,
                     match=r"max_level \(1000\) < the UNet's num_class_embeds \(1000\)"):
    LatentDiffusionPipeline(**parts, noise_augmentation=aug._replace(max_level=1000))
  with pytest.raises(ValueError, match="noise_augmentation belongs to a text-conditioned"):
    LatentDiffusionPipeline(**{**parts, "prompt_encoder": None}, noise_augmentation=aug)
  plain = LatentDiffusionPipeline(**{**parts, "prompt_encoder": None})  # no noise, no text
  for kwargs, message in ((dict(noise_level=20), "no noise_augmentation.*noise_level must be "
                                                 "None, got 20"),
                          (dict(prompts=PROMPTS), "has no text encoder; prompts")):
    with pytest.raises(ValueError, match=message):
      plain.upscale(0, x, num_steps=STEPS, **kwargs)
  with pytest.raises(ValueError, match="low_res_noise belongs to noise-augmented"):
    plain.low_res_noise(0, 2)
  with pytest.raises(ValueError, match="StableDiffusionUpscalePipeline, which this one does not "
                                       "fit: its latent scale factor 0.5"):
    LatentDiffusionPipeline(**{**parts, "scale_factor": 0.5},
                            noise_augmentation=aug).save_pretrained(str(tmp_path / "refused"))
  assert not os.path.exists(tmp_path / "refused")
  assert dict(pipe.trace_counts) == before
  assert not plain.trace_counts


def test_only_supported_channel_counts_load(pipes, tmp_path):
  """unet_concat_kind: C + C_x = 7 with class embeddings and cross-attention is noise-augmented
  super-resolution; 7 without them, and other counts, are refused; the folder needs its
  low_res_scheduler/ and text encoder."""
  folder, _, _ = pipes
  kl4 = types.SimpleNamespace(latent_channels=4, in_channels=3)
  unet = lambda channels, **kw: types.SimpleNamespace(in_channels=channels, out_channels=4, **kw)
  upscaler = dict(num_class_embeds=1000, has_cross_attention=True)
  kinds = {c: loading.unet_concat_kind("f", unet(c, **upscaler), kl4) for c in (4, 7, 9)}
  assert kinds == {4: None, 7: "noisy_image", 9: "mask"}
  for channels, kw in ((7, {}), (7, dict(num_class_embeds=1000)), (8, upscaler)):
    with pytest.raises(ValueError, match=rf"f: the UNet reads {channels} .*or 7 with class "
                                         r"embeddings and cross-attention \(noise-augmented"):
      loading.unet_concat_kind("f", unet(channels, **kw), kl4)
  for dropped, message in ((("low_res_scheduler",), "needs low_res_scheduler/scheduler_config"),
                           (("text_encoder", "tokenizer"), "has no tokenizer/ and text_encoder/")):
    copy = tmp_path / dropped[0]
    shutil.copytree(folder, copy)
    with open(copy / "model_index.json", encoding="utf-8") as f:
      index = json.load(f)
    for name in dropped:
      shutil.rmtree(copy / name)
      del index[name]
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      LatentDiffusionPipeline.from_pretrained(str(copy))


def test_save_pretrained_writes_a_folder_diffusers_runs(pipes, low_res_images, monkeypatch,
                                                        tmp_path):
  """The loaded model, with its own defaults and default noise level, saved as a
  StableDiffusionUpscalePipeline folder: diffusers runs it to the same images (w = 9, level 100,
  negative prompts), and loaded back it is the same model."""
  _, loaded, _ = pipes
  parts = {k: getattr(loaded, k) for k in (
      "unet", "unet_params", "autoencoder", "ae_params", "schedule", "scale_factor", "latent_shape",
      "concat_degradation", "prompt_encoder", "prediction_type", "sampler_grid")}
  pipe = LatentDiffusionPipeline(
      **parts, max_batch=4, defaults={"method": "dpmpp_2m", "num_steps": 30, "guidance_scale": 5.0},
      noise_augmentation=loaded.noise_augmentation._replace(max_level=250, default_level=40))
  saved = pipe.save_pretrained(str(tmp_path / "saved"))
  with open(os.path.join(saved, "model_index.json"), encoding="utf-8") as f:
    index = json.load(f)
  assert index["_class_name"] == "StableDiffusionUpscalePipeline"
  assert index["max_noise_level"] == 250 and index["low_res_scheduler"][1] == "DDPMScheduler"
  copy = ref_up.StableDiffusionUpscalePipeline.from_pretrained(saved)
  copy.set_progress_bar_config(disable=True)
  assert type(copy.scheduler).__name__ == "DPMSolverMultistepScheduler"
  rng, x = jax.random.key(2), low_res_images
  want = _reference(copy, pipe, rng, x, monkeypatch, PROMPTS, 9.0, NEGATIVE, 100)
  ours = pipe.upscale(rng, x, prompts=PROMPTS, negative_prompts=NEGATIVE, noise_level=100,
                      guidance_scale=9.0, num_steps=STEPS, output="float")
  diff = np.abs(np.clip(ours / 2.0 + 0.5, 0.0, 1.0) - want).max() * 255
  assert diff < 1.0, diff
  with pytest.raises(ValueError, match=r"must lie in \[0, 250\]"):
    pipe.upscale(rng, x, prompts=PROMPTS, noise_level=251)
  back = LatentDiffusionPipeline.from_pretrained(saved, max_batch=4)
  assert back.defaults == pipe.defaults and back.latent_shape == pipe.latent_shape
  assert (back.noise_augmentation.max_level, back.noise_augmentation.default_level) == (250, 40)
  assert (back.scale_factor, back.prediction_type) == (0.08333, "v_prediction")
  again = back.upscale(rng, x, prompts=PROMPTS, negative_prompts=NEGATIVE, noise_level=100,
                       guidance_scale=9.0, num_steps=STEPS, output="float")
  assert np.abs(again - ours).max() * 127.5 < 0.1
  # the default level (40) is the model's, not diffusers' 20
  default = back.upscale(rng, x, prompts=PROMPTS, num_steps=STEPS, output="float")
  np.testing.assert_allclose(default, back.upscale(rng, x, prompts=PROMPTS, noise_level=40,
                                                   num_steps=STEPS, output="float"), atol=1e-6)
