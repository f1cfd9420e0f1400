"""Exponential moving average of the parameters, with LDM's optional warm-up of the decay.

LDM's `LitEma` (CompVis/latent-diffusion, ldm/modules/ema.py) counts its updates n = 1, 2, ...
and uses the decay min(decay, (1 + n) / (10 + n)) so that early averages are not dominated by
the random initialisation; the update is  ema <- ema - (1 - d) * (ema - theta).
"""

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def ema_decay(decay: float, num_updates: jax.Array, warmup: bool = True) -> jax.Array:
  """The decay d_n used by the n-th EMA update (n counts from 1), float32 []."""
  d = jnp.asarray(decay, jnp.float32)
  if not warmup:
    return d
  n = jnp.asarray(num_updates, jnp.float32)
  return jnp.minimum(d, (1.0 + n) / (10.0 + n))


def ema_update(ema_params: PyTree, params: PyTree, decay: jax.Array) -> PyTree:
  """ema <- ema - (1 - d) * (ema - theta), leaf by leaf in the EMA's own dtype."""
  def update(e, p):
    return (e - (1.0 - decay) * (e - p.astype(e.dtype))).astype(e.dtype)
  return jax.tree.map(update, ema_params, params)
