"""Frechet distance between Gaussians fitted to features (the FID of Heusel et al. 2017).

    d^2 = ||mu_1 - mu_2||^2 + tr(Sigma_1) + tr(Sigma_2) - 2 tr((Sigma_1 Sigma_2)^{1/2})

Statistics are accumulated in a streaming `FeatureStats` pytree (count, sum, sum of outer
products) that is a plain sum over samples, so it does not depend on how the samples are split into
batches or devices: merge two with `merge_stats`, reduce over a `pmap`/`shard_map` axis with
`psum_stats`, or just call `update_stats` under `jit` on a sharded batch. It can be carried through
a training loop.

The matrix square root. `scipy.linalg.sqrtm(Sigma_1 @ Sigma_2)` (pytorch-fid's method) takes the
Schur form of a non-symmetric product, returns complex values and needs an eps * I fallback when
the product is near singular. We use only symmetric eigendecompositions instead: with
A = Sigma_1^{1/2} (from eigh of Sigma_1, negative round-off eigenvalues clipped to 0),
Sigma_1 Sigma_2 = A (A Sigma_2 A) A^{-1} is similar to the symmetric PSD matrix M = A Sigma_2 A, so
tr((Sigma_1 Sigma_2)^{1/2}) = sum_i sqrt(lambda_i(M)). Both steps are backward stable, real, and
need no regulariser; singular covariances (fewer samples than dimensions) are fine.

Precision. `frechet_distance` works in float64 numpy on the host; use it for reported scores.
`frechet_distance_jax` is the same algorithm in JAX (float32 unless x64 is enabled), jittable, for
monitoring inside a training loop: eigenvalue errors of ~eps * lambda_max enter through a square
root, so expect absolute errors of ~1e-3 relative to tr(Sigma) for well-conditioned covariances,
more for rank-deficient ones. The float32 accumulator itself loses precision in
sum_outer / n - mu mu^T when |mu| >> std of a feature; for the usual network features (ReLU or
normalised activations, |mu| ~ std) the relative error of Sigma stays ~1e-6.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class FeatureStats(NamedTuple):
  """Sufficient statistics of a set of feature vectors, summed over samples.

  Attributes:
    count: float [], number of samples (sum of the mask weights).
    sum: float [D], sum_n x_n.
    sum_outer: float [D, D], sum_n x_n x_n^T.
  """

  count: jax.Array
  sum: jax.Array
  sum_outer: jax.Array


def init_stats(dim: int, dtype=jnp.float32) -> FeatureStats:
  """Empty statistics for features of dimension `dim`."""
  if not isinstance(dim, (int, np.integer)) or dim < 1:
    raise ValueError(f"dim must be a positive int, got {dim!r}")
  return FeatureStats(
      count=jnp.zeros((), dtype),
      sum=jnp.zeros((dim,), dtype),
      sum_outer=jnp.zeros((dim, dim), dtype),
  )


@jax.jit
def update_stats(stats: FeatureStats, features: jax.Array, mask: jax.Array | None = None
                 ) -> FeatureStats:
  """Adds a batch of features [B, D] to `stats`; `mask` [B] (0/1 or bool) drops padded rows.

  Jittable; under `jit` with `features` sharded over devices the sums become all-reduces.
  """
  dim = stats.sum.shape[0]
  if features.ndim != 2 or features.shape[1] != dim:
    raise ValueError(f"features must have shape [B, {dim}], got {features.shape}")
  if mask is not None and mask.shape != features.shape[:1]:
    raise ValueError(f"mask must have shape [{features.shape[0]}], got {mask.shape}")
  x = features.astype(stats.sum.dtype)
  w = jnp.ones(x.shape[:1], x.dtype) if mask is None else mask.astype(x.dtype)
  xw = x * w[:, None]
  return FeatureStats(
      count=stats.count + jnp.sum(w),
      sum=stats.sum + jnp.sum(xw, axis=0),
      sum_outer=stats.sum_outer + jnp.matmul(xw.T, x, precision=jax.lax.Precision.HIGHEST),
  )


def merge_stats(a: FeatureStats, b: FeatureStats) -> FeatureStats:
  """Statistics of the union of two disjoint sets of samples."""
  return jax.tree.map(jnp.add, a, b)


def psum_stats(stats: FeatureStats, axis_name) -> FeatureStats:
  """Sums per-device statistics over a named axis (inside `pmap` or `shard_map`)."""
  return jax.lax.psum(stats, axis_name)


def stats_from_features(features, batch_size: int | None = None, dtype=jnp.float32
                        ) -> FeatureStats:
  """Statistics of features [N, D], optionally accumulated `batch_size` rows at a time."""
  features = jnp.asarray(features)
  if features.ndim != 2:
    raise ValueError(f"features must have shape [N, D], got {features.shape}")
  stats = init_stats(features.shape[1], dtype)
  n = features.shape[0]
  step = n if batch_size is None else batch_size
  for start in range(0, n, max(step, 1)):
    # dynamic_slice: one compiled slice per batch size, not one per offset.
    batch = jax.lax.dynamic_slice_in_dim(features, start, min(step, n - start))
    stats = update_stats(stats, batch)
  return stats


def gaussian_from_stats(stats: FeatureStats) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased covariance [D, D] (as `np.cov`) in float64 numpy on the host."""
  n = float(stats.count)
  if n < 2:
    raise ValueError(f"need at least 2 samples for a covariance, got count={n}")
  s = np.asarray(stats.sum, np.float64)
  ss = np.asarray(stats.sum_outer, np.float64)
  mu = s / n
  sigma = (ss - n * np.outer(mu, mu)) / (n - 1.0)
  return mu, 0.5 * (sigma + sigma.T)


