"""Single-head spatial self-attention of the autoencoder's mid-block (Rombach et al. 2022 app. G).

Parameter names mirror diffusers' ``Attention`` as used in ``UNetMidBlock2D`` of the VAE:
``group_norm``, ``to_q``, ``to_k``, ``to_v``, ``to_out_0`` (torch ``to_out.0``).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.models.embeddings import logical_dense
from ldm_jax.models.resnet import group_norm

Dtype = Any


class VAEAttention(nn.Module):
  """x + to_out_0(softmax(q k^T / sqrt(C)) v), q, k, v = to_{q,k,v}(group_norm(x)), one head.

  Attention goes through ``jax.nn.dot_product_attention`` (float32 logits and softmax even when
  ``dtype`` is bfloat16). x: [B, H, W, C] -> [B, H, W, C].
  """
  groups: int = 32
  epsilon: float = 1e-6
  implementation: str | None = None  # jax.nn.dot_product_attention's: None / "xla" or "cudnn"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    # Logical axes as in the UNet's attention (metadata for sharding rules; one head of width C).
    dense = lambda name, axes: logical_dense(c, axes, name=name, dtype=self.dtype,
                                             param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    y = group_norm(x, name="group_norm", groups=self.groups, epsilon=self.epsilon,
                   dtype=self.dtype, param_dtype=self.param_dtype)
    y = y.reshape(b, h * w, 1, c)  # [B, T, N=1 head, C]
    qkv_axes = ("embed", "heads")
    q, k, v = dense("to_q", qkv_axes)(y), dense("to_k", qkv_axes)(y), dense("to_v", qkv_axes)(y)
    y = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)  # scale 1/sqrt(C)
    y = dense("to_out_0", ("heads", "embed"))(y.reshape(b, h, w, c))
    return x + y
