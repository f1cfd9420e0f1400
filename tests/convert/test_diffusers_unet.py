"""Parity of the Flax UNet with diffusers' UNet2DModel / UNet2DConditionModel: load and save."""

import json

import jax
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from ldm_jax import convert
from ldm_jax.convert import diffusers_unet
from ldm_jax.models import unet as unet_lib

RTOL = 1e-5  # max |ours - torch| / max |torch|, float32

# name: (diffusers class, small config, conditioning inputs).  Together they cover channel
# multipliers, attention at different levels, head count vs head width, linear/conv projection,
# transformer depth 2, class embeddings, context, scale-shift norm and odd timestep options.
CONFIGS = {
    "unet2d_class": (UNet2DModel, dict(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=8,
        num_class_embeds=5), ("y",)),
    "unet2d_3level_scale_shift": (UNet2DModel, dict(
        in_channels=4, out_channels=2, block_out_channels=(16, 32, 48), layers_per_block=1,
        down_block_types=("AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D"), attention_head_dim=None,
        norm_num_groups=8, norm_eps=1e-6, resnet_time_scale_shift="scale_shift",
        downsample_padding=0, freq_shift=1, flip_sin_to_cos=False, mid_block_scale_factor=1.5),
        ()),
    "cond_conv_proj": (UNet2DConditionModel, dict(
        in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=2,
        norm_num_groups=8, cross_attention_dim=24), ("context",)),
    "cond_linear_depth2_heads_per_level": (UNet2DConditionModel, dict(
        in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2), use_linear_projection=True, norm_num_groups=8,
        cross_attention_dim=24), ("context",)),
    "cond_class_and_context": (UNet2DConditionModel, dict(
        in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), mid_block_type="UNetMidBlock2D",
        attention_head_dim=4, norm_num_groups=8, cross_attention_dim=16, num_class_embeds=4,
        time_embedding_dim=48), ("context", "y")),
    # the SD x4 upscaler's pattern: attn1 cross-attends on the first levels (per level, the up
    # blocks reversed), class labels and context, context width != channels
    "cond_only_cross_attention_per_level": (UNet2DConditionModel, dict(
        in_channels=7, out_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        only_cross_attention=[True, True, False], attention_head_dim=4, norm_num_groups=8,
        cross_attention_dim=24, num_class_embeds=6, use_linear_projection=True),
        ("context", "y")),
}


def randomize_(model, seed=0):
  """Random weights everywhere: norm scales off 1, biases off 0, no zero-initialised layer."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      r = torch.randn(p.shape, generator=g)
      if name.endswith("bias"):
        p.copy_(0.1 * r)
      elif p.ndim == 1:  # GroupNorm / LayerNorm scale
        p.copy_(1 + 0.1 * r)
      elif name.startswith("class_embedding"):
        p.copy_(r)
      else:
        p.copy_(r / np.sqrt(np.prod(p.shape[1:])))
  return model


def random_params(shapes, seed):
  """numpy params of the given shapes, scaled like ``randomize_`` (no compiled init needed)."""
  rng = np.random.default_rng(seed)

  def draw(path, s):
    r = rng.standard_normal(s.shape)
    leaf = path[-1].key
    if leaf == "bias":
      r = 0.1 * r
    elif leaf == "scale":
      r = 1 + 0.1 * r
    elif leaf == "kernel":
      r = r / np.sqrt(np.prod(s.shape[:-1]))
    return r.astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def make_inputs(in_channels, cond, *, context_dim=None, h=16, seed=0):
  """Flax kwargs and matching torch kwargs; fractional timesteps."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, h, h, in_channels)).astype(np.float32)
  t = np.array([3.5, 701.25], np.float32)
  kw, tkw = {}, {}
  if "context" in cond:
    kw["context"] = rng.standard_normal((2, 7, context_dim)).astype(np.float32)
    tkw["encoder_hidden_states"] = torch.from_numpy(kw["context"])
  if "y" in cond:
    kw["y"] = np.array([1, 3], np.int32)
    tkw["class_labels"] = torch.from_numpy(kw["y"]).long()
  return x, t, kw, tkw


