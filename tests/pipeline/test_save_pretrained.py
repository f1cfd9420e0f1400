"""`LatentDiffusionPipeline.save_pretrained` against diffusers: a tiny random-weight class-conditional
v-prediction pipeline is saved; diffusers' `DiffusionPipeline.from_pretrained` loads the folder and
its components, run through diffusers' sampling loop from the same initial latents, give the
pipeline's images; `from_pretrained` reads the folder back with every setting, and saving that
again writes the same files."""

import json
import os

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ldm_jax import schedules
from ldm_jax.convert import diffusers_unet
from ldm_jax.models.autoencoder import AutoencoderKL
from ldm_jax.pipeline import LatentDiffusionPipeline, random_params

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
NUM_CLASSES, STEPS, GUIDANCE = 3, 3, 2.0
LABELS = [0, 2]
# The UNet as diffusers itself configures it (every key of its config, sample_size included).
UNET_KWARGS = dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                   layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                   up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                   attention_head_dim=8, num_class_embeds=NUM_CLASSES + 1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  unet_config = dict(diffusers.UNet2DModel.load_config(_unet_folder(tmp_path_factory)))
  unet = diffusers_unet.unet_from_config(unet_config)
  ae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(16, 16), layers_per_block=1,
                     z_channels=3, norm_groups=8, mid_attention=False)  # f = 2: 16x16x1 -> 8x8x3
  pipe = LatentDiffusionPipeline(
      unet, random_params(unet, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)),
                          y=jnp.zeros((1,), jnp.int32), seed=1),
      ae, random_params(ae, jnp.zeros((1, 16, 16, 1)), seed=2),
      schedules.get_schedule("scaled_linear", 100, beta_start=0.0015, beta_end=0.0195),
      scale_factor=0.7, latent_shape=(8, 8, 3), prediction_type="v_prediction",
      num_classes=NUM_CLASSES, max_batch=4,
      sampler_grid={"timestep_spacing": "trailing", "set_alpha_to_one": False},
      defaults={"method": "ddim", "num_steps": STEPS, "guidance_scale": GUIDANCE})
  folder = str(tmp_path_factory.mktemp("saved") / "pipeline")
  assert pipe.save_pretrained(folder) == folder
  return pipe, folder, unet_config


def _unet_folder(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("diffusers_unet"))
  diffusers.UNet2DModel(**UNET_KWARGS).save_config(folder)
  return folder


def _json(folder, *parts):
  with open(os.path.join(folder, *parts), encoding="utf-8") as f:
    return json.load(f)


def test_diffusers_loads_the_folder_and_its_loop_gives_the_same_images(saved, torch_one_thread):  # pylint: disable=unused-argument
  pipe, folder, _ = saved
  reference = diffusers.DiffusionPipeline.from_pretrained(folder)
  assert type(reference).__name__ == "LDMPipeline"
  unet, vae, scheduler = reference.unet, reference.vqvae, reference.scheduler
  # The real latent scale factor, the training schedule and prediction type, the grid.
  assert vae.config.scaling_factor == pytest.approx(0.7) and unet.config.sample_size == 8
  assert type(scheduler).__name__ == "DDIMScheduler"
  assert scheduler.config.prediction_type == "v_prediction"
  np.testing.assert_allclose(scheduler.alphas_cumprod.numpy(), pipe.schedule.alphas_cumprod, rtol=1e-6)
  # diffusers' loop (LDMPipeline.__call__'s, with class labels and classifier-free guidance around
  # the UNet, which LDMPipeline has no arguments for) from the pipeline's initial latents.
  noise = pipe.initial_noise(jax.random.key(0), len(LABELS))
  latents = torch.from_numpy(np.ascontiguousarray(noise.transpose(0, 3, 1, 2)))
  y, null = torch.tensor(LABELS), torch.full((len(LABELS),), NUM_CLASSES)
  scheduler.set_timesteps(STEPS)
  with torch.no_grad():
    for t in scheduler.timesteps:
      x = scheduler.scale_model_input(latents, t)
      cond, uncond = unet(x, t, class_labels=y).sample, unet(x, t, class_labels=null).sample
      latents = scheduler.step(uncond + GUIDANCE * (cond - uncond), t, latents, eta=0.0).prev_sample
    want = vae.decode(latents / vae.config.scaling_factor).sample.numpy().transpose(0, 2, 3, 1)
  got = pipe.sample(jax.random.key(0), len(LABELS), labels=LABELS, output="float")
  assert got.shape == want.shape == (2, 16, 16, 1)
  # Both float32 with the same weights, schedule and grid: only rounding differs (measured below
  # 1e-5); a wrong scale factor, schedule, prediction type, grid or guidance moves the images by
  # more than 0.05 (checked with the scale factor below).
  diff = np.abs(got - want).max()
  assert diff < 1e-3, diff
  off = vae.decode(latents / 0.8).sample.detach().numpy().transpose(0, 2, 3, 1)
  assert np.abs(off - want).max() > 0.05


