"""Timestep and class embeddings of the diffusion UNet (sinusoidal features + MLP, label table).

The sinusoidal features follow Vaswani et al. 2017 / Ho et al. 2020 app. B with diffusers'
conventions (``get_timestep_embedding``): frequencies
  w_i = exp(-log(max_period) * i / (half - downscale_freq_shift)),  i = 0 .. half - 1,
features [sin(t w), cos(t w)], or [cos(t w), sin(t w)] if ``flip_sin_to_cos`` (Stable Diffusion,
LDM). Fractional t is allowed (continuous-time samplers).

Logical axis names on parameters: kernels of the MLP are ("embed", "mlp") and ("mlp", "mlp");
the class table is ("vocab", "mlp").
"""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


def timestep_embedding(t, dim, *, flip_sin_to_cos=True, downscale_freq_shift=1.0,
                       max_period=10000.0):
  """Sinusoidal features of timesteps, in float32.  t: [B] (int or float) -> [B, dim].

  Odd ``dim`` gets a trailing zero column, as diffusers does.
  """
  t = jnp.asarray(t)
  if t.ndim != 1:
    raise ValueError(f"timesteps: expected shape [B], got {t.shape}")
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
  freqs = jnp.exp(exponent / (half - downscale_freq_shift))
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  sin, cos = jnp.sin(args), jnp.cos(args)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def sincos_2d(height: int, width: int, dim: int, *, max_period: float = 10000.0):
  """Fixed 2-D sinusoidal position features (the ViT / MAE form), float32 [height * width, dim].

  The first half of the channels encode the row, the second half the column, each as
  [sin(p w), cos(p w)] with w_i = max_period ** (-i / (dim / 4)), i = 0 .. dim / 4 - 1, p the
  integer row or column index; rows are flattened row-major (the order of x.reshape(b, -1, c)).
  ``dim`` must be a multiple of 4.
  """
  if dim % 4:
    raise ValueError(f"sincos_2d needs a width divisible by 4, got {dim}")
  quarter = dim // 4
  freqs = max_period ** (-jnp.arange(quarter, dtype=jnp.float32) / quarter)
  def axis_features(n):
    args = jnp.arange(n, dtype=jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)  # [n, dim / 2]
  rows = jnp.repeat(axis_features(height), width, axis=0)
  cols = jnp.tile(axis_features(width), (height, 1))
  return jnp.concatenate([rows, cols], axis=-1)


def logical_dense(features, axes, *, name, dtype, param_dtype, use_bias=True):
  """nn.Dense whose kernel carries logical axis names ``axes`` (bias: the output axis)."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[-1:]))


class TimestepEmbedding(nn.Module):
  """Two-layer MLP on timestep features: linear_2(silu(linear_1(x))).  [B, D_in] -> [B, dim]."""
  dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = logical_dense(self.dim, ("embed", "mlp"), name="linear_1", **kw)(x.astype(self.dtype))
    return logical_dense(self.dim, ("mlp", "mlp"), name="linear_2", **kw)(nn.silu(x))


def class_embedding(num_classes, dim, *, name, param_dtype):
  """Learned table of class-label embeddings (the "adm" / class-conditional mode), [N, dim]."""
  init = nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "mlp"))
  return nn.Embed(num_classes, dim, param_dtype=param_dtype, embedding_init=init, name=name)
