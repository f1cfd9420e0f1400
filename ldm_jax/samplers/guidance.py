"""Classifier-free guidance (Ho & Salimans 2022) as a wrapper around a conditional model function.

The guided output is out_uncond + w (out_cond - out_uncond), applied to whatever the network
predicts (eps, x0 or v: the combination is linear, so it commutes with the conversions). w = 1 is
the conditional model, w = 0 the unconditional one.
"""

import jax
import jax.numpy as jnp

from ldm_jax.array_values import check_values


def classifier_free_guidance(model_fn, cond, null_cond, guidance_scale):
  """Returns guided_fn(x_t, t) for the samplers.

  model_fn(x_t, t, cond) -> output like x_t: x_t [N, ...], t float32 [N], cond a pytree whose leaves
  have batch axis N first (e.g. context [N, L, D] or labels int32 [N]).
  cond, null_cond: pytrees of the same structure with batch B (the conditioning and the "null"
  conditioning, e.g. the empty-prompt context or the extra null class label).
  guidance_scale: w, a finite scalar or [B] array. It may be a traced value (pass it as an
  argument of the jitted function), so changing it does not recompile; a concrete one is checked
  here (ValueError naming NaN / inf values).

  Each call evaluates the model ONCE on a batch of 2B: first the B unconditional rows, then the B
  conditional ones.
  """
  check_values(guidance_scale, "guidance_scale", expected="finite numbers (1: no guidance)")

  def guided_fn(x_t, t):
    batch = x_t.shape[0]
    both = jax.tree.map(lambda u, c: jnp.concatenate([u, c], axis=0), null_cond, cond)
    out = model_fn(jnp.concatenate([x_t, x_t], axis=0), jnp.concatenate([t, t], axis=0), both)
    out = jnp.asarray(out, jnp.float32)
    out_uncond, out_cond = out[:batch], out[batch:]
    w = jnp.asarray(guidance_scale, jnp.float32)
    w = w.reshape(w.shape + (1,) * (x_t.ndim - w.ndim))
    return out_uncond + w * (out_cond - out_uncond)

  return guided_fn