def _check_gaussians(mu1, sigma1, mu2, sigma2):
  d = mu1.shape[-1]
  for name, m, shape in (("mu1", mu1, (d,)), ("mu2", mu2, (d,)),
                         ("sigma1", sigma1, (d, d)), ("sigma2", sigma2, (d, d))):
    if m.shape != shape:
      raise ValueError(f"{name} must have shape {shape}, got {m.shape}")


def _trace_sqrt_product(sigma1, sigma2, xp):
  """tr((Sigma_1 Sigma_2)^{1/2}) from eigh of Sigma_1^{1/2} Sigma_2 Sigma_1^{1/2}; xp: np or jnp."""
  w1, v1 = xp.linalg.eigh(0.5 * (sigma1 + sigma1.T))
  sqrt_sigma1 = (v1 * xp.sqrt(xp.clip(w1, 0.0, None))) @ v1.T
  m = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
  w = xp.linalg.eigvalsh(0.5 * (m + m.T))
  return xp.sum(xp.sqrt(xp.clip(w, 0.0, None)))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64 on the host.

  mu: [D]; sigma: [D, D] symmetric PSD.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  _check_gaussians(mu1, sigma1, mu2, sigma2)
  diff = mu1 - mu2
  tr_covmean = _trace_sqrt_product(sigma1, sigma2, np)
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


@jax.jit
def frechet_distance_jax(mu1, sigma1, mu2, sigma2) -> jax.Array:
  """`frechet_distance` in JAX (float32 unless x64 is on); for in-loop monitoring."""
  _check_gaussians(mu1, sigma1, mu2, sigma2)
  diff = mu1 - mu2
  tr_covmean = _trace_sqrt_product(sigma1, sigma2, jnp)
  return diff @ diff + jnp.trace(sigma1) + jnp.trace(sigma2) - 2.0 * tr_covmean


def frechet_distance_from_stats(stats1: FeatureStats, stats2: FeatureStats) -> float:
  """Squared Frechet distance between the Gaussians fitted to two accumulated feature sets."""
  if stats1.sum.shape != stats2.sum.shape:
    raise ValueError(f"feature dimensions differ: {stats1.sum.shape} vs {stats2.sum.shape}")
  return frechet_distance(*gaussian_from_stats(stats1), *gaussian_from_stats(stats2))
