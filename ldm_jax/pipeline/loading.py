"""Where a pipeline's networks come from: a run of this project (`<workdir>/export`) or a diffusers
folder (model_index-style: `unet/`, `vae/`, optional `scheduler/scheduler_config.json`).

Both return the keyword arguments of `LatentDiffusionPipeline.__init__`.
"""

import json
import os

import jax
import jax.numpy as jnp

from ldm_jax import schedules
from ldm_jax.stages import builders
from ldm_jax.stages import export

# diffusers beta_schedule -> ldm_jax.schedules name.
DIFFUSERS_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
                       "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}


def latent_channels(ae):
  return getattr(ae, "code_dim", ae.z_channels)


def from_workdir(workdir: str, use_ema: bool = True) -> dict:
  """A latent diffusion run of this project (EMA weights by default) and its first stage."""
  from ldm_jax.stages import run  # pylint: disable=import-outside-toplevel
  config, params, metadata = export.load(workdir, use_ema=use_ema)
  if metadata.get("stage") != "latent_diffusion":
    raise ValueError(f"{workdir} holds a {metadata.get('stage')!r} export, not a latent diffusion model.")
  ae, ae_params, _ = run.load_first_stage(metadata["first_stage_workdir"], config.first_stage.use_ema)
  d = config.diffusion
  num_classes = d.num_classes if d.conditioning == "class" else None
  channels, f = latent_channels(ae), ae.downsampling_factor
  unet = builders.unet(config.model, in_channels=channels,
                       num_class_embeds=None if num_classes is None else num_classes + 1)
  return dict(unet=unet, unet_params=jax.tree.map(jnp.asarray, params), autoencoder=ae,
              ae_params=ae_params, schedule=builders.schedule(d),
              scale_factor=metadata["latent_scale_factor"], prediction_type=d.prediction_type,
              num_classes=num_classes,
              latent_shape=(config.data.image_size // f, config.data.image_size // f, channels))


def _read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def schedule_from_diffusers(config: dict) -> tuple[schedules.Schedule, str]:
  """(Schedule, prediction_type) from a diffusers scheduler_config.json dict."""
  name = config.get("beta_schedule", "linear")
  if name not in DIFFUSERS_SCHEDULES:
    raise ValueError(f"Unsupported diffusers beta_schedule {name!r}; supported: {', '.join(DIFFUSERS_SCHEDULES)}.")
  if config.get("trained_betas") is not None:
    s = schedules.from_betas(jnp.asarray(config["trained_betas"], jnp.float32))
  elif name == "squaredcos_cap_v2":
    s = schedules.get_schedule("cosine", int(config.get("num_train_timesteps", 1000)))
  else:
    s = schedules.get_schedule(DIFFUSERS_SCHEDULES[name], int(config.get("num_train_timesteps", 1000)),
                               beta_start=config.get("beta_start", 0.0001),
                               beta_end=config.get("beta_end", 0.02))
  if config.get("rescale_betas_zero_snr", False):
    s = schedules.rescale_zero_terminal_snr(s)
  return s, config.get("prediction_type", "epsilon")


def from_pretrained(path: str, num_classes: int | None = None) -> dict:
  """A diffusers pipeline folder: `unet/` and `vae/` model folders (read by
  `ldm_jax.convert.load_diffusers`) and `scheduler/scheduler_config.json` (default: LDM's
  scaled_linear 0.00085..0.012 schedule, epsilon prediction).

  The latent scale factor is the VAE config's scaling_factor (and shift_factor). A class-conditional
  UNet (num_class_embeds = K + 1) is taken to have K classes with the null label K, unless
  `num_classes` says otherwise.
  """
  from ldm_jax import convert  # pylint: disable=import-outside-toplevel
  missing = [d for d in ("unet", "vae") if not os.path.isdir(os.path.join(path, d))]
  if missing:
    raise ValueError(f"{path!r} is not a diffusers pipeline folder: missing {', '.join(missing)}/ "
                     f"(expected unet/, vae/ and optionally scheduler/).")
  unet, unet_params = convert.load_diffusers(os.path.join(path, "unet"))
  ae, ae_params = convert.load_diffusers(os.path.join(path, "vae"))
  sched_file = os.path.join(path, "scheduler", "scheduler_config.json")
  sched_config = (_read_json(sched_file) if os.path.exists(sched_file) else
                  {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})
  schedule, prediction_type = schedule_from_diffusers(sched_config)
  size = _read_json(os.path.join(path, "unet", "config.json")).get("sample_size", 32)
  size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
  if num_classes is None and unet.num_class_embeds is not None:
    num_classes = unet.num_class_embeds - 1
  return dict(unet=unet, unet_params=unet_params, autoencoder=ae, ae_params=ae_params,
              schedule=schedule, scale_factor=ae.scaling_factor, shift_factor=ae.shift_factor,
              prediction_type=prediction_type, num_classes=num_classes,
              latent_shape=(*size, unet.in_channels))
