"""A pipeline as a diffusers pipeline folder (`LatentDiffusionPipeline.save_pretrained`).

  folder/model_index.json        LDMPipeline: unet, vqvae, scheduler; with a CLIP text encoder
                                 StableDiffusionPipeline: unet, vae, scheduler, text_encoder,
                                 tokenizer (no safety checker); with LDM's BERT text encoder
                                 LDMTextToImagePipeline: unet, vqvae, scheduler, bert, tokenizer;
                                 a CLIP text inpainting model (UNet reading [z_t, mask,
                                 masked-image latents]) StableDiffusionInpaintPipeline, the same
                                 parts as StableDiffusionPipeline; a super-resolution model
                                 whose low-res image is on the latent grid (f = 4, C image =
                                 C latent channels) LDMSuperResolutionPipeline: unet, vqvae,
                                 scheduler; a noise-augmented one (the SD x4 upscaler, scale
                                 factor 0.08333) StableDiffusionUpscalePipeline: the
                                 StableDiffusionPipeline parts plus low_res_scheduler/ (a
                                 DDPMScheduler with the noise schedule's trained_betas) and
                                 max_noise_level
  folder/text_encoder/           transformers CLIPTextModel config + model.safetensors
  folder/bert/                   diffusers LDMBertModel config + model.safetensors
  folder/tokenizer/              CLIPTokenizer vocab.json, merges.txt, its pad token and length;
                                 or BertTokenizer vocab.txt, its lower-casing and length; or a
                                 word-level tokenizer (ldm_jax.text.word_level) as tokenizer.json
                                 (transformers PreTrainedTokenizerFast)
  folder/unet/                   UNet2DModel config (with sample_size = the latent size) + weights
  folder/vqvae/                  AutoencoderKL or VQModel, scaling_factor = the pipeline's latent
                                 scale factor (shift_factor too), sample_size = the image size
  folder/scheduler/              scheduler_config.json: the pipeline's training schedule
                                 (trained_betas, exact for every schedule), prediction_type, its
                                 sampler grid (scheduler_config.GRID_KEYS) and its default method's
                                 scheduler class (num_steps and guidance_scale: model_index.json)

diffusers' `DiffusionPipeline.from_pretrained(folder)` loads it (LDMPipeline divides the latents
by vqvae.config.scaling_factor before decoding, as this pipeline does), and
`LatentDiffusionPipeline.from_pretrained(folder)` reads it back with the same settings. A class-
conditional UNet keeps its class embedding (num_class_embeds = K + 1, the null label K); diffusers
has no pipeline class that passes labels, so drive its loop with `class_labels=`. An inpainting
model's `inpainting_null` is recorded in model_index.json for `from_pretrained`; diffusers' own
pipeline always guides with c in both branches ("unchanged"). A super-resolution model's latent
scale factor s is folded into its VQModel (`fold_scale`), because LDMSuperResolutionPipeline
decodes its latents as they are; its `low_res_input` is recorded. Other concat models (semantic
synthesis, super-resolution with class labels, f != 4 or a KL autoencoder with s != 1,
inpainting without a CLIP text encoder) have no diffusers pipeline class here and are refused.
"""

import json
import os

import numpy as np

from ldm_jax.pipeline import scheduler_config as sched_lib
from ldm_jax.text import saving as text_saving

DIFFUSERS_VERSION = "0.31.0"
# model_index.json entry (private to diffusers: a leading "_") with the sampling defaults that no
# diffusers file holds; the method is the scheduler's class.
SAMPLING_KEY = "_ldm_jax_sampling_defaults"
INPAINTING_NULL_KEY = "_ldm_jax_inpainting_null"  # an inpainting model's guidance rule
LOW_RES_INPUT_KEY = "_ldm_jax_low_res_input"  # a super-resolution model's low_res_input
DEFAULT_NOISE_LEVEL_KEY = "_ldm_jax_default_noise_level"  # noise_augmentation.default_level
UPSCALER_SCALING_FACTOR = 0.08333  # what StableDiffusionUpscalePipeline decodes with, always
# method -> the diffusers scheduler class written for it (SCHEDULER_METHODS inverted).
SCHEDULER_CLASSES = {m: c for c, m in sched_lib.SCHEDULER_METHODS.items()}
# Options of each class that diffusers defaults differently from the samplers (written explicitly).
_CLASS_OPTIONS = {
    "DDIMScheduler": {"clip_sample": False, "thresholding": False},
    "DDPMScheduler": {"clip_sample": False, "thresholding": False},
    "DPMSolverMultistepScheduler": {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                    "thresholding": False, "final_sigmas_type": "zero",
                                    "euler_at_final": False, "lower_order_final": True},
}


def _write_json(path, obj):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)


def _size(shape):
  """diffusers' sample_size: an int for square shapes, else [h, w]."""
  return int(shape[0]) if shape[0] == shape[1] else [int(shape[0]), int(shape[1])]