def test_from_pretrained_round_trips_every_setting_and_file(saved, tmp_path):
  pipe, folder, unet_config = saved
  loaded = LatentDiffusionPipeline.from_pretrained(folder, max_batch=4)
  for name in ("scale_factor", "shift_factor", "latent_shape", "image_shape", "prediction_type",
               "num_classes", "conditioning", "defaults"):
    assert getattr(loaded, name) == getattr(pipe, name), name
  assert loaded.sampler_grid == {"timestep_spacing": "trailing", "steps_offset": 0,
                                 "set_alpha_to_one": False, "karras_sigmas": False,
                                 "variance_type": "fixed_small"}
  np.testing.assert_array_equal(loaded.schedule.betas, pipe.schedule.betas)
  np.testing.assert_allclose(loaded.schedule.alphas_cumprod, pipe.schedule.alphas_cumprod, rtol=1e-6)
  for a, b in zip(jax.tree.leaves((loaded.unet_params, loaded.ae_params)),
                  jax.tree.leaves((pipe.unet_params, pipe.ae_params))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert loaded.unet == pipe.unet
  # Saved again: the same files, key for key.
  again = loaded.save_pretrained(str(tmp_path / "again"))
  for parts in (("model_index.json",), ("unet", "config.json"), ("vqvae", "config.json"),
                ("scheduler", "scheduler_config.json")):
    assert _json(again, *parts) == _json(folder, *parts), parts
  # The UNet config diffusers builds from the saved one is the one it was made from, every key
  # (sample_size included).
  rebuilt = diffusers.UNet2DModel.from_config(_json(folder, "unet", "config.json")).config
  assert {k: v for k, v in rebuilt.items() if not k.startswith("_")} == \
      {k: v for k, v in unet_config.items() if not k.startswith("_")}


@pytest.mark.parametrize("variant", ["sd2"])
def test_text_pipeline_saves_a_stable_diffusion_folder_with_the_same_parts(variant, tmp_path,
                                                                           torch_one_thread):  # pylint: disable=unused-argument
  """A Stable Diffusion folder loaded by from_pretrained and saved again: diffusers'
  StableDiffusionPipeline loads the copy, and every part equals the original's (tokenizer ids,
  text encoder outputs, UNet / VAE weights, the scheduler's grid and alphas), so its images are
  the original's, which test_sd_parity checks against this pipeline's."""
  import sd_refs  # pylint: disable=import-outside-toplevel
  folder, reference = sd_refs.tiny_sd_pipeline(tmp_path, variant)
  pipe = LatentDiffusionPipeline.from_pretrained(folder, max_batch=4)
  saved = pipe.save_pretrained(str(tmp_path / "saved"))
  copy = diffusers.StableDiffusionPipeline.from_pretrained(saved)
  prompts = ["a photo of a cat", "An astronaut riding a horse on Mars, 4k!"]
  _assert_same_text_pipeline(reference, copy, pipe, saved, prompts, "text_encoder", ("unet", "vae"))
  assert copy.vae.config.scaling_factor == pytest.approx(reference.vae.config.scaling_factor)
  for name in ("prediction_type", "timestep_spacing", "steps_offset", "set_alpha_to_one",
               "clip_sample"):
    assert copy.scheduler.config[name] == reference.scheduler.config[name], name


def test_ldm_txt2img_pipeline_saves_an_ldm_text_to_image_folder_with_the_same_parts(tmp_path,
                                                                                    torch_one_thread):  # pylint: disable=unused-argument
  """LDM's txt2img folder (WordPiece tokenizer, LDMBert) loaded and saved again: diffusers'
  LDMTextToImagePipeline loads the copy with the original's token ids, BERT context, UNet / VQ-VAE
  weights and schedule, and from_pretrained of the copy gives the same prompt contexts."""
  import sd_refs  # pylint: disable=import-outside-toplevel
  folder, reference = sd_refs.tiny_ldm_txt2img_pipeline(tmp_path)
  pipe = LatentDiffusionPipeline.from_pretrained(folder, max_batch=4)
  saved = pipe.save_pretrained(str(tmp_path / "saved"))
  assert _json(saved, "model_index.json")["_class_name"] == "LDMTextToImagePipeline"
  copy = diffusers.LDMTextToImagePipeline.from_pretrained(saved)
  prompts = ["a photo of a cat", "A Red house on MARS!"]
  _assert_same_text_pipeline(reference, copy, pipe, saved, prompts, "bert", ("unet", "vqvae"))


def _assert_same_text_pipeline(reference, copy, pipe, saved, prompts, encoder, parts):
  """diffusers' `copy` of the saved folder equals `reference` part for part (token ids, the text
  encoder's context, the weights of `parts`, the schedule), and ldm_jax reads the folder back with
  `pipe`'s settings and prompt contexts."""
  ids = [p.tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt").input_ids for p in (reference, copy)]
  torch.testing.assert_close(ids[1], ids[0], rtol=0, atol=0)  # SD 2.x pads with "!" (id 0)
  with torch.no_grad():
    torch.testing.assert_close(getattr(copy, encoder)(ids[0])[0],
                               getattr(reference, encoder)(ids[0])[0], rtol=0, atol=0)
  for part in parts:
    want, got = getattr(reference, part).state_dict(), getattr(copy, part).state_dict()
    assert sorted(got) == sorted(want), part
    for k, v in want.items():
      torch.testing.assert_close(got[k], v, rtol=0, atol=0)
  np.testing.assert_allclose(copy.scheduler.alphas_cumprod, reference.scheduler.alphas_cumprod,
                             rtol=1e-6)
  # And back into ldm_jax: the same settings and the same prompt contexts.
  loaded = LatentDiffusionPipeline.from_pretrained(saved, max_batch=4)
  for name in ("scale_factor", "latent_shape", "prediction_type", "sampler_grid", "defaults"):
    assert getattr(loaded, name) == getattr(pipe, name), name
  np.testing.assert_array_equal(loaded.encode_prompt(prompts), pipe.encode_prompt(prompts))
