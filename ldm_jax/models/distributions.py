"""Diagonal Gaussian posterior q(z|x) of the KL-regularised autoencoder (LDM sec. 3.1)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp

LOGVAR_RANGE = (-30.0, 20.0)  # clamp of log sigma^2, as in the CompVis / diffusers posterior


class DiagonalGaussian(NamedTuple):
  """N(mean, diag(exp(logvar))). mean, logvar: [B, h, w, c] (float32 recommended).

  A pytree, so it can be returned from ``jax.jit`` and ``Module.apply``.
  """
  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments):
    """Splits [B, h, w, 2c] encoder moments into (mean, logvar), logvar clamped to LOGVAR_RANGE."""
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return cls(mean, jnp.clip(logvar, *LOGVAR_RANGE))

  @property
  def std(self):
    return jnp.exp(0.5 * self.logvar)

  def sample(self, rng):
    """z = mean + std * eps, eps ~ N(0, I) (reparameterisation; differentiable in mean, logvar)."""
    eps = jax.random.normal(rng, self.mean.shape, self.mean.dtype)
    return self.mean + self.std * eps

  def mode(self):
    return self.mean

  def kl(self, other=None):
    """KL(self || other) summed over h, w, c -> [B]; ``other`` None means N(0, I)."""
    if other is None:
      terms = jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar
    else:
      terms = (jnp.square(self.mean - other.mean) * jnp.exp(-other.logvar)
               + jnp.exp(self.logvar - other.logvar) - 1.0 - self.logvar + other.logvar)
    return 0.5 * jnp.sum(terms, axis=tuple(range(1, terms.ndim)))

  def nll(self, x):
    """-log N(x; mean, exp(logvar)) summed over h, w, c -> [B]."""
    terms = (jnp.log(2.0 * jnp.pi) + self.logvar
             + jnp.square(x - self.mean) * jnp.exp(-self.logvar))
    return 0.5 * jnp.sum(terms, axis=tuple(range(1, terms.ndim)))
