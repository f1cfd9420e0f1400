"""diffusers ``AutoencoderKL`` / ``VQModel`` config, weights <-> ``ldm_jax.models.autoencoder``."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.convert import torch_layout
from ldm_jax.models.autoencoder import AutoencoderKL, VQModel

VAE_CLASSES = ("AutoencoderKL", "VQModel")
# Config keys that do not change the network (inference-time hints of diffusers).
_IGNORED = {"sample_size", "force_upcast", "lookup_from_codebook"}
_KNOWN = {
    "AutoencoderKL": {"in_channels", "out_channels", "down_block_types", "up_block_types",
                      "block_out_channels", "layers_per_block", "act_fn", "latent_channels",
                      "norm_num_groups", "scaling_factor", "shift_factor", "latents_mean",
                      "latents_std", "use_quant_conv", "use_post_quant_conv",
                      "mid_block_add_attention"} | _IGNORED,
    "VQModel": {"in_channels", "out_channels", "down_block_types", "up_block_types",
                "block_out_channels", "layers_per_block", "act_fn", "latent_channels",
                "num_vq_embeddings", "norm_num_groups", "vq_embed_dim", "scaling_factor",
                "norm_type", "mid_block_add_attention"} | _IGNORED,
}
_DIFFUSERS_VERSION = "0.31.0"


def _check_supported(config, cls_name):
  unknown = sorted(k for k in config if not k.startswith("_") and k not in _KNOWN[cls_name])
  if unknown:
    raise ValueError(f"{cls_name} config options not supported by ldm_jax: {unknown}; "
                     f"supported: {sorted(_KNOWN[cls_name])}")
  n = len(config.get("block_out_channels", (64,)))
  expected = {"act_fn": "silu", "norm_type": "group",
              "down_block_types": ["DownEncoderBlock2D"] * n,
              "up_block_types": ["UpDecoderBlock2D"] * n,
              "latents_mean": None, "latents_std": None}
  for key, value in expected.items():
    if key in config and (list(config[key]) if isinstance(config[key], (list, tuple))
                          else config[key]) != value:
      raise ValueError(f"{cls_name} config option {key}={config[key]!r} is not supported; "
                       f"ldm_jax supports only {key}={value!r}")


def vae_from_config(config, **overrides):
  """Module from a diffusers config.json dict (``_class_name`` AutoencoderKL or VQModel).

  overrides: module fields to set, e.g. dtype=jnp.bfloat16 or remat=True.
  Raises ValueError naming any option that would change the network and is not supported.
  """
  cls_name = config.get("_class_name")
  if cls_name not in VAE_CLASSES:
    raise ValueError(f"_class_name {cls_name!r} is not an autoencoder; "
                     f"expected one of {VAE_CLASSES}")
  _check_supported(config, cls_name)
  common = dict(
      in_channels=config.get("in_channels", 3), out_channels=config.get("out_channels", 3),
      block_out_channels=tuple(config.get("block_out_channels", (64,))),
      layers_per_block=config.get("layers_per_block", 1),
      norm_groups=config.get("norm_num_groups", 32),
      mid_attention=config.get("mid_block_add_attention", True),
      scaling_factor=config.get("scaling_factor", 0.18215))
  if cls_name == "AutoencoderKL":
    return AutoencoderKL(
        z_channels=config.get("latent_channels", 4),
        shift_factor=config.get("shift_factor") or 0.0,
        use_quant_conv=config.get("use_quant_conv", True),
        use_post_quant_conv=config.get("use_post_quant_conv", True), **common, **overrides)
  return VQModel(z_channels=config.get("latent_channels", 3),
                 embed_dim=config.get("vq_embed_dim"),
                 num_embeddings=config.get("num_vq_embeddings", 256), **common, **overrides)


def vae_config_from_module(module):
  """diffusers config dict of an ``AutoencoderKL`` / ``VQModel`` (inverse of vae_from_config)."""
  if not isinstance(module, (AutoencoderKL, VQModel)):
    raise ValueError(f"expected an AutoencoderKL or VQModel, got {type(module).__name__}")
  n = len(module.block_out_channels)
  config = {
      "_class_name": type(module).__name__, "_diffusers_version": _DIFFUSERS_VERSION,
      "in_channels": module.in_channels, "out_channels": module.out_channels,
      "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
      "block_out_channels": list(module.block_out_channels),
      "layers_per_block": module.layers_per_block, "act_fn": "silu",
      "latent_channels": module.z_channels, "norm_num_groups": module.norm_groups,
      "scaling_factor": module.scaling_factor,
      "mid_block_add_attention": module.mid_attention,
  }
  if module.epsilon != 1e-6:
    raise ValueError(f"diffusers autoencoders use GroupNorm eps 1e-6, module has {module.epsilon}")
  if isinstance(module, AutoencoderKL):
    config.update(shift_factor=module.shift_factor or None,
                  use_quant_conv=module.use_quant_conv,
                  use_post_quant_conv=module.use_post_quant_conv)
  else:
    if (module.beta, module.legacy) != (0.25, True):
      raise ValueError("diffusers' VQModel fixes beta=0.25, legacy=True; module has "
                       f"beta={module.beta}, legacy={module.legacy}")
    config.update(num_vq_embeddings=module.num_embeddings, vq_embed_dim=module.embed_dim,
                  norm_type="group")
  return config


def abstract_params(module):
  """The module's unboxed params as ``jax.ShapeDtypeStruct`` tree (no real initialisation)."""
  f = module.downsampling_factor
  x = jax.ShapeDtypeStruct((1, f, f, module.in_channels), jnp.float32)
  return nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), x)["params"])


def vae_params_from_state_dict(state_dict, module):
  """Flax params of ``module`` from a diffusers autoencoder state dict {key: numpy array}."""
  return torch_layout.torch_to_flax(state_dict, abstract_params(module))


def vae_state_dict_from_params(params):
  """diffusers autoencoder state dict {key: numpy array} from Flax params."""
  return torch_layout.flax_to_torch(params)
