"""The rate of an autoencoder's latent code: how many bits the first stage passes to the second.

KL autoencoders (Rombach et al. 2022, sec. 3.1; the beta-VAE view of Alemi et al. 2018): the rate
is R = KL(q(z|x) || N(0, I)), the number of bits per image the posterior carries beyond the prior,
summed over the latent elements. With the tiny KL weight LDM uses (1e-6) it is large; it falls as
the weight rises. VQ autoencoders: each latent position holds one of K codes, so the code rate is
at most log2 K bits per position (equality when the codes are used uniformly and independently).
Divide by the image's H * W * C for bits per pixel dimension, comparable with bits/dim of pixel
models.
"""

import math

import jax
import jax.numpy as jnp

from ldm_jax.diffusion.likelihood import normal_kl

LN2 = math.log(2.0)


@jax.jit
def kl_rate_bits(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, e^logvar) || N(0, I)) per example in bits [B], summed over the non-batch axes of
  mean / logvar [B, ...] (the posterior of a KL autoencoder's `encode`)."""
  mean, logvar = jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32)
  kl = normal_kl(mean, logvar, 0.0, 0.0)
  return jnp.sum(kl, axis=tuple(range(1, mean.ndim))) / LN2


def vq_rate_bits(num_positions: int, num_codes: int) -> float:
  """The upper bound log2(K) * positions on the code rate of a VQ latent with `num_positions`
  latent positions (h * w) and a codebook of K = num_codes entries, in bits per image."""
  if num_positions < 1 or num_codes < 2:
    raise ValueError(f"num_positions must be >= 1 and num_codes >= 2, got {num_positions}, {num_codes}.")
  return num_positions * math.log2(num_codes)
