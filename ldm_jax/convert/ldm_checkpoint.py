"""Original CompVis / Stable Diffusion single-file checkpoints (Rombach et al. 2022) -> Flax params.

A LatentDiffusion checkpoint (``.ckpt``: a torch pickle holding ``{"state_dict": ...}``, or
``.safetensors``) keeps the UNet under ``model.diffusion_model.*`` (openaimodel.py layout:
``input_blocks`` / ``middle_block`` / ``output_blocks``, ``in_layers`` / ``emb_layers`` /
``out_layers``), the autoencoder under ``first_stage_model.*`` (model.py layout: ``encoder.down.N.
block.M``, ``mid.attn_1`` with 1x1-conv q/k/v, ``nin_shortcut``), the EMA copy of the UNet under
``model_ema.*`` (names with the dots removed) and the text encoder etc. under other prefixes.

Conversion is two steps:
  1. ``convert_ldm_state_dict``: renames the original tensors to the diffusers layout (the names and
     shapes of diffusers' ``UNet2DConditionModel`` / ``UNet2DModel`` / ``AutoencoderKL`` /
     ``VQModel`` state dicts) and builds the diffusers config dicts (``ldm_layout``: shapes give
     the architecture; an LDM yaml only the attention heads, and is cross-checked).
  2. ``load_ldm_checkpoint``: hands those to the diffusers-layout Flax loaders in
     ``ldm_jax.convert.diffusers_unet`` and ``ldm_jax.convert.diffusers_vae``.

Scope: SD 1.x / 2.x and LDM UNets (spatial transformers with conv or linear projections, or the
legacy ``AttentionBlock``; class labels; scale-shift norm), KL and VQ first stages; see
``ldm_layout`` for what is not supported and for the heads rule. ``num_classes="sequential"``
(a projected class vector) converts to diffusers' layout, but the Flax UNet rejects it; SDXL
(``conditioner.*``, ``text_time`` embedding) is out of scope.

Latent scale factor rule: the checkpoint's ``scale_factor`` buffer (present when the model was
trained with ``scale_by_std``), else ``model.params.scale_factor`` of the config, else 0.18215 (the
SD / LDM KL-f8 value, diffusers' default) for a KL first stage and 1.0 (LatentDiffusion's default)
for a VQ first stage.
"""

import logging
import os
from typing import Any, Mapping, NamedTuple

import numpy as np

from ldm_jax.convert import ldm_layout as layout

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
EMA_PREFIX = "model_ema."
SD_SCALE_FACTOR = 0.18215
VQ_SCALE_FACTOR = 1.0
# Training-only modules saved inside LDM autoencoders (LPIPS, discriminator): skipped.
_VAE_IGNORED = ("loss.",)

_log = logging.getLogger(__name__)


class DiffusersCheckpoint(NamedTuple):
  """The checkpoint renamed to the diffusers layout (tensors untouched except 1x1-conv squeezes)."""
  unet_state_dict: dict    # diffusers UNet2DConditionModel / UNet2DModel names -> arrays
  unet_config: dict        # diffusers config, with "_class_name"
  vae_state_dict: dict     # diffusers AutoencoderKL / VQModel names -> arrays
  vae_config: dict
  scale_factor: float      # latent scale: z = scale_factor * E(x)
  ignored: dict            # prefix -> count of tensors skipped (text encoder, schedule buffers)


class LdmCheckpoint(NamedTuple):
  """Flax modules and their ``params`` collections, plus the diffusers configs they came from."""
  unet: Any
  unet_params: Any
  unet_config: dict
  vae: Any
  vae_params: Any
  vae_config: dict
  scale_factor: float
  ignored: dict


# ----------------------------------------------------------------------------- reading


