"""Spatial transformer: image features cross-attend to a context (Rombach et al. 2022, sec. 3.3).

``SpatialTransformer`` is diffusers' ``Transformer2DModel`` (continuous input) / CompVis'
``SpatialTransformer``: GroupNorm (eps 1e-6) -> proj_in (1x1 conv, or a linear layer when
``use_linear_projection``) -> ``depth`` x ``BasicTransformerBlock`` -> proj_out -> + x.
A ``BasicTransformerBlock`` is pre-LayerNorm (eps 1e-5) self-attention, cross-attention on the
context, and a GEGLU feed-forward (Shazeer 2020) of width 4 * C, each with a residual.

Submodule names mirror diffusers (``norm``, ``proj_in``, ``transformer_blocks_0``, ``norm1``,
``attn1``, ``norm2``, ``attn2``, ``norm3``, ``ff/net_0/proj``, ``ff/net_2``, ``proj_out``).
Logical axis names: feed-forward kernels ("embed", "mlp") and ("mlp", "embed"); linear
projections ("embed", "embed"), 1x1 conv projections ``resnet.CONV_AXES``; attention as in
``ldm_jax.models.attention``.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ldm_jax.models.attention import Attention
from ldm_jax.models.embeddings import logical_dense, sincos_2d
from ldm_jax.models.resnet import conv, group_norm

Dtype = Any
# Position features added to the tokens after proj_in: "none" (diffusers / CompVis: the image side
# knows positions only through the convolutions' zero padding) or "sincos_2d" (fixed 2-D sin-cos
# features, `embeddings.sincos_2d`, as ViT / DiT add to patch tokens), so that each query of the
# cross-attention knows where it is, e.g. on which half of a two-digit canvas.
POSITION_EMBEDDINGS = ("none", "sincos_2d")


def layer_norm(x, *, name, epsilon, dtype, param_dtype):
  """LayerNorm over the last axis in float32 (exact variance), output cast to ``dtype``."""
  norm = nn.LayerNorm(epsilon=epsilon, dtype=jnp.float32, param_dtype=param_dtype,
                      use_fast_variance=False, name=name)
  return norm(x.astype(jnp.float32)).astype(dtype)


class GEGLU(nn.Module):
  """Gated GELU (Shazeer 2020): a * gelu(g), (a, g) = split(proj(x)).  [..., C] -> [..., dim]."""
  dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = logical_dense(2 * self.dim, ("embed", "mlp"), name="proj", dtype=self.dtype,
                      param_dtype=self.param_dtype)(x)
    a, g = jnp.split(h, 2, axis=-1)
    return a * nn.gelu(g, approximate=False)


class FeedForward(nn.Module):
  """GEGLU feed-forward of hidden width ``mult`` * C: net_2(dropout(net_0(x))).  [B, L, C]."""
  mult: int = 4
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train=False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = GEGLU(self.mult * x.shape[-1], name="net_0", **kw)(x)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return logical_dense(x.shape[-1], ("mlp", "embed"), name="net_2", **kw)(h)


class BasicTransformerBlock(nn.Module):
  """x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x)).  [B, L, C].

  only_cross_attention: attn1 attends to the context too (LDM's disable_self_attn, diffusers'
  only_cross_attention; the SD x4 upscaler's first levels)."""
  heads: int
  head_dim: int
  only_cross_attention: bool = False
  dropout: float = 0.0
  norm_eps: float = 1e-5
  attention_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, *, train=False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn = lambda name: Attention(self.heads, self.head_dim, name=name,
                                  implementation=self.attention_impl, **kw)
    norm = lambda h, name: layer_norm(h, name=name, epsilon=self.norm_eps, **kw)
    drop = lambda h: nn.Dropout(self.dropout, deterministic=not train)(h)
    x = x + drop(attn("attn1")(norm(x, "norm1"), context if self.only_cross_attention else None))
    x = x + drop(attn("attn2")(norm(x, "norm2"), context))
    return x + FeedForward(dropout=self.dropout, name="ff", **kw)(norm(x, "norm3"), train=train)


class SpatialTransformer(nn.Module):
  """Transformer over the H*W positions of a feature map, conditioned on a context sequence.

  inner width = heads * head_dim.  x: [B, H, W, C]; context: [B, S, D] -> [B, H, W, C].
  """
  heads: int
  head_dim: int
  depth: int = 1
  groups: int = 32
  use_linear_projection: bool = False
  dropout: float = 0.0
  attention_impl: str | None = None  # jax.nn.dot_product_attention implementation
  position_embedding: str = "none"  # POSITION_EMBEDDINGS
  only_cross_attention: bool = False  # BasicTransformerBlock's
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, *, train=False):
    if self.position_embedding not in POSITION_EMBEDDINGS:
      raise ValueError(f"position_embedding {self.position_embedding!r}; valid choices: "
                       f"{POSITION_EMBEDDINGS}")
    b, hgt, wid, c = x.shape
    inner = self.heads * self.head_dim
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    h = group_norm(x, name="norm", groups=self.groups, epsilon=1e-6, **kw)
    if self.use_linear_projection:
      h = logical_dense(inner, ("embed", "embed"), name="proj_in", **kw)(h.reshape(b, -1, c))
    else:
      h = conv(inner, 1, name="proj_in", **kw)(h).reshape(b, -1, inner)
    if self.position_embedding == "sincos_2d":
      h = h + sincos_2d(hgt, wid, inner).astype(h.dtype)[None]
    context = context.astype(self.dtype)
    for i in range(self.depth):
      h = BasicTransformerBlock(self.heads, self.head_dim, dropout=self.dropout,
                                attention_impl=self.attention_impl,
                                only_cross_attention=self.only_cross_attention,
                                name=f"transformer_blocks_{i}", **kw)(h, context, train=train)
    if self.use_linear_projection:
      h = logical_dense(c, ("embed", "embed"), name="proj_out", **kw)(h)
      h = h.reshape(b, hgt, wid, c)
    else:
      h = conv(c, 1, name="proj_out", **kw)(h.reshape(b, hgt, wid, inner))
    return x + h
