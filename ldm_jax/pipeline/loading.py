"""Where a pipeline's networks come from: a run of this project (`<workdir>/export`) or a diffusers
pipeline folder (`model_index.json`; `unet/`, `vae/` or `vqvae/`, `scheduler/`, and `tokenizer/`
with `text_encoder/` (Stable Diffusion) or `bert/` (LDM txt2img)). Original single files: see
`single_file.py`.

Each returns the keyword arguments of `LatentDiffusionPipeline.__init__`, including the sampling
`defaults`: a run's own `config.sample` settings, or the folder's scheduler class (its method)
and, for text-to-image folders, the diffusers pipeline's own defaults (StableDiffusionPipeline:
50 steps, w = 7.5; LDMTextToImagePipeline: 50 steps, w = 1; LDMSuperResolutionPipeline: 100
steps, w = 1; StableDiffusionUpscalePipeline: 75 steps, w = 9).
"""

import json
import os

import jax
import jax.numpy as jnp

from ldm_jax import schedules
from ldm_jax.data.preprocess import image_hw
from ldm_jax.diffusion import concat
from ldm_jax.pipeline import scheduler_config as sched_lib
from ldm_jax.stages import builders
from ldm_jax.stages import export

# diffusers beta_schedule -> ldm_jax.schedules name.
DIFFUSERS_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
                       "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}
# The scheduler of folders without one: LDM / SD's scaled_linear 0.00085..0.012, leading grids.
LDM_SCHEDULER = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                 "timestep_spacing": "leading"}
# The __call__ defaults of diffusers' text-to-image pipelines (model_index.json's _class_name);
# other text folders (StableDiffusionImg2ImgPipeline, ...) take StableDiffusionPipeline's.
TEXT_TO_IMAGE_DEFAULTS = {"StableDiffusionPipeline": {"num_steps": 50, "guidance_scale": 7.5},
                          "StableDiffusionInpaintPipeline": {"num_steps": 50, "guidance_scale": 7.5},
                          "LDMTextToImagePipeline": {"num_steps": 50, "guidance_scale": 1.0},
                          "StableDiffusionUpscalePipeline": {"num_steps": 75,
                                                             "guidance_scale": 9.0}}
# The degradation recorded for a UNet reading [z_t, mask, masked-image latents] (2 C + 1 channels
# for C latent channels: SD-inpainting's 9 = 4 + 1 + 4): its "mask" kind makes `inpaint` take the
# trained path (SD-inpainting was trained on LaMa-style large masks too).
INPAINTING_DEGRADATION = "inpaint_large_masks"
# The degradation recorded for a UNet reading [z_t, low-res image] (C + C channels on an f = 4
# autoencoder with C = 3 image and latent channels: LDMSuperResolutionPipeline's 6 = 3 + 3): its
# "image" kind and factor 4 make `upscale` take low-res images at 1/4 of the image size, which is
# the latent size, concatenated as they are. (It names how this project trains such models; the
# CompVis 4x model was trained on other degradations, which only training would see.)
SUPER_RESOLUTION_DEGRADATION = "bicubic_x4"
# LDMSuperResolutionPipeline.__call__'s defaults (100 steps, eta 0, no guidance).
SUPER_RESOLUTION_DEFAULTS = {"num_steps": 100, "guidance_scale": 1.0}
# StableDiffusionUpscalePipeline decodes latents / 0.08333, whatever the VAE config says (its
# __init__ overwrites any other scaling_factor).
UPSCALER_SCALING_FACTOR = 0.08333
LOW_RES_INPUT_KEY = "_ldm_jax_low_res_input"  # model_index.json: `save_pretrained`'s record
DEFAULT_NOISE_LEVEL_KEY = "_ldm_jax_default_noise_level"  # the same, of noise_augmentation
VAE_FOLDERS = ("vae", "vqvae")  # StableDiffusionPipeline / LDMPipeline and LDMTextToImagePipeline
TEXT_FOLDERS = ("text_encoder", "bert")