def scheduler_config(pipe) -> dict:
  """The diffusers scheduler config of a pipeline (see the module docstring)."""
  method = pipe.defaults["method"]
  cls = SCHEDULER_CLASSES.get(method, "DDIMScheduler")
  grid = pipe.sampler_grid
  betas = np.asarray(pipe.schedule.betas, np.float64)
  config = {"_class_name": cls, "_diffusers_version": DIFFUSERS_VERSION,
            "num_train_timesteps": int(betas.shape[0]), "beta_schedule": "linear",
            "beta_start": float(betas[0]), "beta_end": float(betas[-1]),
            "trained_betas": betas.tolist(), "prediction_type": pipe.prediction_type,
            "steps_offset": int(grid.get("steps_offset", 0)),
            "set_alpha_to_one": bool(grid.get("set_alpha_to_one", True)),
            "use_karras_sigmas": bool(grid.get("karras_sigmas", False)),
            "variance_type": grid.get("variance_type", "fixed_small"),
            **_CLASS_OPTIONS.get(cls, {})}
  spacing = grid.get("timestep_spacing", "leading")  # make_tables' default when not given
  if spacing is not None:  # None: each method's class default, i.e. the key left out
    config["timestep_spacing"] = spacing
  return config


def _check_super_resolution(pipe):
  """LDMSuperResolutionPipeline concatenates the low-res image itself to latents of its size and
  in_channels // 2 channels, with no labels or text: refuse models it would run otherwise."""
  low, latent = pipe.low_res_shape, pipe.latent_shape
  problems = []
  if low[:2] != latent[:2] or low[2] != latent[2]:
    problems.append(f"its low-res images {low} are not latent-sized with the latent channels "
                    f"{latent} (diffusers needs f = 4 and as many image as latent channels)")
  if pipe.num_classes is not None or pipe.text_conditioned:
    problems.append("it has class labels or a text encoder")
  if not hasattr(pipe.autoencoder, "num_embeddings") and (pipe.scale_factor, pipe.shift_factor) \
      != (1.0, 0.0):
    problems.append(f"its KL autoencoder's scale factor {pipe.scale_factor} (shift "
                    f"{pipe.shift_factor}) cannot be folded into the weights (VQModel's can)")
  if problems:
    raise ValueError("save_pretrained writes concat-conditioned super-resolution models as "
                     "diffusers' LDMSuperResolutionPipeline, which this one does not fit: "
                     + "; ".join(problems) + ". Use the run's export with "
                     "LatentDiffusionPipeline.from_workdir.")


def _check_upscaler(pipe, bert):
  """StableDiffusionUpscalePipeline concatenates the low-res image at the latent size, reads a
  CLIP text encoder and decodes latents / 0.08333 whatever the VAE says: refuse others."""
  low, latent = pipe.low_res_shape, pipe.latent_shape
  problems = []
  if low[:2] != latent[:2]:
    problems.append(f"its low-res images {low} are not latent-sized {latent} (f = 4)")
  if bert or pipe.num_classes is not None:
    problems.append("it has class labels or LDM's BERT text encoder (diffusers needs CLIP)")
  if (pipe.scale_factor, pipe.shift_factor) != (UPSCALER_SCALING_FACTOR, 0.0):
    problems.append(f"its latent scale factor {pipe.scale_factor} (shift {pipe.shift_factor}) "
                    f"is not the pipeline's fixed {UPSCALER_SCALING_FACTOR}")
  if problems:
    raise ValueError("save_pretrained writes noise-augmented super-resolution models as "
                     "diffusers' StableDiffusionUpscalePipeline, which this one does not fit: "
                     + "; ".join(problems) + ".")


def low_res_scheduler_config(schedule) -> dict:
  """The low_res_scheduler/ config of a noise-augmentation schedule: a DDPMScheduler whose
  add_noise uses exactly its betas (trained_betas)."""
  betas = np.asarray(schedule.betas, np.float64)
  return {"_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION,
          "num_train_timesteps": int(betas.shape[0]), "beta_schedule": "linear",
          "beta_start": float(betas[0]), "beta_end": float(betas[-1]),
          "trained_betas": betas.tolist(), **_CLASS_OPTIONS["DDPMScheduler"]}


def fold_scale(params, s):
  """VQModel params whose latents are the diffusion latents s z (LDMSuperResolutionPipeline
  decodes latents as they are): quant_conv's outputs and the codebook times s, post_quant_conv's
  kernel over s. Nearest codes are unchanged (|s z - s e| = s |z - e|), so decode(s z) of the
  result is decode(z) of the original."""
  scaled = lambda a, f: (np.asarray(a, np.float32) * f).astype(np.asarray(a).dtype)
  out = dict(params)
  out["quant_conv"] = {k: scaled(v, s) for k, v in params["quant_conv"].items()}
  out["post_quant_conv"] = {**params["post_quant_conv"],
                            "kernel": scaled(params["post_quant_conv"]["kernel"], 1.0 / s)}
  out["quantize"] = {"embedding": {"embedding": scaled(
      params["quantize"]["embedding"]["embedding"], s)}}
  return out


