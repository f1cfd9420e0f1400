"""Prompt to image end to end against diffusers: a tiny random-weight StableDiffusionPipeline saved
with `save_pretrained` and loaded by `LatentDiffusionPipeline.from_pretrained`, both sampled from
the same initial latents (`pipe.initial_noise`), must give the same images to within 1/255 per
pixel: SD 1.x-style (epsilon) and SD 2.x-style (v-prediction, OpenCLIP-style text model) folders,
DDIM and DPM-Solver++(2M), without guidance, with guidance, and with negative prompts. The same
for LDM's txt2img pipeline (LDMTextToImagePipeline: WordPiece tokenizer, LDMBert, vqvae/)."""

import jax
import numpy as np
import pytest
import torch

import sd_refs
from ldm_jax.pipeline import LatentDiffusionPipeline

pytestmark = [pytest.mark.slow,  # end to end, torch + jax
              pytest.mark.filterwarnings("ignore::UserWarning")]
PROMPTS, NEGATIVE = sd_refs.PROMPTS, sd_refs.NEGATIVE
STEPS = 5
# (guidance_scale, negative_prompts): diffusers runs the conditional model alone for w <= 1, the
# pipeline computes uncond + 1 (cond - uncond); both guided cases use w = 7.5 (SD's default).
CASES = [(1.0, None), (7.5, None), (7.5, NEGATIVE)]


@pytest.fixture(scope="module", params=sorted(sd_refs.VARIANTS))
def pipes(request, tmp_path_factory, torch_one_thread):  # pylint: disable=unused-argument
  folder, reference = sd_refs.tiny_sd_pipeline(tmp_path_factory.mktemp("sd"), request.param)
  return request.param, LatentDiffusionPipeline.from_pretrained(folder, max_batch=4), reference


def test_from_pretrained_reads_the_whole_folder(pipes):
  variant, pipe, _ = pipes
  assert pipe.conditioning == "context" and pipe.text_conditioned
  assert pipe.prediction_type == sd_refs.VARIANTS[variant]["prediction_type"]
  assert pipe.latent_shape == (8, 8, 4) and pipe.image_shape == (16, 16, 3)
  assert pipe.scale_factor == pytest.approx(0.18215)
  # DDIMScheduler(steps_offset=1, set_alpha_to_one=False): its grid and method, SD's defaults
  assert pipe.sampler_grid["steps_offset"] == 1 and not pipe.sampler_grid["set_alpha_to_one"]
  assert pipe.sampler_grid["timestep_spacing"] == "leading"
  assert pipe.defaults == {"method": "ddim", "num_steps": 50, "guidance_scale": 7.5}
  context = pipe.encode_prompt(PROMPTS)
  assert context.shape == (2, 77, sd_refs.TEXT_DIM) and context.dtype == np.float32


@pytest.mark.parametrize("method", ["ddim", "dpmpp_2m"])
def test_images_match_diffusers(pipes, method):
  _, pipe, reference = pipes
  sd_refs.with_scheduler(reference, method)
  noise = pipe.initial_noise(jax.random.key(0), 2)
  images, traces = [], None
  for w, negative in CASES:
    ours = pipe.sample(jax.random.key(0), 2, prompts=PROMPTS, negative_prompts=negative,
                       method=method, num_steps=STEPS, guidance_scale=w, output="float")
    want = sd_refs.reference_images(reference, noise, PROMPTS, num_steps=STEPS, guidance_scale=w,
                                    negative_prompts=negative)
    got = np.clip(ours / 2.0 + 0.5, 0.0, 1.0)  # diffusers' output_type="np" scale
    assert got.shape == want.shape == (2, 16, 16, 3)
    diff = np.abs(got - want).max() * 255
    assert diff < 1.0, (method, w, negative, diff)  # measured: <= 0.002 (SD 1.x and 2.x)
    images.append(got)
    if traces is None:
      traces = dict(pipe.trace_counts)
  assert dict(pipe.trace_counts) == traces  # new guidance and negative prompts: no recompile
  # the cases differ by far more than the tolerance: prompts, guidance and negatives all act
  assert np.abs(images[1] - images[0]).max() * 255 > 10
  assert np.abs(images[2] - images[1]).max() * 255 > 10


def test_ldm_txt2img_folder_matches_diffusers(tmp_path, torch_one_thread):  # pylint: disable=unused-argument
  folder, reference = sd_refs.tiny_ldm_txt2img_pipeline(tmp_path)
  pipe = LatentDiffusionPipeline.from_pretrained(folder, max_batch=4)
  assert type(pipe.prompt_encoder.module).__name__ == "BERTEmbedder"
  assert pipe.defaults == {"method": "ddim", "num_steps": 50, "guidance_scale": 1.0}  # diffusers'
  prompts = ["a photo of a cat", "a red house on mars!"]
  noise = pipe.initial_noise(jax.random.key(0), 2)
  latents = torch.from_numpy(np.ascontiguousarray(np.transpose(noise, (0, 3, 1, 2))))
  for w in (1.0, 6.0):  # LDMTextToImagePipeline: the empty prompt is the unconditional branch
    ours = pipe.sample(jax.random.key(0), 2, prompts=prompts, num_steps=STEPS, guidance_scale=w,
                       output="float")
    with torch.no_grad():  # its latent-shape check assumes f = 8: height 64 for 8x8 latents
      want = reference(prompts, height=64, width=64, num_inference_steps=STEPS, guidance_scale=w,
                       latents=latents, output_type="np").images
    diff = np.abs(np.clip(ours / 2.0 + 0.5, 0.0, 1.0) - want).max() * 255
    assert diff < 1.0, (w, diff)  # measured: 0.0004
