"""Improved precision/recall (Kynkaanniemi et al. 2019) against brute-force float64 numpy."""

import numpy as np
import pytest

from ldm_jax.metrics import precision_recall as pr


def _brute_force(real, fake, k):
  """Direct transcription of the paper's definition, float64, all pairwise distances at once."""
  def dist(a, b):
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

  real_radii = np.sort(dist(real, real), axis=1)[:, k]  # column 0 is the point itself
  fake_radii = np.sort(dist(fake, fake), axis=1)[:, k]
  precision = np.mean((dist(fake, real) <= real_radii[None, :]).any(axis=1))
  recall = np.mean((dist(real, fake) <= fake_radii[None, :]).any(axis=1))
  return precision, recall


@pytest.fixture(scope="module")
def sets():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(300, 5)).astype(np.float32)
  fake = (0.7 * rng.normal(size=(250, 5)) + 0.8).astype(np.float32)  # narrower, shifted
  return real, fake


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_brute_force(sets, k):
  real, fake = sets
  expected = _brute_force(real.astype(np.float64), fake.astype(np.float64), k)
  got = pr.precision_recall(real, fake, k=k, block_size=64)  # 64 divides neither set size
  np.testing.assert_allclose(got, expected, atol=1e-12)
  assert 0.0 < got[0] < 1.0 and 0.0 < got[1] < 1.0


def test_knn_radii_match_sorted_distances(sets):
  real, _ = sets
  d2 = ((real[:, None, :].astype(np.float64) - real[None, :, :]) ** 2).sum(-1)
  expected = np.sort(d2, axis=1)[:, 3]
  np.testing.assert_allclose(pr.knn_sq_radii(real, k=3, block_size=128), expected, rtol=1e-4)


def test_sanity_cases(sets):
  real, _ = sets
  assert pr.precision_recall(real, real) == (1.0, 1.0)
  assert pr.precision_recall(real, real + 100.0) == (0.0, 0.0)
  # A collapsed generator, all samples in a tiny ball at one real point: every sample is
  # realistic (precision 1) but they cover only that point of the data (recall 1/N).
  collapsed = real[0] + 1e-3 * np.random.default_rng(1).normal(size=(50, 5)).astype(np.float32)
  assert pr.precision_recall(real, collapsed) == pytest.approx((1.0, 1.0 / len(real)))

def test_bad_arguments_raise(sets):
  real, fake = sets
  with pytest.raises(ValueError, match="same D"):
    pr.precision_recall(real, fake[:, :3])
  with pytest.raises(ValueError, match="k must be"):
    pr.precision_recall(real[:3], fake, k=3)
