"""Improved precision and recall of a generative model (Kynkaanniemi et al. 2019, sec. 3).

The manifold of a feature set Phi is approximated by the union of balls B(phi, NND_k(phi)) around
each phi in Phi, where NND_k(phi) is the distance to its k-th nearest neighbour in Phi (eq. 2,
k = 3 as in the paper). Then

    precision = fraction of generated features inside manifold(real)       (eq. 3)
    recall    = fraction of real features inside manifold(generated).

Distances are computed in blocks of `block_size` query rows against the whole reference set
([block_size, N] at a time, squared distances from ||a||^2 + ||b||^2 - 2 a.b in float32), so memory
is O(block_size * N) and the whole computation is one compiled program (`lax.map` over blocks).
Squared distances are compared with squared radii: the same test, without square roots.
"""

import functools

import jax
import jax.numpy as jnp

DEFAULT_K = 3


def pairwise_sq_distances(a: jax.Array, b: jax.Array) -> jax.Array:
  """Squared Euclidean distances [Na, Nb] between rows of a [Na, D] and b [Nb, D], clipped at 0."""
  hi = jax.lax.Precision.HIGHEST
  ab = jnp.matmul(a, b.T, precision=hi)
  d = jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :] - 2.0 * ab
  return jnp.maximum(d, 0.0)


def _map_row_blocks(fn, rows: jax.Array, block_size: int) -> jax.Array:
  """Applies fn to rows [N, D] in blocks of block_size rows (zero-padded) and concatenates."""
  n = rows.shape[0]
  num_blocks = -(-n // block_size)
  padded = jnp.pad(rows, ((0, num_blocks * block_size - n), (0, 0)))
  out = jax.lax.map(fn, padded.reshape(num_blocks, block_size, rows.shape[1]))
  return out.reshape((num_blocks * block_size,) + out.shape[2:])[:n]


@functools.partial(jax.jit, static_argnames=("k", "block_size"))
def knn_sq_radii(features: jax.Array, k: int = DEFAULT_K, block_size: int = 512) -> jax.Array:
  """Squared distance [N] from each row of features [N, D] to its k-th nearest other row.

  Each row's distance to itself (0) is among the k + 1 smallest, so we take the (k+1)-th smallest,
  as the authors' code does.
  """
  x = features.astype(jnp.float32)

  def block(q):
    neg_top, _ = jax.lax.top_k(-pairwise_sq_distances(q, x), k + 1)
    return -neg_top[:, k]

  return _map_row_blocks(block, x, block_size)


@functools.partial(jax.jit, static_argnames=("block_size",))
def in_manifold(queries: jax.Array, support: jax.Array, support_sq_radii: jax.Array,
                block_size: int = 512) -> jax.Array:
  """bool [Nq]: whether each query [Nq, D] lies in some ball B(support_j, radius_j)."""
  q_all = queries.astype(jnp.float32)
  s = support.astype(jnp.float32)

  def block(q):
    return jnp.any(pairwise_sq_distances(q, s) <= support_sq_radii[None, :], axis=1)

  return _map_row_blocks(block, q_all, block_size)


def precision_recall(real_features, fake_features, *, k: int = DEFAULT_K, block_size: int = 512
                     ) -> tuple[float, float]:
  """Improved (precision, recall) of fake_features [Nf, D] w.r.t. real_features [Nr, D]."""
  real = jnp.asarray(real_features)
  fake = jnp.asarray(fake_features)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(
        f"features must be [Nr, D] and [Nf, D] with the same D, got {real.shape} and {fake.shape}")
  if not isinstance(k, int) or k < 1 or k >= min(real.shape[0], fake.shape[0]):
    raise ValueError(
        f"k must be an int in [1, {min(real.shape[0], fake.shape[0]) - 1}] (fewer than the "
        f"number of samples of either set), got {k!r}")
  if not isinstance(block_size, int) or block_size < 1:
    raise ValueError(f"block_size must be a positive int, got {block_size!r}")
  real_radii = knn_sq_radii(real, k=k, block_size=block_size)
  fake_radii = knn_sq_radii(fake, k=k, block_size=block_size)
  precision = jnp.mean(in_manifold(fake, real, real_radii, block_size=block_size))
  recall = jnp.mean(in_manifold(real, fake, fake_radii, block_size=block_size))
  return float(precision), float(recall)
