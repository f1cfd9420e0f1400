"""Encoder and Decoder of the first-stage autoencoders (Esser et al. 2021; LDM app. G).

Submodule names mirror diffusers' ``Encoder`` / ``Decoder`` (``conv_in``, ``down_blocks_{i}``,
``mid_block``, ``up_blocks_{i}``, ``conv_norm_out``, ``conv_out``), so torch keys map one-to-one
(``down_blocks.0.resnets.1`` <-> ``down_blocks_0/resnets_1``).

Common fields: block_out_channels = ch * ch_mult (one entry per resolution, f = 2^(len - 1)),
layers_per_block (ResNet blocks per resolution; the decoder uses one more, as the reference),
norm_groups, epsilon (GroupNorm eps, 1e-6 in the reference), mid_attention, remat (rematerialise
each down / mid / up block in the backward pass), dtype, param_dtype.
Logical axis names: every conv ``resnet.CONV_AXES`` (via ``resnet.conv``), the mid attention as
``vae_attention``; norms are unnamed.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ldm_jax.models import precision
from ldm_jax.models.resnet import Downsample, ResnetBlock, Upsample, conv, group_norm
from ldm_jax.models.vae_attention import VAEAttention

Dtype = Any


class DownEncoderBlock(nn.Module):
  """``num_layers`` ResNet blocks then, unless last, a stride-2 conv with (0, 1, 0, 1) padding."""
  out_channels: int
  num_layers: int
  add_downsample: bool
  groups: int
  epsilon: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.num_layers):
      x = ResnetBlock(self.out_channels, groups=self.groups, epsilon=self.epsilon,
                      name=f"resnets_{i}", **kw)(x)
    if self.add_downsample:
      x = Downsample(self.out_channels, padding=0, name="downsamplers_0", **kw)(x)
    return x


class UpDecoderBlock(nn.Module):
  """``num_layers`` ResNet blocks then, unless last, nearest x2 upsampling and a 3x3 conv."""
  out_channels: int
  num_layers: int
  add_upsample: bool
  groups: int
  epsilon: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i in range(self.num_layers):
      x = ResnetBlock(self.out_channels, groups=self.groups, epsilon=self.epsilon,
                      name=f"resnets_{i}", **kw)(x)
    if self.add_upsample:
      x = Upsample(self.out_channels, name="upsamplers_0", **kw)(x)
    return x


class MidBlock(nn.Module):
  """ResNet -> single-head self-attention -> ResNet at the lowest resolution."""
  groups: int
  epsilon: float
  add_attention: bool = True
  attention_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(groups=self.groups, epsilon=self.epsilon, dtype=self.dtype,
              param_dtype=self.param_dtype)
    x = ResnetBlock(name="resnets_0", **kw)(x)
    if self.add_attention:
      x = VAEAttention(name="attentions_0", implementation=self.attention_impl, **kw)(x)
    return ResnetBlock(name="resnets_1", **kw)(x)


def _maybe_remat(cls, remat):
  return precision.maybe_remat(cls, remat)


class Encoder(nn.Module):
  """x [B, H, W, in_channels] -> [B, H/f, W/f, out_channels (x2 if double_z)]."""
  out_channels: int
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  norm_groups: int = 32
  epsilon: float = 1e-6
  double_z: bool = True
  mid_attention: bool = True
  remat: bool | str = False
  attention_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm_kw = dict(groups=self.norm_groups, epsilon=self.epsilon, **kw)
    chans = self.block_out_channels
    x = conv(chans[0], 3, name="conv_in", **kw)(x.astype(self.dtype))
    down_cls = _maybe_remat(DownEncoderBlock, self.remat)
    for i, c in enumerate(chans):
      x = down_cls(c, self.layers_per_block, i < len(chans) - 1, name=f"down_blocks_{i}",
                   **norm_kw)(x)
    x = _maybe_remat(MidBlock, self.remat)(add_attention=self.mid_attention, attention_impl=self.attention_impl,
                                           name="mid_block",
                                           **norm_kw)(x)
    x = nn.silu(group_norm(x, name="conv_norm_out", **norm_kw))
    out = self.out_channels * (2 if self.double_z else 1)
    return conv(out, 3, name="conv_out", **kw)(x)


class Decoder(nn.Module):
  """z [B, h, w, C_z] -> [B, h*f, w*f, out_channels]; up_blocks_0 is the lowest resolution."""
  out_channels: int
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  norm_groups: int = 32
  epsilon: float = 1e-6
  mid_attention: bool = True
  remat: bool | str = False
  attention_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm_kw = dict(groups=self.norm_groups, epsilon=self.epsilon, **kw)
    chans = tuple(reversed(self.block_out_channels))
    x = conv(chans[0], 3, name="conv_in", **kw)(z.astype(self.dtype))
    x = _maybe_remat(MidBlock, self.remat)(add_attention=self.mid_attention, attention_impl=self.attention_impl,
                                           name="mid_block",
                                           **norm_kw)(x)
    up_cls = _maybe_remat(UpDecoderBlock, self.remat)
    for i, c in enumerate(chans):
      x = up_cls(c, self.layers_per_block + 1, i < len(chans) - 1, name=f"up_blocks_{i}",
                 **norm_kw)(x)
    x = nn.silu(group_norm(x, name="conv_norm_out", **norm_kw))
    return conv(self.out_channels, 3, name="conv_out", **kw)(x)