def first_stage_dir(workdir: str, metadata: dict, first_stage_workdir: str | None = None) -> str:
  """Where the first stage of an LDM run is: `first_stage_workdir` when given, else the path the
  run recorded, relative to the LDM run (so the two runs can move together), else the absolute
  path it had at training time."""
  if first_stage_workdir is not None:
    if not os.path.isdir(os.path.join(first_stage_workdir, export.EXPORT_DIR)):
      raise ValueError(f"first_stage_workdir={first_stage_workdir!r} holds no autoencoder export "
                       f"({export.EXPORT_DIR}/ is missing).")
    return first_stage_workdir
  recorded = metadata.get("first_stage_workdir", "")
  tried = [os.path.normpath(os.path.join(workdir, recorded))]  # relative paths (since 2026-12)
  if metadata.get("first_stage_workdir_absolute"):
    tried.append(metadata["first_stage_workdir_absolute"])
  for path in tried:
    if os.path.isdir(os.path.join(path, export.EXPORT_DIR)):
      return path
  raise ValueError(f"The first stage of {workdir} is not where the run recorded it (tried "
                   f"{', '.join(map(repr, tried))}); move the two runs together, or pass "
                   "first_stage_workdir=<the autoencoder run>.")


def from_workdir(workdir: str, use_ema: bool = True, first_stage_workdir: str | None = None) -> dict:
  """A latent diffusion run of this project (EMA weights by default) and its first stage
  (`first_stage_dir`)."""
  config, params, metadata = export.load(workdir, use_ema=use_ema)
  if metadata.get("stage") != "latent_diffusion":
    raise ValueError(f"{workdir} holds a {metadata.get('stage')!r} export, not a latent diffusion model.")
  ae_dir = first_stage_dir(workdir, metadata, first_stage_workdir)
  ae, ae_params, _ = export.load_first_stage(ae_dir, config.first_stage.use_ema)
  d = config.diffusion
  hybrid = d.conditioning == "concat" and config.concat.get("class_labels", False)
  num_classes = d.num_classes if d.conditioning == "class" or hybrid else None
  channels, f = ae.latent_channels, ae.downsampling_factor
  prompt_encoder = None
  if d.conditioning == "text":
    prompt_encoder = run_prompt_encoder(workdir, config, params["text_encoder"])
    params = params["unet"]
  # LDM-SR: the UNet reads [z_t, c], c the degradation of config.concat on the latent grid;
  # inpainting: [z_t, m, masked-image latents].
  degradation = config.concat.degradation if d.conditioning == "concat" else None
  unet = builders.unet(config.model, in_channels=channels,
                       num_class_embeds=None if num_classes is None else num_classes + 1,
                       context_dim=None if prompt_encoder is None else prompt_encoder.module.width,
                       concat_channels=concat.concat_channels(degradation, ae.in_channels, channels)
                       if degradation else 0)
  h, w = image_hw(config.data.image_size)
  return dict(unet=unet, unet_params=jax.tree.map(jnp.asarray, params), autoencoder=ae,
              ae_params=ae_params, schedule=builders.schedule(d),
              scale_factor=metadata["latent_scale_factor"], prediction_type=d.prediction_type,
              num_classes=num_classes, defaults=run_defaults(config),
              latent_shape=(h // f, w // f, channels), prompt_encoder=prompt_encoder,
              concat_degradation=degradation)


def run_prompt_encoder(workdir: str, config, params):
  """The `ldm_jax.text.PromptEncoder` of a text run: the tokenizer its export saved
  (tokenizer.json) and the encoder its `text` section describes, with the exported params."""
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  from ldm_jax.text.prompts import PromptEncoder  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, export.EXPORT_DIR, "tokenizer.json")
  if not os.path.exists(path):
    raise ValueError(f"{workdir} is a text-conditioned run but its export has no tokenizer.json.")
  tokenizer = Tokenizer.from_file(path)
  if config.text.pretrained:  # the architecture is the folder's
    _, module, _ = builders.text_conditioner(config.text, load_weights=False)
  else:
    module = builders.text_encoder(config.text, vocab_size=tokenizer.get_vocab_size(),
                                   max_length=tokenizer.padding["length"])
  return PromptEncoder(tokenizer, module, jax.device_put(jax.tree.map(jnp.asarray, params)))


def run_defaults(config) -> dict:
  """The sampling settings of a run's `sample` section (method, num_steps, guidance_scale): what
  its own sample grids used, so `pipe.sample(rng, n, labels=...)` matches them."""
  section = config.get("sample") or {}
  return {k: section.get(k) for k in ("method", "num_steps", "guidance_scale")}


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


