"""GroupNorm (Wu & He 2018) of channels-last activations, reduced the way XLA:CPU reduces fastest.

  y = (x - mu_g) / sqrt(sigma_g^2 + eps) * gamma_c + beta_c

mu_g and sigma_g^2 are the mean and the biased variance of group g (its C / G channels at every
position), the variance in two passes (mean of (x - mu_g)^2, as torch and
``flax.linen.GroupNorm(use_fast_variance=False)`` compute it). The parameters are those of
``flax.linen.GroupNorm``: ``scale`` gamma [C] (ones) and ``bias`` beta [C] (zeros), so checkpoints
and converters do not change.

Why not ``flax.linen.GroupNorm``: it reduces [B, N, G, C/G] over the strided axes (1, 3), which
XLA:CPU (jaxlib 0.10) runs about 4x slower than a reduction over the positions alone (the issue
14 profile: 260 vs 57 us at [64, 8, 8, 96]). Here every statistic is a per-channel mean over the
positions, [B, N, C] -> [B, C], then a mean over each group's C/G channels, [B, G] (the same
sums, reassociated), and the output is one affine map per channel, d * a_c + beta_c with d = x - mu.
Forward + backward of GroupNorm + SiLU at [64, 8, 8, 96] takes 1.3 ms instead of 2.6 ms here.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

Dtype = Any


def _group_mean(v, groups):
  """[B, N, C] -> [B, C]: the mean over positions and over each channel's group, per channel."""
  b, _, c = v.shape
  per_group = jnp.mean(v, axis=1).reshape(b, groups, c // groups).mean(axis=-1)  # [B, G]
  return jnp.repeat(per_group, c // groups, axis=1)


def group_normalize(x, scale, bias, *, groups, epsilon):
  """GroupNorm of x [B, ..., C] (float32) with gamma ``scale`` [C] and beta ``bias`` [C]."""
  b, c = x.shape[0], x.shape[-1]
  if c % groups:
    raise ValueError(f"GroupNorm: channels {c} not divisible by groups={groups}")
  xf = x.reshape(b, -1, c)
  d = xf - _group_mean(xf, groups)[:, None, :]
  a = lax.rsqrt(_group_mean(jnp.square(d), groups) + epsilon) * scale  # [B, C]
  return (d * a[:, None, :] + bias).reshape(x.shape)


class GroupNorm(nn.Module):
  """``flax.linen.GroupNorm``'s parameters and result (two-pass variance), computed in float32."""
  num_groups: int
  epsilon: float = 1e-5
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    return group_normalize(x.astype(jnp.float32), scale.astype(jnp.float32),
                           bias.astype(jnp.float32), groups=self.num_groups, epsilon=self.epsilon)