def torch_forward(model, x, t, tkw):
  if isinstance(model, UNet2DConditionModel):
    tkw = {"encoder_hidden_states": None, **tkw}
  with torch.no_grad():
    out = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t), **tkw).sample
  return out.permute(0, 2, 3, 1).numpy()


def flax_forward(module, params, x, t, kw):
  return np.asarray(jax.jit(lambda p, x, t, kw: module.apply({"params": p}, x, t, **kw))(
      params, x, t, kw))


def rel_err(out, ref):
  return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_load_diffusers_matches_torch(name, tmp_path):
  cls, config, cond = CONFIGS[name]
  torch.manual_seed(0)
  model = randomize_(cls(**config).eval())
  model.save_pretrained(tmp_path)
  module, params = convert.load_diffusers(str(tmp_path))
  assert isinstance(module, unet_lib.UNet)
  x, t, kw, tkw = make_inputs(config["in_channels"], cond,
                              context_dim=config.get("cross_attention_dim"))
  ref = torch_forward(model, x, t, tkw)
  out = flax_forward(module, params, x, t, kw)
  assert out.shape == ref.shape
  assert rel_err(out, ref) < RTOL
  # The inverse config describes the same network (checked by the saving round trip below).
  saved = diffusers_unet.unet_config_from_module(module)
  assert diffusers_unet.unet_from_config(saved) == module
  assert saved["_class_name"] == cls.__name__


@pytest.mark.parametrize("preset,cls,cond", [
    ("UNET_TINY_CLASS", UNet2DModel, ("y",)),
    ("UNET_TINY_COND", UNet2DConditionModel, ("context",)),
])
def test_save_diffusers_round_trip(preset, cls, cond, tmp_path):
  module = getattr(unet_lib, preset)()
  x, t, kw, tkw = make_inputs(module.in_channels, cond, context_dim=module.cross_attention_dim)
  params = random_params(diffusers_unet.param_shapes(module), seed=2)
  convert.save_diffusers(module, params, str(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == cls.__name__
  model = cls.from_pretrained(str(tmp_path)).eval()
  assert rel_err(torch_forward(model, x, t, tkw), flax_forward(module, params, x, t, kw)) < RTOL
  # ... and loading the saved folder gives back the same module and parameters.
  module2, params2 = convert.load_diffusers(str(tmp_path))
  assert diffusers_unet.unet_config_from_module(module2) == (
      diffusers_unet.unet_config_from_module(module))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                   jax.tree.leaves(params2)))


def _tiny_cond_config():
  return diffusers_unet.unet_config_from_module(unet_lib.UNET_TINY_COND())


@pytest.mark.parametrize("option,value", [
    ("class_embed_type", "timestep"), ("time_embedding_type", "fourier"),
    ("num_attention_heads", 8), ("addition_embed_type", "text_time"),
    ("dual_cross_attention", True), ("down_block_types", ["SimpleCrossAttnDownBlock2D"] * 2),
    ("not_an_option", 1),
])
def test_unsupported_config_option_is_named(option, value):
  config = {**_tiny_cond_config(), option: value}
  with pytest.raises(ValueError, match=option if option != "down_block_types" else "Simple"):
    diffusers_unet.unet_from_config(config)


def test_wrong_class_and_state_dict_mismatch_raise():
  with pytest.raises(ValueError, match="AutoencoderKL"):
    diffusers_unet.unet_from_config({**_tiny_cond_config(), "_class_name": "AutoencoderKL"})
  config = _tiny_cond_config()
  shapes = diffusers_unet.param_shapes(diffusers_unet.unet_from_config(config))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
  state = diffusers_unet.unet_state_dict_from_params(zeros)
  del state["conv_in.bias"]
  with pytest.raises(ValueError, match="conv_in.bias"):
    diffusers_unet.unet_params_from_state_dict(state, config)