def read_state_dict(path, *, weights_only=True):
  """Reads a ``.safetensors`` or ``.ckpt`` / ``.pt`` / ``.pth`` file into {name: numpy array}.

  Dtypes are kept (bfloat16 as ``ml_dtypes.bfloat16``). A ``.ckpt`` holding
  ``{"state_dict": ...}`` (PyTorch Lightning) is unwrapped; other pickled entries are dropped.
  ``weights_only=False`` runs arbitrary pickled code: only for files you trust.
  """
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    from safetensors import safe_open
    try:
      with safe_open(path, framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}
    except (TypeError, ValueError):  # older safetensors: no numpy bfloat16, go through torch
      from safetensors.torch import load_file
      return {k: _to_numpy(v) for k, v in load_file(path).items()}
  if ext in (".ckpt", ".pt", ".pth", ".bin"):
    import pickle
    import torch
    try:
      obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
      if not weights_only:
        raise
      raise ValueError(f"{path}: torch.load(weights_only=True) refused the pickle ({e}); pass "
                       "weights_only=False only if you trust the file") from e
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping):
      raise ValueError(f"{path}: expected a dict of tensors or {{'state_dict': ...}}, "
                       f"got {type(obj)}")
    return {k: _to_numpy(v) for k, v in sd.items() if hasattr(v, "shape")}
  raise ValueError(f"{path}: unknown extension {ext!r}; "
                   "expected .safetensors, .ckpt, .pt, .pth or .bin")


def _to_numpy(t):
  """torch tensor -> numpy array of the same dtype (bfloat16 as ml_dtypes.bfloat16, like JAX)."""
  import torch
  if t.dtype == torch.bfloat16:
    import ml_dtypes
    return t.detach().cpu().float().numpy().astype(ml_dtypes.bfloat16)
  return t.detach().cpu().numpy()


def read_ldm_config(config):
  """An LDM yaml path, or a dict of it (whole file or its ``model.params``) -> ``model.params``."""
  if config is None:
    return {}
  if isinstance(config, (str, os.PathLike)):
    import yaml
    with open(config) as f:
      config = yaml.safe_load(f)
  if not isinstance(config, Mapping):
    raise ValueError(f"config must be a yaml path or a dict, got {type(config)}")
  if "model" in config:
    config = config["model"].get("params", {})
  return dict(config)


def _sub_params(config, name):
  sub = config.get(name) or {}
  return dict(sub.get("params", {}))


# ----------------------------------------------------------------------------- splitting


def split_checkpoint(state_dict, *, use_ema=False):
  """-> (unet, vae, scale_factor or None, ignored): prefix-stripped sub-dicts of the UNet and VAE.

  ``use_ema``: take the UNet from ``model_ema.*`` (LitEma's dot-free names) instead.
  """
  unet, vae, ignored = {}, {}, {}
  for k, v in state_dict.items():
    if k.startswith(UNET_PREFIX):
      unet[k[len(UNET_PREFIX):]] = v
    elif k.startswith(VAE_PREFIX) and not k[len(VAE_PREFIX):].startswith(_VAE_IGNORED):
      vae[k[len(VAE_PREFIX):]] = v
    elif k != "scale_factor" and not (use_ema and k.startswith(EMA_PREFIX)):
      head = k.split(".")[0] if "." in k else k
      group = f"{VAE_PREFIX}loss." if k.startswith(VAE_PREFIX) else head
      ignored[group] = ignored.get(group, 0) + 1
  if use_ema:
    flat = {k[len(EMA_PREFIX):]: v for k, v in state_dict.items() if k.startswith(EMA_PREFIX)}
    missing = [k for k in unet if "diffusion_model" + k.replace(".", "") not in flat]
    if missing:
      raise ValueError(f"use_ema=True but {len(missing)} UNet tensors have no model_ema.* copy, "
                       f"e.g. {missing[:5]}")
    unet = {k: flat["diffusion_model" + k.replace(".", "")] for k in unet}
  scale = state_dict.get("scale_factor")
  if ignored:
    _log.info("ldm checkpoint: ignoring %s", ignored)
  return unet, vae, (None if scale is None else float(np.asarray(scale))), ignored


# ----------------------------------------------------------------------------- entry points


