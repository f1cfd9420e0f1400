"""diffusers ``UNet2DModel`` / ``UNet2DConditionModel`` configs and weights <-> ``ldm_jax`` UNet.

``unet_from_config(config)`` builds the Flax module from a diffusers config.json dict (raising a
ValueError that names any option it does not implement), ``unet_params_from_state_dict`` maps a
torch state dict (numpy arrays) onto its ``params``, and ``unet_config_from_module`` /
``unet_state_dict_from_params`` go back, for saving in diffusers format.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.convert import torch_layout
from ldm_jax.models.unet import UNet

CLASS_NAMES = ("UNet2DModel", "UNet2DConditionModel")
# Options ldm_jax does not implement: the only accepted value(s) of each.
_FIXED = {
    "center_input_sample": (False,), "time_embedding_type": ("positional",),
    "act_fn": ("silu", "swish"), "class_embed_type": (None,), "downsample_type": ("conv",),
    "upsample_type": ("conv",), "dual_cross_attention": (False,),
    "reverse_transformer_layers_per_block": (None,), "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,), "num_attention_heads": (None,),
    "addition_embed_type": (None,), "addition_time_embed_dim": (None,),
    "resnet_skip_time_act": (False,), "resnet_out_scale_factor": (1.0,),
    "time_embedding_act_fn": (None,), "timestep_post_act": (None,), "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,), "conv_out_kernel": (3,),
    "projection_class_embeddings_input_dim": (None,), "attention_type": ("default",),
    "class_embeddings_concat": (False,), "mid_block_only_cross_attention": (None, False),
    "cross_attention_norm": (None,), "resnet_time_scale_shift": ("default", "scale_shift"),
}
# Options that do not change the network (upcast_attention: logits are always float32 here).
_IGNORED = ("sample_size", "num_train_timesteps", "upcast_attention",
            "addition_embed_type_num_heads")
_COMMON = ("in_channels", "out_channels", "block_out_channels", "down_block_types",
           "up_block_types", "mid_block_type", "flip_sin_to_cos", "freq_shift", "dropout",
           "norm_num_groups", "norm_eps", "mid_block_scale_factor", "downsample_padding",
           "time_embedding_dim", "num_class_embeds", "layers_per_block", "attention_head_dim")
_OWN = {"UNet2DModel": ("attn_norm_num_groups", "add_attention"),
        "UNet2DConditionModel": ("cross_attention_dim", "transformer_layers_per_block",
                                 "use_linear_projection", "only_cross_attention")}
_BLOCKS = {"UNet2DModel": ({"DownBlock2D", "AttnDownBlock2D"}, {"UpBlock2D", "AttnUpBlock2D"},
                           {None, "UNetMidBlock2D"}),
           "UNet2DConditionModel": ({"DownBlock2D", "CrossAttnDownBlock2D"},
                                    {"UpBlock2D", "CrossAttnUpBlock2D"},
                                    {None, "UNetMidBlock2D", "UNetMidBlock2DCrossAttn"})}


def _unsupported(option, value, valid):
  return ValueError(f"diffusers UNet option {option}={value!r} is not supported by ldm_jax; "
                    f"supported: {valid}")


def _one_value(config, key):
  """An int option diffusers allows per level; ldm_jax needs all levels equal."""
  value = config.get(key)
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise _unsupported(key, value, "one value for all levels")
    return value[0]
  return value


def unet_from_config(config):
  """The ``UNet`` module equivalent to a diffusers UNet config.json dict."""
  cls = config.get("_class_name")
  if cls not in CLASS_NAMES:
    raise ValueError(f"_class_name {cls!r} is not a UNet class; expected one of {CLASS_NAMES}")
  known = set(_FIXED) | set(_IGNORED) | set(_COMMON) | set(_OWN[cls])
  for key, value in config.items():
    if key.startswith("_"):
      continue
    if key not in known:
      raise ValueError(f"unknown diffusers {cls} option {key!r}")
    if key in _FIXED:
      if value not in _FIXED[key]:
        raise _unsupported(key, value, _FIXED[key])
  down_ok, up_ok, mid_ok = _BLOCKS[cls]
  for key, ok in (("down_block_types", down_ok), ("up_block_types", up_ok)):
    for block in config.get(key, ()):
      if block not in ok:
        raise _unsupported(key, block, sorted(ok))
  mid = config.get("mid_block_type", "UNetMidBlock2D" if cls == "UNet2DModel" else
                   "UNetMidBlock2DCrossAttn")
  if mid not in mid_ok:
    raise _unsupported("mid_block_type", mid, sorted(mid_ok, key=str))
  if config.get("norm_num_groups", 32) is None:
    raise _unsupported("norm_num_groups", None, "an int")

  kw = dict(
      in_channels=config["in_channels"], out_channels=config["out_channels"],
      block_out_channels=tuple(config["block_out_channels"]),
      down_block_types=tuple(config["down_block_types"]),
      up_block_types=tuple(config["up_block_types"]), mid_block_type=mid,
      layers_per_block=_one_value(config, "layers_per_block"),
      flip_sin_to_cos=config.get("flip_sin_to_cos", True),
      freq_shift=config.get("freq_shift", 0), dropout=config.get("dropout", 0.0),
      norm_num_groups=config.get("norm_num_groups", 32), norm_eps=config.get("norm_eps", 1e-5),
      mid_block_scale_factor=config.get("mid_block_scale_factor", 1.0),
      downsample_padding=config.get("downsample_padding", 1),
      time_embedding_dim=config.get("time_embedding_dim"),
      num_class_embeds=config.get("num_class_embeds"),
      resnet_time_scale_shift=config.get("resnet_time_scale_shift", "default"))
  heads = config.get("attention_head_dim", 8)
  heads = tuple(heads) if isinstance(heads, list) else heads
  if cls == "UNet2DModel":
    kw.update(num_attention_heads=None, attention_head_dim=heads, cross_attention_dim=None,
              attn_norm_num_groups=config.get("attn_norm_num_groups"),
              mid_block_attention=config.get("add_attention", True))
  else:  # diffusers' "attention_head_dim" of this class is the number of heads
    depth = config.get("transformer_layers_per_block", 1)
    only_cross = config.get("only_cross_attention", False)
    kw.update(only_cross_attention=(tuple(only_cross) if isinstance(only_cross, list)
                                    else only_cross),
              num_attention_heads=heads, attention_head_dim=None,
              cross_attention_dim=_one_value(config, "cross_attention_dim"),
              transformer_layers_per_block=tuple(depth) if isinstance(depth, list) else depth,
              use_linear_projection=config.get("use_linear_projection", False),
              mid_block_layers=1 if mid == "UNetMidBlock2DCrossAttn" else 0,
              mid_block_attention=False)
  module = UNet(**kw)
  module.check_config()
  return module


def unet_config_from_module(module):
  """The diffusers config dict (with ``_class_name``) of an ``ldm_jax`` UNet module."""
  module.check_config()
  if module.class_context:
    raise ValueError("class_embed_type='context' (LDM's ClassEmbedder as cross-attention context) "
                     "has no diffusers UNet equivalent; valid for conversion: 'timestep'")
  if module.attention_position_embedding != "none":
    raise ValueError(f"attention_position_embedding={module.attention_position_embedding!r} has "
                     "no diffusers UNet equivalent; valid for conversion: 'none'")
  levels = module.levels
  boc = tuple(module.block_out_channels)
  heads = [module.heads_at(l, boc[l]) for l in range(levels)]
  config = dict(
      in_channels=module.in_channels, out_channels=module.out_channels,
      block_out_channels=list(boc), down_block_types=list(module.down_block_types),
      up_block_types=list(module.up_block_types), mid_block_type=module.mid_block_type,
      layers_per_block=module.layers_per_block, flip_sin_to_cos=module.flip_sin_to_cos,
      freq_shift=module.freq_shift, dropout=module.dropout,
      norm_num_groups=module.norm_num_groups, norm_eps=module.norm_eps,
      mid_block_scale_factor=module.mid_block_scale_factor,
      downsample_padding=module.downsample_padding,
      time_embedding_dim=module.time_embedding_dim, num_class_embeds=module.num_class_embeds,
      resnet_time_scale_shift=module.resnet_time_scale_shift, act_fn="silu")
  if module.has_cross_attention:
    if any(b.startswith("Attn") for b in (*module.down_block_types, *module.up_block_types)):
      raise ValueError("UNet2DConditionModel cannot hold both self-attention (Attn*) and "
                       "cross-attention blocks in ldm_jax's conversion")
    mid, layers = module.mid_block_type, module.mid_block_layers
    resnet_only = mid == "UNetMidBlock2D" and (layers, module.mid_block_attention) == (0, False)
    if mid is not None and not resnet_only and not (
        mid == "UNetMidBlock2DCrossAttn" and layers == 1):
      raise ValueError(f"mid block {mid} with mid_block_layers={module.mid_block_layers} has no "
                       "UNet2DConditionModel equivalent")
    depth = module.transformer_layers_per_block
    counts = [h for h, _ in heads]  # diffusers calls the head count "attention_head_dim"
    config.update(_class_name="UNet2DConditionModel",
                  attention_head_dim=counts[0] if len(set(counts)) == 1 else counts,
                  cross_attention_dim=module.cross_attention_dim,
                  transformer_layers_per_block=depth if isinstance(depth, int) else list(depth),
                  use_linear_projection=module.use_linear_projection,
                  only_cross_attention=(module.only_cross_attention
                                        if isinstance(module.only_cross_attention, bool)
                                        else list(module.only_cross_attention)))
  else:
    if module.mid_block_type == "UNetMidBlock2D" and module.mid_block_layers != 1:
      raise ValueError("UNet2DModel's mid block always has two resnets (mid_block_layers=1)")
    attn_levels = [l for l, b in enumerate(module.down_block_types) if b.startswith("Attn")]
    attn_levels += [levels - 1 - i for i, b in enumerate(module.up_block_types)
                    if b.startswith("Attn")]
    if module.mid_block_type and module.mid_block_attention:
      attn_levels.append(levels - 1)
    dims = {heads[l][1] for l in attn_levels}
    if module.num_attention_heads is None and module.attention_head_dim is None:
      dims = {None}  # one head of full width at every level
    elif len(dims) > 1 or any(heads[l][0] != boc[l] // heads[l][1] for l in attn_levels):
      raise ValueError(f"UNet2DModel needs one attention head width for all levels, got "
                       f"(heads, head_dim) per level {heads}")
    config.update(_class_name="UNet2DModel", attention_head_dim=dims.pop() if dims else None,
                  attn_norm_num_groups=module.attn_norm_num_groups,
                  add_attention=module.mid_block_attention)
  return config


def param_shapes(module):
  """The unboxed ``params`` shape tree of ``module`` via ``jax.eval_shape`` (no real init)."""
  h = w = 2 ** (module.levels - 1)
  x = jax.ShapeDtypeStruct((1, h, w, module.in_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  kw = {}
  if module.has_cross_attention and not module.class_context:
    kw["context"] = jax.ShapeDtypeStruct((1, 1, module.cross_attention_dim), jnp.float32)
  if module.num_class_embeds is not None:
    kw["y"] = jax.ShapeDtypeStruct((1,), jnp.int32)
  init = lambda x, t, kw: module.init(jax.random.key(0), x, t, **kw)
  return nn.unbox(jax.eval_shape(init, x, t, kw))["params"]


def unet_params_from_state_dict(state_dict, config):
  """Flax ``params`` of ``unet_from_config(config)`` from a torch state dict of numpy arrays.

  Raises ValueError listing missing, unexpected or wrongly shaped keys.
  """
  return torch_layout.torch_to_flax(state_dict, param_shapes(unet_from_config(config)))


def unet_state_dict_from_params(params):
  """A diffusers (torch layout) state dict of numpy arrays from Flax UNet ``params``."""
  return torch_layout.flax_to_torch(params)