def pipeline_components(path: str) -> tuple[set, str | None]:
  """(component folders, pipeline class) of a diffusers pipeline folder: the folders that
  model_index.json names (entries saved as None, e.g. safety_checker, skipped), each checked to
  exist, and its _class_name; without model_index.json, the sub-folders present and None."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"diffusers pipeline folder {path!r} does not exist.")
  present = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
  index_file = os.path.join(path, "model_index.json")
  if not os.path.exists(index_file):
    return set(present), None
  index = _read_json(index_file)
  listed = {k for k, v in index.items()
            if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None}
  missing = sorted(listed - set(present))
  if missing:
    raise FileNotFoundError(f"{path!r}: model_index.json lists {', '.join(missing)} but the folder "
                            f"has no {', '.join(m + '/' for m in missing)}; found: {present}.")
  return listed, index.get("_class_name")


def _saved(path: str, key: str, default):
  """model_index.json's entry `key` (one `save_pretrained` recorded), else default."""
  index_file = os.path.join(path, "model_index.json")
  if not os.path.exists(index_file):
    return default
  return _read_json(index_file).get(key, default)


def saved_sampling_defaults(path: str) -> dict:
  """The num_steps / guidance_scale that `save_pretrained` recorded in model_index.json ({})."""
  return _saved(path, "_ldm_jax_sampling_defaults", {})


def _scheduler(path, components, overrides):
  """(schedule, prediction_type, grid, default method) from scheduler/ (or LDM_SCHEDULER)."""
  sched_file = os.path.join(path, "scheduler", "scheduler_config.json")
  config = _read_json(sched_file) if "scheduler" in components and os.path.exists(sched_file) \
      else dict(LDM_SCHEDULER)
  config.update(overrides or {})
  schedule, prediction_type = schedule_from_diffusers(config)
  return (schedule, prediction_type, sched_lib.grid_from_diffusers(config),
          sched_lib.default_method(config))


def _prompt_encoder(path, components, unet):
  """The text encoder of a text-to-image folder (None without one), checked against the UNet."""
  if not components & set(TEXT_FOLDERS):
    return None
  from ldm_jax import text  # pylint: disable=import-outside-toplevel
  if "tokenizer" not in components:
    found = ", ".join(f + "/" for f in sorted(components & set(TEXT_FOLDERS)))
    raise FileNotFoundError(f"{path!r} has a text encoder ({found}) but no tokenizer/ folder.")
  encoder = text.load_prompt_encoder(path)
  if encoder.module.width != unet.cross_attention_dim:
    raise ValueError(f"{path!r}: the text encoder's width {encoder.module.width} does not match the "
                     f"UNet's cross_attention_dim {unet.cross_attention_dim}.")
  return encoder


