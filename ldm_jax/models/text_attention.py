"""Multi-head self-attention over a token sequence (Vaswani et al. 2017), for the text encoders.

The projections are named as in transformers' ``CLIPAttention`` and diffusers' ``LDMBertAttention``
(``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) so their weights load one-to-one. Attention runs
through ``jax.nn.dot_product_attention``, like ``ldm_jax.models.attention``: logits q k^T / sqrt(d)
and the softmax in float32 whatever ``dtype`` is, an optional causal mask (CLIP's text tower:
token i attends to tokens <= i), and ``attention_impl`` None / "xla" or "cudnn" (fused GPU kernel,
float16 / bfloat16 only). Logical axis names as in ``ldm_jax.models.attention``.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.models import precision
from ldm_jax.models.embeddings import logical_dense

Dtype = Any
ATTENTION_IMPLS = (None, "xla", "cudnn")  # jax.nn.dot_product_attention(implementation=...)


def check_attention_impl(impl):
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl {impl!r} not in {ATTENTION_IMPLS}")
  precision.attention_impl(impl)  # "cudnn" off a GPU: a clear error naming the backend


class SelfAttention(nn.Module):
  """out_proj(softmax(q k^T / sqrt(head_dim) [+ causal mask]) v).  x: [B, L, C] -> [B, L, C].

  Inner width heads * head_dim may differ from C (LDM's BERT: 8 x 64 on 1280 channels).
  """
  heads: int
  head_dim: int
  qkv_bias: bool = True
  causal: bool = False
  attention_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    inner = self.heads * self.head_dim
    proj = lambda name: logical_dense(inner, ("embed", "heads"), name=name,
                                      use_bias=self.qkv_bias, **kw)(x)
    q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
    split = lambda a: a.reshape(*a.shape[:2], self.heads, self.head_dim).astype(self.dtype)
    out = jax.nn.dot_product_attention(split(q), split(k), split(v), is_causal=self.causal,
                                       implementation=self.attention_impl)  # [B, L, H, D]
    out = out.reshape(*out.shape[:2], inner)
    return logical_dense(x.shape[-1], ("heads", "embed"), name="out_proj", **kw)(out)
