"""Vector quantiser with a straight-through estimator (van den Oord et al. 2017; Esser et al. 2021).

Parameter name mirrors diffusers' ``VectorQuantizer``: ``embedding`` (torch ``embedding.weight``),
the codebook e [K, D].
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def nearest_code(z, codebook):
  """Index of the nearest codebook row (Euclidean) for every vector. z: [..., D]; codebook: [K, D].

  Uses ||z||^2 - 2 z.e + ||e||^2 in float32 at full matmul precision -> int32 [...].
  """
  z = z.astype(jnp.float32)
  e = codebook.astype(jnp.float32)
  d = (jnp.sum(z * z, axis=-1, keepdims=True)
       - 2.0 * jnp.einsum("...d,kd->...k", z, e, precision=jax.lax.Precision.HIGHEST)
       + jnp.sum(e * e, axis=-1))
  return jnp.argmin(d, axis=-1).astype(jnp.int32)


def vq_loss(z, z_q, beta, legacy=True):
  """Codebook + beta * commitment loss (scalar, float32).

  legacy=True reproduces the taming-transformers / diffusers default, which puts beta on the
  codebook term: mean((sg[z_q] - z)^2) + beta * mean((z_q - sg[z])^2); legacy=False is the paper's
  mean((z_q - sg[z])^2) + beta * mean((sg[z_q] - z)^2).
  """
  sg = jax.lax.stop_gradient
  z, z_q = z.astype(jnp.float32), z_q.astype(jnp.float32)
  commit = jnp.mean(jnp.square(sg(z_q) - z))
  codebook = jnp.mean(jnp.square(z_q - sg(z)))
  return commit + beta * codebook if legacy else codebook + beta * commit


class VectorQuantizer(nn.Module):
  """z [B, h, w, D] -> (z_q straight-through [B, h, w, D], indices int32 [B, h, w], loss scalar).

  Forward value of z_q is the nearest code; its gradient w.r.t. z is the identity
  (z_q = z + sg[e_k - z]). The codebook is initialised U(-1/K, 1/K) like the reference.
  Distances and code lookups run in float32 whatever the network's compute dtype.
  """
  num_embeddings: int
  embed_dim: int
  beta: float = 0.25
  legacy: bool = True
  param_dtype: Dtype = jnp.float32

  def setup(self):
    k = self.num_embeddings
    uniform = lambda rng, shape, dtype: jax.random.uniform(rng, shape, dtype, -1.0 / k, 1.0 / k)
    init = nn.with_logical_partitioning(uniform, ("vocab", "embed"))  # codebook e [K, D]
    self.embedding = nn.Embed(k, self.embed_dim, embedding_init=init, dtype=jnp.float32,
                              param_dtype=self.param_dtype)

  def __call__(self, z):
    if z.shape[-1] != self.embed_dim:
      raise ValueError(f"VectorQuantizer: expected [..., {self.embed_dim}], got {z.shape}")
    indices = nearest_code(z, self.embedding.embedding)
    e = self.embedding(indices).astype(z.dtype)
    loss = vq_loss(z, e, self.beta, self.legacy)
    z_q = z + jax.lax.stop_gradient(e - z)
    return z_q, indices, loss

  def lookup(self, indices):
    """Codebook vectors of int ``indices`` [...] -> [..., D]."""
    return self.embedding(indices)