def save_pretrained(pipe, folder: str) -> str:
  """Writes `pipe` as a diffusers pipeline folder (module docstring); returns the folder."""
  from ldm_jax import convert  # pylint: disable=import-outside-toplevel
  text = pipe.prompt_encoder is not None
  bert = text and text_saving.is_bert(pipe.prompt_encoder)
  inpainting = pipe.inpainting_model
  if inpainting and (not text or bert or pipe.num_classes is not None):
    what = "class labels" if pipe.num_classes is not None else (
        "LDM's BERT text encoder" if bert else "no text encoder")
    raise ValueError(f"save_pretrained writes inpainting models as diffusers' "
                     f"StableDiffusionInpaintPipeline, which needs a CLIP text encoder and no class "
                     f"labels; this inpainting model has {what}. Use the run's export with "
                     "LatentDiffusionPipeline.from_workdir.")
  super_resolution = pipe.low_res_shape is not None
  upscaler = pipe.noise_augmentation is not None
  if upscaler:
    _check_upscaler(pipe, bert)
  elif super_resolution:
    _check_super_resolution(pipe)
  elif pipe.conditioning == "concat" and not inpainting:
    raise ValueError("save_pretrained does not write concat-conditioned semantic synthesis "
                     "models (diffusers has no pipeline class for them); use the run's export "
                     "with LatentDiffusionPipeline.from_workdir.")
  if pipe.conditioning == "context" and not text:
    raise ValueError("A cross-attention UNet without a text encoder has no diffusers pipeline "
                     "class; save_pretrained saves text, class-conditional and unconditional "
                     "pipelines.")
  os.makedirs(folder, exist_ok=True)
  if text:
    text_saving.save_prompt_encoder(pipe.prompt_encoder, folder)
  vae_folder = "vae" if text and not bert else "vqvae"
  ae, ae_params = pipe.autoencoder.clone(scaling_factor=pipe.scale_factor), pipe.ae_params
  if super_resolution and not upscaler and pipe.scale_factor != 1.0:
    ae, ae_params = ae.clone(scaling_factor=1.0), fold_scale(ae_params, pipe.scale_factor)
  if hasattr(ae, "shift_factor"):
    ae = ae.clone(shift_factor=pipe.shift_factor)
  elif pipe.shift_factor:
    raise ValueError(f"{type(ae).__name__} has no shift_factor; the pipeline's is {pipe.shift_factor}.")
  convert.save_diffusers(pipe.unet, pipe.unet_params, os.path.join(folder, "unet"),
                         sample_size=_size(pipe.latent_shape))
  convert.save_diffusers(ae, ae_params, os.path.join(folder, vae_folder),
                         sample_size=_size(pipe.image_shape))
  os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
  sched = scheduler_config(pipe)
  _write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), sched)
  unet_class = convert.read_config(os.path.join(folder, "unet"))["_class_name"]
  index = {"_class_name": ("LDMTextToImagePipeline" if bert else
                          "StableDiffusionInpaintPipeline" if inpainting else
                          "StableDiffusionUpscalePipeline" if upscaler else
                          "LDMSuperResolutionPipeline" if super_resolution else
                          "StableDiffusionPipeline" if text else "LDMPipeline"),
           "_diffusers_version": DIFFUSERS_VERSION, "unet": ["diffusers", unet_class],
           vae_folder: ["diffusers", type(ae).__name__],
           "scheduler": ["diffusers", sched["_class_name"]],
           SAMPLING_KEY: {k: pipe.defaults[k] for k in ("num_steps", "guidance_scale")}}
  if bert:
    word_level = type(pipe.prompt_encoder.tokenizer.model).__name__ == "WordLevel"
    index.update(bert=["latent_diffusion", "LDMBertModel"],
                 tokenizer=["transformers",
                            "PreTrainedTokenizerFast" if word_level else "BertTokenizer"])
  elif upscaler:
    index.update(text_encoder=["transformers", "CLIPTextModel"],
                 tokenizer=["transformers", "CLIPTokenizer"], safety_checker=[None, None],
                 feature_extractor=[None, None], watermarker=[None, None],
                 low_res_scheduler=["diffusers", "DDPMScheduler"],
                 max_noise_level=int(pipe.noise_augmentation.max_level))
    index[DEFAULT_NOISE_LEVEL_KEY] = int(pipe.noise_augmentation.default_level)
    os.makedirs(os.path.join(folder, "low_res_scheduler"), exist_ok=True)
    _write_json(os.path.join(folder, "low_res_scheduler", "scheduler_config.json"),
                low_res_scheduler_config(pipe.noise_augmentation.schedule))
  elif text:
    index.update(text_encoder=["transformers", "CLIPTextModel"],
                 tokenizer=["transformers", "CLIPTokenizer"], safety_checker=[None, None],
                 feature_extractor=[None, None], image_encoder=[None, None],
                 requires_safety_checker=False)
  if inpainting:
    index[INPAINTING_NULL_KEY] = pipe.inpainting_null
  if super_resolution and not upscaler:
    index[LOW_RES_INPUT_KEY] = pipe.low_res_input
  _write_json(os.path.join(folder, "model_index.json"), index)
  return folder
