"""Residual blocks, down- and upsampling layers shared by the autoencoders and the UNet (NHWC).

Submodule names mirror diffusers' ``ResnetBlock2D`` / ``Downsample2D`` / ``Upsample2D`` attribute
names (``norm1``, ``conv1``, ``time_emb_proj``, ``norm2``, ``conv2``, ``conv_shortcut``,
``conv``) so
that ``ldm_jax.convert.torch_layout`` maps checkpoints one-to-one.

Stable fields (checkpoint-relevant names in parentheses are the diffusers equivalents):
  ResnetBlock: out_channels, groups, groups_out, epsilon (eps), dropout, time_embedding_norm
    ("default" | "scale_shift"), skip_time_act, output_scale_factor, use_in_shortcut,
    conv_shortcut_bias, resample ("none" | "up" | "down"), dtype, param_dtype.
  Downsample: out_channels, use_conv, padding (1: symmetric, UNet; 0: pad (0, 1, 0, 1), VAE),
    dtype, param_dtype.
  Upsample: out_channels, use_conv, dtype, param_dtype.

GroupNorm always runs in float32 (whatever ``dtype``) and is cast back to ``dtype``.
Logical axis names: conv kernels ``CONV_AXES`` (None, None, "conv_in", "conv_out"), conv biases
("conv_out",), ``time_emb_proj`` ("mlp", "conv_out"); norms are unnamed.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ldm_jax.models.embeddings import logical_dense
from ldm_jax.models.group_norm import GroupNorm

Dtype = Any
# Logical axis names of a conv kernel [kh, kw, C_in, C_out] (``ldm_jax.train.axis_rules`` maps
# them to mesh axes); the spatial taps are never sharded.
CONV_AXES = (None, None, "conv_in", "conv_out")
TIME_EMBEDDING_NORMS = ("default", "scale_shift")
RESAMPLES = ("none", "up", "down")


def group_norm(x, *, name, groups, epsilon, dtype, param_dtype=jnp.float32):
  """GroupNorm in float32 (exact two-pass variance, like torch), output cast to ``dtype``.

  Must be called inside an ``@nn.compact`` method; ``name`` becomes the submodule name.
  x: [..., C] with C divisible by ``groups``.
  """
  if x.shape[-1] % groups:
    raise ValueError(f"GroupNorm {name!r}: channels {x.shape[-1]} not divisible by groups={groups}")
  norm = GroupNorm(num_groups=groups, epsilon=epsilon, param_dtype=param_dtype, name=name)
  return norm(x).astype(dtype)


def conv(features, kernel, *, name, dtype, param_dtype, stride=1, padding=None, use_bias=True,
         kernel_init=nn.initializers.lecun_normal()):
  """A square ``kernel`` x ``kernel`` convolution with torch-like symmetric padding kernel // 2.

  ``padding``: an int (every side) or nn.Conv's ((top, bottom), (left, right)). The kernel
  [k, k, C_in, C_out] carries the logical axis names ``CONV_AXES``, the bias ("conv_out",);
  the initialisers are nn.Conv's defaults (lecun normal, zeros) unless ``kernel_init`` is given.
  """
  pad = kernel // 2 if padding is None else padding
  pads = ((pad, pad), (pad, pad)) if isinstance(pad, int) else pad
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pads,
                 use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                 kernel_init=nn.with_logical_partitioning(kernel_init, CONV_AXES),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                        CONV_AXES[-1:]))


def upsample_nearest(x, output_hw=None):
  """Nearest-neighbour upsampling of [B, H, W, C] by 2 (or to ``output_hw``, torch's rule)."""
  if output_hw is None:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  for axis, out in zip((1, 2), output_hw):
    size = x.shape[axis]
    # torch "nearest": src = floor(dst * in / out), in float32 like torch's kernel.
    idx = jnp.floor(jnp.arange(out, dtype=jnp.float32) * (size / out)).astype(jnp.int32)
    x = jnp.take(x, jnp.minimum(idx, size - 1), axis=axis)
  return x


def avg_pool2(x):
  """2x2 average pooling with stride 2 of [B, H, W, C]."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


class Downsample(nn.Module):
  """Halves H and W: a stride-2 3x3 conv (``conv``), or 2x2 average pooling if ``use_conv=False``.

  ``padding=1`` pads every side by 1 (UNet); ``padding=0`` pads only bottom and right by 1
  (diffusers' / CompVis' autoencoder), which matters for checkpoint parity.
  x: [B, H, W, C] -> [B, H/2, W/2, out_channels].
  """
  out_channels: int | None = None
  use_conv: bool = True
  padding: int = 1
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if not self.use_conv:
      if self.out_channels not in (None, x.shape[-1]):
        raise ValueError(f"Downsample without conv keeps channels: got out_channels="
                         f"{self.out_channels} for input channels {x.shape[-1]}")
      return avg_pool2(x)
    if self.padding not in (0, 1):
      raise ValueError(f"Downsample padding must be 0 (asymmetric) or 1, got {self.padding}")
    pads = ((0, 1), (0, 1)) if self.padding == 0 else ((1, 1), (1, 1))
    features = self.out_channels or x.shape[-1]
    return conv(features, 3, stride=2, padding=pads, name="conv", dtype=self.dtype,
                param_dtype=self.param_dtype)(x)


class Upsample(nn.Module):
  """Doubles H and W by nearest neighbour, then a 3x3 conv (``conv``) if ``use_conv``.

  x: [B, H, W, C] -> [B, 2H, 2W, out_channels] (or ``output_hw`` spatial size if given).
  """
  out_channels: int | None = None
  use_conv: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, output_hw=None):
    x = upsample_nearest(x, output_hw)
    if not self.use_conv:
      return x
    features = self.out_channels or x.shape[-1]
    return conv(features, 3, name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class ResnetBlock(nn.Module):
  """Pre-activation residual block (Ho et al. 2020 app. B; Rombach et al. 2022 app. G).

  h = conv1(silu(norm1(x))); with a timestep embedding ``temb`` [B, D]:
    "default":     h = norm2(h + time_emb_proj(silu(temb)))
    "scale_shift": h = norm2(h) * (1 + scale) + shift, (scale, shift) = split(time_emb_proj(...))
  out = (shortcut(x) + conv2(dropout(silu(h)))) / output_scale_factor,
  shortcut a 1x1 conv (``conv_shortcut``) when the channel count changes.
  ``resample`` "up"/"down" resizes x and h after the first activation (nearest x2 / 2x2 avg pool),
  as diffusers' ResnetBlock2D(up=True/down=True) with no FIR kernel.
  ``temb_channels``: width of ``temb``; None -> no ``time_emb_proj`` (the autoencoder).
  x: [B, H, W, C] -> [B, H', W', out_channels].
  """
  out_channels: int | None = None
  temb_channels: int | None = None
  groups: int = 32
  groups_out: int | None = None
  epsilon: float = 1e-6
  dropout: float = 0.0
  time_embedding_norm: str = "default"
  skip_time_act: bool = False
  output_scale_factor: float = 1.0
  use_in_shortcut: bool | None = None
  conv_shortcut_bias: bool = True
  resample: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb=None, *, train=False):
    if self.time_embedding_norm not in TIME_EMBEDDING_NORMS:
      raise ValueError(f"time_embedding_norm must be one of {TIME_EMBEDDING_NORMS}, "
                       f"got {self.time_embedding_norm!r}")
    if self.resample not in RESAMPLES:
      raise ValueError(f"resample must be one of {RESAMPLES}, got {self.resample!r}")
    out_ch = self.out_channels or x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm_kw = dict(epsilon=self.epsilon, **kw)
    x = x.astype(self.dtype)

    h = nn.silu(group_norm(x, name="norm1", groups=self.groups, **norm_kw))
    if self.resample == "up":
      x, h = upsample_nearest(x), upsample_nearest(h)
    elif self.resample == "down":
      x, h = avg_pool2(x), avg_pool2(h)
    h = conv(out_ch, 3, name="conv1", **kw)(h)

    scale_shift = None
    if self.temb_channels is not None:
      if temb is None:
        raise ValueError("ResnetBlock built with temb_channels needs a timestep embedding temb")
      if temb.shape[-1] != self.temb_channels:
        raise ValueError(f"temb: expected [B, {self.temb_channels}], got {temb.shape}")
      t = temb.astype(self.dtype)
      t = t if self.skip_time_act else nn.silu(t)
      width = out_ch * (2 if self.time_embedding_norm == "scale_shift" else 1)
      # [temb_channels, width]: from the time-embedding MLP's width to this block's channels.
      t = logical_dense(width, ("mlp", "conv_out"), name="time_emb_proj", **kw)(t)[:, None, None, :]
      if self.time_embedding_norm == "default":
        h = h + t
      else:
        scale_shift = jnp.split(t, 2, axis=-1)

    groups_out = self.groups_out or self.groups
    h = group_norm(h, name="norm2", groups=groups_out, **norm_kw)
    if scale_shift is not None:
      h = h * (1 + scale_shift[0]) + scale_shift[1]
    h = nn.silu(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(out_ch, 3, name="conv2", **kw)(h)

    shortcut = (x.shape[-1] != out_ch) if self.use_in_shortcut is None else self.use_in_shortcut
    if shortcut:
      x = conv(out_ch, 1, name="conv_shortcut", use_bias=self.conv_shortcut_bias, **kw)(x)
    out = x + h
    if self.output_scale_factor != 1.0:
      out = out / self.output_scale_factor
    return out
