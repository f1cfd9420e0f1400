"""Original Stable Diffusion 1.x / 2.x single-file checkpoints (.ckpt / .safetensors) as pipeline
arguments: UNet and autoencoder (`convert.load_ldm_checkpoint`), text encoder and tokenizer
(`text.prompt_encoder_from_checkpoint`), and SD's DDIM scheduler.

v1 or v2 is read from the text encoder inside the file, the one part that differs in layout:
``cond_stage_model.transformer.text_model.*`` (CLIP ViT-L/14, SD 1.x) or
``cond_stage_model.model.*`` (OpenCLIP ViT-H/14, SD 2.x); `version="v1"` / `"v2"` asserts it.
The prediction type is not visible in the weights: SD 2.0-v / 2.1 (768 px) predict v, SD 2.x-base
(512 px) and SD 1.x predict eps. It comes from `prediction_type`, else the LDM yaml `config`
(``parameterization: "v"``), else v_prediction for v2 and epsilon for v1 and for inpainting
checkpoints (SD 2.0's 512-inpainting-ema predicts eps).

Inpainting checkpoints (sd-v1-5-inpainting, 512-inpainting-ema: a UNet reading 9 = 4 + 1 + 4
channels, [z_t, mask, masked-image latents]) load as `loading.from_pretrained` loads diffusers'
StableDiffusionInpaintPipeline folders: `inpaint` takes the trained path with diffusers' guidance.
"""

from collections.abc import Mapping

import numpy as np

from ldm_jax.diffusion.parameterization import PREDICTION_TYPES
from ldm_jax.pipeline import loading
from ldm_jax.pipeline import scheduler_config as sched_lib

VERSIONS = {"v1": "sd1_clip", "v2": "sd2_openclip"}  # version -> text encoder layout
# SD's sampling schedule (configs/stable-diffusion/v1-inference.yaml; diffusers' SD scheduler).
SD_SCHEDULER = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
                "steps_offset": 1, "set_alpha_to_one": False, "timestep_spacing": "leading",
                "clip_sample": False}
# SD's txt2img.py defaults: DDIM, 50 steps, scale 7.5.
SD_DEFAULTS = {"method": "ddim", "num_steps": 50, "guidance_scale": 7.5}
# Latent size of the released models: 512 px (v1, v2-base) and 768 px (v2 v-prediction).
LATENT_SIZES = {"epsilon": 64, "v_prediction": 96}


def sd_version(state_dict, version=None) -> str:
  """ "v1" or "v2" from the checkpoint's text encoder layout; `version` (if given) must agree."""
  from ldm_jax.convert import text_checkpoint  # pylint: disable=import-outside-toplevel
  if version is not None and version not in VERSIONS:
    raise ValueError(f"Unknown Stable Diffusion version {version!r}; valid choices: "
                     f"{', '.join(VERSIONS)}.")
  layout = text_checkpoint.text_encoder_layout(state_dict)
  detected = {v: k for k, v in VERSIONS.items()}.get(layout)
  if detected is None:
    raise ValueError(f"the checkpoint's text encoder is {layout!r}, not a Stable Diffusion one "
                     f"({', '.join(VERSIONS.values())}); load LDM txt2img models from a diffusers "
                     "folder with from_pretrained.")
  if version is not None and version != detected:
    raise ValueError(f"version={version!r}, but the checkpoint's text encoder is {layout!r} "
                     f"(Stable Diffusion {detected}).")
  return detected


def _refuse_text_free(state_dict):
  """LDM checkpoints without a text encoder (LDM-SR's UNet reading [z_t, low-res image] = 3 + 3
  channels, unconditional and class-conditional models) have no single-file loader here."""
  if any(k.startswith("cond_stage_model.") for k in state_dict):
    return
  conv = state_dict.get("model.diffusion_model.input_blocks.0.0.weight")
  reads = "" if conv is None else f" (its UNet reads {np.shape(conv)[1]} channels)"
  raise ValueError(f"the checkpoint has no text encoder (no cond_stage_model.* keys){reads}: it "
                   "is not a Stable Diffusion file. from_single_file loads SD 1.x / 2.x "
                   "text-to-image and inpainting files; load LDM super-resolution models "
                   "([z_t, low-res image]) and unconditional or class-conditional LDMs from "
                   "diffusers folders (LDMSuperResolutionPipeline, LDMPipeline) with "
                   "from_pretrained.")


def _prediction_type(version, prediction_type, ldm_config, inpainting=False):
  if prediction_type is not None:
    if prediction_type not in PREDICTION_TYPES:
      raise ValueError(f"Unknown prediction_type {prediction_type!r}; valid choices: "
                       f"{', '.join(PREDICTION_TYPES)}.")
    return prediction_type
  if ldm_config:
    return "v_prediction" if ldm_config.get("parameterization") == "v" else "epsilon"
  return "v_prediction" if version == "v2" and not inpainting else "epsilon"


def _scheduler_config(ldm_config):
  """SD_SCHEDULER with the yaml's linear_start / linear_end / timesteps, if given."""
  return {**SD_SCHEDULER, **{k: ldm_config[src] for k, src in
                             (("beta_start", "linear_start"), ("beta_end", "linear_end"),
                              ("num_train_timesteps", "timesteps")) if src in ldm_config}}


def from_single_file(path, *, version=None, prediction_type=None, config=None) -> dict:
  """`LatentDiffusionPipeline.__init__` arguments of an SD 1.x / 2.x file (or its state dict).

  version: None (detect), "v1" or "v2". prediction_type: None (see the module docstring),
  "epsilon" or "v_prediction". config: the LDM yaml (path or dict), optional.
  """
  from ldm_jax import convert, text  # pylint: disable=import-outside-toplevel
  from ldm_jax.convert import ldm_checkpoint  # pylint: disable=import-outside-toplevel
  state_dict = path if isinstance(path, Mapping) else ldm_checkpoint.read_state_dict(path)
  _refuse_text_free(state_dict)
  version = sd_version(state_dict, version)
  ldm_config = ldm_checkpoint.read_ldm_config(config)
  ckpt = convert.load_ldm_checkpoint(state_dict, config)
  kind = loading.unet_concat_kind("the checkpoint", ckpt.unet, ckpt.vae)
  if kind in ("image", "noisy_image"):
    raise ValueError("the checkpoint's UNet reads [z_t, low-res image] (super-resolution); "
                     "single files load Stable Diffusion text-to-image and inpainting models "
                     "only: load super-resolution models from a diffusers "
                     "LDMSuperResolutionPipeline or StableDiffusionUpscalePipeline folder with "
                     "from_pretrained.")
  inpainting = kind == "mask"
  prediction_type = _prediction_type(version, prediction_type, ldm_config, inpainting)
  sched = _scheduler_config(ldm_config)
  schedule, _ = loading.schedule_from_diffusers(sched)
  encoder = text.prompt_encoder_from_checkpoint(state_dict)
  size = LATENT_SIZES.get(prediction_type, 64)
  return dict(unet=ckpt.unet, unet_params=ckpt.unet_params, autoencoder=ckpt.vae,
              ae_params=ckpt.vae_params, schedule=schedule, scale_factor=ckpt.scale_factor,
              prediction_type=prediction_type, latent_shape=(size, size, ckpt.vae.latent_channels),
              prompt_encoder=encoder, sampler_grid=sched_lib.grid_from_diffusers(sched),
              defaults=SD_DEFAULTS,
              concat_degradation=loading.INPAINTING_DEGRADATION if inpainting else None,
              inpainting_null="unchanged" if inpainting else "fully_masked")