def convert_ldm_state_dict(state_dict, config=None, *, use_ema=False):
  """A whole LatentDiffusion state dict -> ``DiffusersCheckpoint`` (no JAX involved).

  config: None, an LDM yaml path, or its dict (whole file or ``model.params``); see the module
  docstring for what it is needed for.
  """
  cfg = read_ldm_config(config)
  unet_sd, vae_sd, scale, ignored = split_checkpoint(state_dict, use_ema=use_ema)
  if not unet_sd or not vae_sd:
    raise ValueError(f"not a LatentDiffusion checkpoint: {len(unet_sd)} tensors under "
                     f"{UNET_PREFIX!r}, {len(vae_sd)} under {VAE_PREFIX!r} (both are needed); "
                     f"top-level prefixes seen: {sorted(ignored)}")
  unet_cfg, vae_cfg = _sub_params(cfg, "unet_config"), _sub_params(cfg, "first_stage_config")
  uh, vh = layout.infer_unet_hparams(unet_sd), layout.infer_vae_hparams(vae_sd)
  layout.check_against_config(uh, unet_cfg, "UNet")
  layout.check_against_config(vh, {**vae_cfg.get("ddconfig", {}), **vae_cfg}, "autoencoder")
  if scale is None:
    scale = cfg.get("scale_factor")
  if scale is None:
    scale = VQ_SCALE_FACTOR if vh["kind"] == "vq" else SD_SCALE_FACTOR
  unet_config = layout.create_unet_config(uh, unet_cfg)  # config errors before key errors
  vae_config = layout.create_vae_config(vh, float(scale), vae_cfg)
  return DiffusersCheckpoint(
      unet_state_dict=layout.convert_unet_state_dict(unet_sd, uh, unet_cfg),
      unet_config=unet_config, vae_state_dict=layout.convert_vae_state_dict(vae_sd, vh),
      vae_config=vae_config, scale_factor=float(scale), ignored=ignored)


CLASS_EMBEDDER_KEY = "cond_stage_model.embedding.weight"


def _with_class_embedder(unet, unet_params, state_dict, ignored):
  """Class-conditional cross-attention models (cin configs: ClassEmbedder, conditioning_key
  crossattn) keep their label table in ``cond_stage_model.embedding.weight`` [N, D]: it becomes
  the UNet's ``class_embed_type="context"`` table, so ``apply(..., y=labels)`` runs the model."""
  if CLASS_EMBEDDER_KEY not in state_dict:
    return unet, unet_params
  table = np.asarray(state_dict[CLASS_EMBEDDER_KEY], np.float32)
  if (table.ndim != 2 or not unet.has_cross_attention or unet.num_class_embeds is not None
      or table.shape[1] != unet.cross_attention_dim):
    raise ValueError(f"{CLASS_EMBEDDER_KEY} {table.shape} does not fit this UNet: a ClassEmbedder "
                     f"needs cross-attention blocks with context width {unet.cross_attention_dim} "
                     f"and no class embedding of its own (num_class_embeds={unet.num_class_embeds})")
  ignored["cond_stage_model"] -= 1
  if not ignored["cond_stage_model"]:
    del ignored["cond_stage_model"]
  unet = unet.clone(num_class_embeds=table.shape[0], class_embed_type="context")
  return unet, {**unet_params, "class_context_embedding": {"embedding": table}}


def load_ldm_checkpoint(path, config=None, *, use_ema=False, weights_only=True):
  """Loads an original CompVis / Stable Diffusion single file into Flax modules and params.

  path: ``.ckpt`` (torch pickle, ``{"state_dict": ...}``) or ``.safetensors`` (or the state dict
  ``read_state_dict`` returns for one) with keys
  ``model.diffusion_model.*`` and ``first_stage_model.*``; a ClassEmbedder's
  ``cond_stage_model.embedding.weight`` (cin models) becomes the UNet's class-context table
  (``class_embed_type="context"``, call with ``y=labels``); other prefixes (text encoders,
  schedule buffers, ...) are skipped and listed in ``ignored``. config: optional LDM yaml (path,
  or dict of the file or of ``model.params``). use_ema: take the UNet from ``model_ema.*``.
  Returns ``LdmCheckpoint``; ``unet.apply({"params": unet_params}, x, t, context=...)`` runs it.
  """
  state_dict = (path if isinstance(path, Mapping) else
                read_state_dict(path, weights_only=weights_only))
  ckpt = convert_ldm_state_dict(state_dict, config, use_ema=use_ema)
  from ldm_jax.convert import diffusers_unet, diffusers_vae
  unet = diffusers_unet.unet_from_config(ckpt.unet_config)
  unet_params = diffusers_unet.unet_params_from_state_dict(ckpt.unet_state_dict, ckpt.unet_config)
  unet, unet_params = _with_class_embedder(unet, unet_params, state_dict, ckpt.ignored)
  vae = diffusers_vae.vae_from_config(ckpt.vae_config)
  vae_params = diffusers_vae.vae_params_from_state_dict(ckpt.vae_state_dict, vae)
  return LdmCheckpoint(unet, unet_params, ckpt.unet_config, vae, vae_params, ckpt.vae_config,
                       ckpt.scale_factor, ckpt.ignored)
