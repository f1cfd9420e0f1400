"""Frechet distance: closed forms, scipy's sqrtm reference, invariance to batching and devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.sharding import NamedSharding, PartitionSpec as P

from ldm_jax.metrics import frechet


def _scipy_frechet(mu1, sigma1, mu2, sigma2):
  """pytorch-fid's formula: the trace of scipy's sqrtm of the product, in float64."""
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  diff = mu1 - mu2
  return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean).real


def _random_cov(rng, d, rank=None):
  a = rng.normal(size=(d, rank or d))
  return a @ a.T / (rank or d) + (0.0 if rank else 0.1 * np.eye(d))


def test_diagonal_closed_form():
  rng = np.random.default_rng(0)
  d = 12
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2.0 * np.sqrt(s1 * s2))
  got = frechet.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  got_jax = frechet.frechet_distance_jax(*(jnp.asarray(a, jnp.float32)
                                           for a in (mu1, np.diag(s1), mu2, np.diag(s2))))
  np.testing.assert_allclose(float(got_jax), expected, rtol=1e-4)


def test_one_dimensional_is_wasserstein2():
  # In 1-D, d^2 = (m1 - m2)^2 + (s1 - s2)^2 with s the standard deviations.
  got = frechet.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]),
                                 np.array([[0.25]]))
  np.testing.assert_allclose(got, 9.0 + 1.5**2, rtol=1e-12)


@pytest.mark.parametrize("rank", [None, 5])
def test_matches_scipy_sqrtm(rank):
  rng = np.random.default_rng(1)
  d = 16
  mu1, mu2 = rng.normal(size=d), 0.5 * rng.normal(size=d)
  sigma1, sigma2 = _random_cov(rng, d, rank), _random_cov(rng, d)
  expected = _scipy_frechet(mu1, sigma1, mu2, sigma2)
  np.testing.assert_allclose(frechet.frechet_distance(mu1, sigma1, mu2, sigma2), expected,
                             rtol=1e-7)
  got_jax = frechet.frechet_distance_jax(*(jnp.asarray(a, jnp.float32)
                                           for a in (mu1, sigma1, mu2, sigma2)))
  np.testing.assert_allclose(float(got_jax), expected, rtol=2e-3)


def test_identical_singular_gaussians_have_zero_distance():
  rng = np.random.default_rng(2)
  sigma = _random_cov(rng, 20, rank=4)  # singular, as with fewer samples than feature dims
  mu = rng.normal(size=20)
  got = frechet.frechet_distance(mu, sigma, mu, sigma)
  assert abs(got) < 1e-6 * np.trace(sigma)


def test_gaussian_from_stats_matches_numpy():
  rng = np.random.default_rng(3)
  x = (rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 2.0).astype(np.float32)
  mu, sigma = frechet.gaussian_from_stats(frechet.stats_from_features(x))
  np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-4,
                             atol=1e-4)


def test_from_stats_matches_host_computation():
  rng = np.random.default_rng(4)
  a = rng.normal(size=(400, 8)).astype(np.float32)
  b = (1.3 * rng.normal(size=(300, 8)) + 0.4).astype(np.float32)
  expected = _scipy_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
  got = frechet.frechet_distance_from_stats(frechet.stats_from_features(a),
                                            frechet.stats_from_features(b))
  np.testing.assert_allclose(got, expected, rtol=1e-4)


@pytest.fixture(scope="module")
def features():
  rng = np.random.default_rng(5)
  return (rng.normal(size=(256, 8)) @ rng.normal(size=(8, 8)) + 1.0).astype(np.float32)


def _assert_stats_close(got, expected):
  for g, e in zip(got, expected):
    np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-5, atol=1e-3)


def test_invariant_to_batch_split_order_and_padding(features):
  whole = frechet.stats_from_features(features)
  _assert_stats_close(frechet.stats_from_features(features, batch_size=7), whole)
  perm = np.random.default_rng(6).permutation(len(features))
  _assert_stats_close(frechet.stats_from_features(features[perm], batch_size=50), whole)
  # Two halves merged; and a zero-padded batch whose padding is masked out.
  halves = frechet.merge_stats(frechet.stats_from_features(features[:100]),
                               frechet.stats_from_features(features[100:]))
  _assert_stats_close(halves, whole)
  padded = np.concatenate([features, np.full((16, 8), 7.0, np.float32)])
  mask = np.arange(len(padded)) < len(features)
  masked = frechet.update_stats(frechet.init_stats(8), jnp.asarray(padded), jnp.asarray(mask))
  _assert_stats_close(masked, whole)
  assert float(masked.count) == len(features)


def test_sharded_over_8_devices(features):
  assert jax.device_count() == 8
  whole = frechet.stats_from_features(features)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.device_put(features, NamedSharding(mesh, P("data")))

  # (a) jit on a batch sharded over the mesh: XLA turns the sums into all-reduces.
  got_jit = jax.jit(frechet.update_stats)(frechet.init_stats(8), sharded)
  _assert_stats_close(got_jit, whole)

  # (b) shard_map: per-device statistics, then psum_stats over the axis.
  def per_device(x):
    return frechet.psum_stats(frechet.update_stats(frechet.init_stats(8), x), "data")

  got_shard_map = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("data"),
                                        out_specs=P()))(sharded)
  _assert_stats_close(got_shard_map, whole)

  # (c) pmap with an axis name, as on TPU pods.
  per_pmap = jax.pmap(per_device, axis_name="data")(features.reshape(8, 32, 8))
  _assert_stats_close(jax.tree.map(lambda a: a[0], per_pmap), whole)


def test_bad_shapes_raise():
  stats = frechet.init_stats(4)
  with pytest.raises(ValueError, match=r"\[B, 4\]"):
    frechet.update_stats(stats, jnp.zeros((3, 5)))
  with pytest.raises(ValueError, match="sigma2"):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
  with pytest.raises(ValueError, match="at least 2 samples"):
    frechet.gaussian_from_stats(frechet.update_stats(stats, jnp.zeros((1, 4))))
