"""Weight interop with PyTorch checkpoints: diffusers model folders (load and save).

``load_diffusers(path) -> (module, params)`` reads a diffusers model folder (config.json plus
``diffusion_pytorch_model.safetensors`` or ``.bin``) of class AutoencoderKL, VQModel,
UNet2DModel or UNet2DConditionModel; ``module.apply({"params": params}, ...)`` runs it.
``save_diffusers(module, params, path)`` writes such a folder without needing torch.
``load_ldm_checkpoint(path)`` reads an original CompVis / Stable Diffusion single file
(``.ckpt`` or ``.safetensors``) into UNet and autoencoder params plus the latent scale factor.
``load_text_encoder(path) -> (module, params)`` reads a ``text_encoder/`` (CLIPTextModel) or
``bert/`` (LDMBertModel) folder; ``load_text_encoder_from_checkpoint(path or state dict) ->
(module, params, layout)`` the text encoder of an SD 1.x / 2.x or LDM txt2img single file.
"""

import json
import os

import numpy as np

from ldm_jax.convert import diffusers_vae

UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")
SUPPORTED_CLASSES = diffusers_vae.VAE_CLASSES + UNET_CLASSES
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model"


def _weights_file(path, variant=None):
  stem = WEIGHTS_NAME if variant is None else f"{WEIGHTS_NAME}.{variant}"
  for ext in (".safetensors", ".bin"):
    if os.path.exists(os.path.join(path, stem + ext)):
      return os.path.join(path, stem + ext)
  raise FileNotFoundError(f"no {stem}.safetensors or {stem}.bin in {path!r} "
                          f"(found: {sorted(os.listdir(path))})")


def read_state_dict(file):
  """{key: numpy array} from a .safetensors (no torch needed) or a torch .bin file.

  bfloat16 tensors (which numpy cannot hold natively) are read through torch as float32.
  """
  if file.endswith(".safetensors"):
    from safetensors.numpy import load_file
    try:
      return load_file(file)
    except (TypeError, ValueError):  # e.g. bfloat16 tensors: go through torch
      from safetensors.torch import load_file as load_torch
      return {k: _torch_to_numpy(v) for k, v in load_torch(file).items()}
  import torch  # only for pickled checkpoints
  state = torch.load(file, map_location="cpu", weights_only=True)
  return {k: _torch_to_numpy(v) for k, v in state.items()}


def _torch_to_numpy(t):
  import torch
  return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def read_config(path):
  with open(os.path.join(path, CONFIG_NAME)) as f:
    return json.load(f)


def load_diffusers(path, *, variant=None, **overrides):
  """(module, params) from a diffusers model folder; class from config["_class_name"].

  overrides: module fields to set (e.g. dtype=jnp.bfloat16) for the autoencoders; passed to
  the module's ``clone`` for the UNets. Raises ValueError for unsupported classes or options.
  """
  config = read_config(path)
  cls_name = config.get("_class_name")
  if cls_name not in SUPPORTED_CLASSES:
    raise ValueError(f"{path}: _class_name {cls_name!r} is not supported; "
                     f"supported: {SUPPORTED_CLASSES}")
  if cls_name in diffusers_vae.VAE_CLASSES:
    module = diffusers_vae.vae_from_config(config, **overrides)
    state_dict = read_state_dict(_weights_file(path, variant))
    return module, diffusers_vae.vae_params_from_state_dict(state_dict, module)
  from ldm_jax.convert.diffusers_unet import unet_from_config, unet_params_from_state_dict
  module = unet_from_config(config)
  if overrides:
    module = module.clone(**overrides)
  state_dict = read_state_dict(_weights_file(path, variant))
  return module, unet_params_from_state_dict(state_dict, config)


def save_diffusers(module, params, path, **config_keys):
  """Writes config.json and diffusion_pytorch_model.safetensors for ``module`` (no torch needed).

  Parameters are stored as float32 unless they are float16 (bfloat16 has no numpy dtype in
  safetensors' numpy API). config_keys: config entries the module does not hold, e.g.
  ``sample_size`` (the latent size of a pipeline's UNet, which its pipeline reads).
  """
  from ldm_jax.models.autoencoder import AutoencoderKL, VQModel
  from safetensors.numpy import save_file
  if isinstance(module, (AutoencoderKL, VQModel)):
    config = diffusers_vae.vae_config_from_module(module)
    state_dict = diffusers_vae.vae_state_dict_from_params(params)
  else:
    from ldm_jax.convert import diffusers_unet
    from ldm_jax.convert import torch_layout
    config = diffusers_unet.unet_config_from_module(module)
    to_torch = getattr(diffusers_unet, "unet_state_dict_from_params", None)
    state_dict = to_torch(params) if to_torch else torch_layout.flax_to_torch(params)
  state_dict = {k: v if v.dtype in (np.float32, np.float16) else v.astype(np.float32)
                for k, v in state_dict.items()}
  config.update(config_keys)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, CONFIG_NAME), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  save_file(state_dict, os.path.join(path, WEIGHTS_NAME + ".safetensors"))


# Original CompVis / Stable Diffusion single-file checkpoints (imported last: it uses the above).
from ldm_jax.convert.ldm_checkpoint import load_ldm_checkpoint  # noqa: E402  pylint: disable=wrong-import-position
from ldm_jax.convert.text_checkpoint import load_text_encoder_from_checkpoint  # noqa: E402,F401  pylint: disable=wrong-import-position
from ldm_jax.convert.text_encoders import load_text_encoder  # noqa: E402,F401  pylint: disable=wrong-import-position
