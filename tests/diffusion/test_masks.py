"""LaMa-style random inpainting masks: binary, shaped, deterministic per rng, traceable, both
families present, and the masked-fraction statistics the module docstring states."""

import jax
import numpy as np
import pytest

from ldm_jax.diffusion import masks

N = 400


@pytest.fixture(scope="module")
def drawn():
  """N masks of each family at 32 x 32 (jitted: the functions trace)."""
  shape = (N, 32, 32)
  return {f.__name__: np.asarray(jax.jit(f, static_argnums=1)(jax.random.key(0), shape))
          for f in (masks.strokes, masks.boxes, masks.large_masks)}


def test_masks_are_binary_float32_with_one_channel(drawn):
  for name, m in drawn.items():
    assert m.shape == (N, 32, 32, 1) and m.dtype == np.float32, name
    assert set(np.unique(m)) <= {0.0, 1.0}, name
    assert masks.masked_fraction(m).min() > 0, name  # every mask covers something


def test_non_square_shapes():
  m = masks.large_masks(jax.random.key(1), (4, 16, 48))
  assert m.shape == (4, 16, 48, 1)
  assert set(np.unique(np.asarray(m))) <= {0.0, 1.0}


def test_deterministic_per_rng():
  a = masks.large_masks(jax.random.key(7), (8, 32, 32))
  np.testing.assert_array_equal(a, masks.large_masks(jax.random.key(7), (8, 32, 32)))
  b = masks.large_masks(jax.random.key(8), (8, 32, 32))
  assert np.any(np.asarray(a) != np.asarray(b))
  assert len({np.asarray(a)[i].tobytes() for i in range(8)}) == 8  # examples differ


def test_strokes_and_boxes_both_present_in_large_masks(drawn):
  """large_masks is strokes or boxes per example: each example equals one of the two families'
  drawings for its example key, and both occur at the documented rate 1/2."""
  _, k_strokes, k_boxes = jax.random.split(jax.random.key(0), 3)
  s = np.asarray(masks.strokes(k_strokes, (N, 32, 32)))
  b = np.asarray(masks.boxes(k_boxes, (N, 32, 32)))
  m = drawn["large_masks"]
  from_strokes = np.all(m == s, axis=(1, 2, 3))
  from_boxes = np.all(m == b, axis=(1, 2, 3))
  assert np.all(from_strokes | from_boxes)
  rate = np.mean(from_strokes & ~from_boxes)
  assert abs(rate - masks.P_STROKES) < 5 * np.sqrt(masks.P_STROKES * (1 - masks.P_STROKES) / N)
  # The two families differ in shape: a one-box mask (1 draw in 4) fills its bounding box; a
  # capsule never does (its rounded ends leave the corners).
  assert sum(_bbox_filled(mm[..., 0]) for mm in b) > N // 6
  assert sum(_bbox_filled(mm[..., 0]) for mm in s) < N // 20


def _bbox_filled(m):
  rows, cols = np.nonzero(m)
  return m[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_boxes_keep_lamas_margin(drawn):
  """Boxes stay 10 / 256 of the side from the border (1 pixel at 32): the border is never masked."""
  b = drawn["boxes"][..., 0]
  assert not b[:, 0].any() and not b[:, -1].any() and not b[:, :, 0].any() and not b[:, :, -1].any()
  assert b[:, 1].any() and b[:, :, -2].any()  # but the next rows and columns are reached


def test_masked_fraction_statistics(drawn):
  """The module docstring's numbers (measured on 2000 masks) within the sampling error of N."""
  for name, mean in (("strokes", 0.41), ("boxes", 0.23), ("large_masks", 0.32)):
    f = masks.masked_fraction(drawn[name])
    assert abs(f.mean() - mean) < 4 * f.std() / np.sqrt(N) + 0.005, (name, f.mean())
  f = masks.masked_fraction(drawn["large_masks"])
  assert f.min() < 0.03 and f.max() > 0.7  # from a few pixels to most of the image
  assert 0.22 < np.median(f) < 0.36