def from_pretrained(path: str, num_classes: int | None = None,
                    scheduler_config: dict | None = None) -> dict:
  """A diffusers pipeline folder (see the module docstring): the UNet and autoencoder through
  `ldm_jax.convert.load_diffusers`, the text encoder and tokenizer through
  `ldm_jax.text.load_prompt_encoder`, the schedule, prediction type (epsilon, v_prediction, ...)
  and timestep grid (`scheduler_config.grid_from_diffusers`) from scheduler/scheduler_config.json
  (default: LDM_SCHEDULER) updated by `scheduler_config`.

  The latent scale factor is the VAE config's scaling_factor (and shift_factor). A class-conditional
  UNet (num_class_embeds = K + 1) is taken to have K classes with the null label K, unless
  `num_classes` says otherwise. A UNet reading 2 C + 1 channels for the autoencoder's C latent
  channels (StableDiffusionInpaintPipeline: 9) is an inpainting model (`unet_concat_kind`):
  concat_degradation INPAINTING_DEGRADATION, and with a text encoder diffusers' guidance
  (inpainting_null "unchanged": c in both branches, the prompt against the negative prompt)
  unless `save_pretrained` recorded another rule. A UNet reading 2 C channels on an f = 4
  autoencoder with C = 3 latent and image channels (LDMSuperResolutionPipeline: 6) is a
  super-resolution model: concat_degradation SUPER_RESOLUTION_DEGRADATION, `upscale` taking the
  low-res image at the latent size concatenated as it is ([z_t, image], diffusers' order), scale
  factor 1 (that pipeline decodes its latents as they are, whatever vqvae's scaling_factor says),
  LDMSuperResolutionPipeline's defaults (100 steps, no guidance) and low_res_input "diffusers"
  (its Lanczos resize of larger uint8 images, `low_res`) unless `save_pretrained` recorded "exact".
  A UNet reading C + C_x channels with class embeddings and cross-attention, on an f = 4 autoencoder
  with a text encoder (StableDiffusionUpscalePipeline, the SD x4 upscaler: 7 = 4 + 3) is a
  noise-augmented super-resolution model: the same degradation, `upscale` taking prompts and the
  low-res image noised to a level s by low_res_scheduler/'s schedule, s the UNet's class label
  (`noise_augmentation`, max_noise_level from model_index.json), scale factor 0.08333 (the
  pipeline's, whatever the VAE config says), low_res_input "exact" (diffusers resizes only images
  whose sides are not multiples of 4, which are not the latent size), that pipeline's defaults
  (75 steps, w = 9).
  """
  from ldm_jax import convert  # pylint: disable=import-outside-toplevel
  components, pipeline_class = pipeline_components(path)
  vae_folder = next((d for d in VAE_FOLDERS if d in components), None)
  missing = [d + "/" for d, ok in (("unet", "unet" in components),
                                   (" or ".join(VAE_FOLDERS), vae_folder)) if not ok]
  if missing:
    raise ValueError(f"{path!r} is not a diffusers pipeline folder: missing {', '.join(missing)} "
                     f"(expected unet/, vae/ or vqvae/, optionally scheduler/, and tokenizer/ + "
                     f"text_encoder/ or bert/ for text-to-image); found: {sorted(components)}.")
  unet, unet_params = convert.load_diffusers(os.path.join(path, "unet"))
  ae, ae_params = convert.load_diffusers(os.path.join(path, vae_folder))
  schedule, prediction_type, grid, method = _scheduler(path, components, scheduler_config)
  prompt_encoder = _prompt_encoder(path, components, unet)
  size = _read_json(os.path.join(path, "unet", "config.json")).get("sample_size", 32)
  size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
  if num_classes is None and unet.num_class_embeds is not None:
    num_classes = unet.num_class_embeds - 1
  kind = unet_concat_kind(repr(path), unet, ae)
  inpainting, super_resolution = kind == "mask", kind in ("image", "noisy_image")
  augmentation = None
  if super_resolution:
    _check_super_resolution(path, ae, prompt_encoder, kind)
  if kind == "noisy_image":
    augmentation = _noise_augmentation(path, components)
    num_classes = None  # the class labels are noise levels
  text_defaults = TEXT_TO_IMAGE_DEFAULTS.get(pipeline_class,
                                             TEXT_TO_IMAGE_DEFAULTS["StableDiffusionPipeline"])
  defaults = {"method": method, **(text_defaults if prompt_encoder else {}),
              **(SUPER_RESOLUTION_DEFAULTS if kind == "image" else {}),
              **saved_sampling_defaults(path)}
  degradation = (INPAINTING_DEGRADATION if inpainting else
                 SUPER_RESOLUTION_DEGRADATION if super_resolution else None)
  # LDMSuperResolutionPipeline decodes its latents as they are: no scaling_factor;
  # StableDiffusionUpscalePipeline decodes latents / 0.08333.
  scale, shift = ((UPSCALER_SCALING_FACTOR, 0.0) if augmentation else (1.0, 0.0)
                  if super_resolution else (ae.scaling_factor, ae.shift_factor))
  return dict(unet=unet, unet_params=unet_params, autoencoder=ae, ae_params=ae_params,
              schedule=schedule, scale_factor=scale, shift_factor=shift,
              prediction_type=prediction_type, num_classes=num_classes,
              latent_shape=(*size, ae.latent_channels), prompt_encoder=prompt_encoder,
              sampler_grid=grid, defaults=defaults, concat_degradation=degradation,
              low_res_input=_saved(path, LOW_RES_INPUT_KEY, "diffusers")
              if kind == "image" else "exact", noise_augmentation=augmentation,
              inpainting_null=_saved(path, "_ldm_jax_inpainting_null",
                                     "unchanged" if inpainting and prompt_encoder else
                                     "fully_masked"))


