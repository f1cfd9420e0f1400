"""Multi-head attention (Vaswani et al. 2017) and the GroupNorm self-attention block of the UNet.

Attention runs through ``jax.nn.dot_product_attention`` so fused kernels are used where the backend
has them; its XLA path computes the logits q k^T / sqrt(d) and the softmax in float32 even when
q, k, v are bfloat16 (the "upcast" of diffusers is therefore always on).

Submodule names mirror diffusers' ``Attention``: ``to_q``, ``to_k``, ``to_v``, ``to_out_0``
(= ``to_out.0``) and ``group_norm``.  Logical axis names: q/k/v kernels ("embed", "heads") (k, v
on a context: ("kv", "heads")), output kernel ("heads", "embed"), where "heads" is the flattened
heads * head_dim axis.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.models.embeddings import logical_dense
from ldm_jax.models.resnet import group_norm

Dtype = Any


def multi_head_attention(x, context, *, heads, head_dim, qkv_bias, dtype, param_dtype,
                         implementation=None):
  """Projects and attends; call inside an ``@nn.compact`` method (creates to_q/to_k/to_v/to_out_0).

  x: [B, L, C] queries; context: [B, S, D] keys/values (None: self-attention) -> [B, L, C].
  implementation: ``jax.nn.dot_product_attention``'s (None / "xla", or "cudnn" for the fused
  GPU kernel, which needs float16/bfloat16 inputs).
  """
  kw = dict(dtype=dtype, param_dtype=param_dtype)
  inner = heads * head_dim
  kv_in = x if context is None else context
  kv_axis = "embed" if context is None else "kv"
  q = logical_dense(inner, ("embed", "heads"), name="to_q", use_bias=qkv_bias, **kw)(x)
  k = logical_dense(inner, (kv_axis, "heads"), name="to_k", use_bias=qkv_bias, **kw)(kv_in)
  v = logical_dense(inner, (kv_axis, "heads"), name="to_v", use_bias=qkv_bias, **kw)(kv_in)
  split = lambda a: a.reshape(*a.shape[:2], heads, head_dim).astype(dtype)
  out = jax.nn.dot_product_attention(split(q), split(k), split(v),
                                     implementation=implementation)  # [B, L, heads, head_dim]
  out = out.reshape(*out.shape[:2], inner)
  return logical_dense(x.shape[-1], ("heads", "embed"), name="to_out_0", **kw)(out)


class Attention(nn.Module):
  """Multi-head (cross-)attention with no normalisation or residual (diffusers ``Attention``).

  x: [B, L, C]; context: [B, S, D] or None (self-attention) -> [B, L, C].
  """
  heads: int
  head_dim: int
  qkv_bias: bool = False
  implementation: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None):
    return multi_head_attention(x, context, heads=self.heads, head_dim=self.head_dim,
                                qkv_bias=self.qkv_bias, dtype=self.dtype,
                                param_dtype=self.param_dtype, implementation=self.implementation)


class AttentionBlock(nn.Module):
  """Spatial self-attention with GroupNorm and a residual (the UNet2DModel / ADM attention block).

  out = (x + attn(group_norm(x))) / rescale_output_factor over the H*W positions.
  ``groups=None`` leaves out the norm (diffusers' mid-block with scale-shift resnets).
  x: [B, H, W, C] -> [B, H, W, C].
  """
  heads: int
  head_dim: int
  groups: int | None = 32
  epsilon: float = 1e-5
  rescale_output_factor: float = 1.0
  implementation: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    x = x.astype(self.dtype)
    hs = x
    if self.groups is not None:
      hs = group_norm(hs, name="group_norm", groups=self.groups, epsilon=self.epsilon,
                      dtype=self.dtype, param_dtype=self.param_dtype)
    hs = multi_head_attention(hs.reshape(b, h * w, c), None, heads=self.heads,
                              head_dim=self.head_dim, qkv_bias=True, dtype=self.dtype,
                              param_dtype=self.param_dtype, implementation=self.implementation)
    out = x + hs.reshape(b, h, w, c)
    if self.rescale_output_factor != 1.0:
      out = out / self.rescale_output_factor
    return out