def _noise_augmentation(path, components):
  """The NoiseAugmentation of a StableDiffusionUpscalePipeline folder: low_res_scheduler/'s
  schedule (its DDPMScheduler's add_noise), model_index.json's max_noise_level (350 where
  absent, the pipeline's __init__ default) and the default level `save_pretrained` recorded
  (else 20, the pipeline's __call__ default)."""
  from ldm_jax.pipeline import noise_augmentation  # pylint: disable=import-outside-toplevel
  sched_file = os.path.join(path, "low_res_scheduler", "scheduler_config.json")
  if "low_res_scheduler" not in components or not os.path.exists(sched_file):
    raise FileNotFoundError(f"{path!r}: the UNet reads [z_t, noised low-res image] with the noise "
                            "level as class label (StableDiffusionUpscalePipeline), which needs "
                            "low_res_scheduler/scheduler_config.json (the low-res noise schedule).")
  schedule, _ = schedule_from_diffusers(_read_json(sched_file))
  return noise_augmentation.NoiseAugmentation(
      schedule, int(_saved(path, "max_noise_level", noise_augmentation.MAX_LEVEL)),
      int(_saved(path, DEFAULT_NOISE_LEVEL_KEY, noise_augmentation.DEFAULT_LEVEL)))


def _check_super_resolution(path, ae, prompt_encoder, kind):
  """A [z_t, low-res image] UNet needs the low-res image on the latent grid (f = the degradation's
  factor, 4); "image" (LDMSuperResolutionPipeline) has no text encoder, "noisy_image"
  (StableDiffusionUpscalePipeline) needs one."""
  factor = concat.get_degradation(SUPER_RESOLUTION_DEGRADATION).factor
  if ae.downsampling_factor != factor:
    raise ValueError(f"{path!r}: the UNet reads [z_t, low-res image] (super-resolution), which "
                     f"needs an autoencoder with f = {factor} (the low-res image at the latent "
                     f"resolution, x{factor} upscaling); this one has f = "
                     f"{ae.downsampling_factor}.")
  if kind == "image" and prompt_encoder is not None:
    raise ValueError(f"{path!r}: a super-resolution UNet ([z_t, low-res image]) with a text "
                     "encoder is not supported (diffusers' LDMSuperResolutionPipeline has none).")
  if kind == "noisy_image" and prompt_encoder is None:
    raise ValueError(f"{path!r}: the UNet reads [z_t, noised low-res image] and cross-attends "
                     "(StableDiffusionUpscalePipeline), but the folder has no tokenizer/ and "
                     "text_encoder/.")


def unet_concat_kind(source: str, unet, ae) -> str | None:
  """What the UNet reads besides z_t, from its channel counts and the autoencoder's C latent and
  C_x image channels: None (in_channels C: z_t alone), "mask" (2 C + 1: inpainting, [z_t, mask,
  masked-image latents], SD-inpainting's 9 = 4 + 1 + 4), "image" (2 C with C_x = C:
  super-resolution, [z_t, low-res image], LDMSuperResolutionPipeline's 6 = 3 + 3; diffusers reads
  the latent channels as in_channels // 2) or "noisy_image" (C + C_x on a UNet with class
  embeddings and cross-attention: [z_t, noised low-res image], the noise level its class label,
  StableDiffusionUpscalePipeline's 7 = 4 + 3). Other counts are refused, the error naming
  `source` (the folder, the checkpoint) and the supported counts."""
  c, image = ae.latent_channels, ae.in_channels
  kinds = {c: None, 2 * c + 1: "mask"}
  supported = f"in_channels {c} (z_t) or {2 * c + 1} (inpainting: [z_t, mask, masked-image " \
              f"latents] = {c} + 1 + {c})"
  if image == c:
    kinds[2 * c] = "image"
    supported += f" or {2 * c} (super-resolution: [z_t, low-res image] = {c} + {image})"
  augmented = (getattr(unet, "num_class_embeds", None) is not None
               and getattr(unet, "has_cross_attention", False))
  if augmented:
    kinds[c + image] = "noisy_image"
  supported += (f" or {c + image} with class embeddings and cross-attention (noise-augmented "
                f"super-resolution: [z_t, noised low-res image] = {c} + {image}, the noise level "
                f"the class label)")
  if unet.out_channels != c or unet.in_channels not in kinds:
    raise ValueError(f"{source}: the UNet reads {unet.in_channels} and predicts "
                     f"{unet.out_channels} channels, but the autoencoder has {c} latent (and "
                     f"{image} image) channels; supported: {supported}, with out_channels {c}.")
  return kinds[unet.in_channels]
