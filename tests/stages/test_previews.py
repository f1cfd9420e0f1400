"""ldm_jax.stages.previews.concat_view: the conditioning row of a concat model's training preview."""

import jax
import numpy as np

from ldm_jax.data import mnist_pairs, to_float
from ldm_jax.diffusion import concat
from ldm_jax.stages import previews


def test_mask_view_is_the_masked_image_with_the_loss_masks():
  x = np.asarray(to_float(np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1), np.uint8)))
  rng = jax.random.key(3)
  shown, m = previews.concat_view("inpaint_large_masks", rng, x)
  np.testing.assert_array_equal(m, concat.inpaint_large_masks(rng, x))  # the loss's masks
  m = np.asarray(m)
  assert 0 < m.mean() < 1 and set(np.unique(m)) == {0.0, 1.0}
  np.testing.assert_array_equal(np.asarray(shown)[m[..., 0] == 1], 0.0)  # masked: mid-gray
  np.testing.assert_array_equal(np.asarray(shown)[m[..., 0] == 0], x[m[..., 0] == 0])


def test_segmentation_view_shows_each_class_as_its_gray_level():
  x, y = mnist_pairs.MnistPairs("heldout").read([0, 1])
  xf = to_float(x)
  shown, s = previews.concat_view("segmentation_pairs", None, xf, y)
  np.testing.assert_array_equal(s, concat.segmentation_pairs(None, xf, y))
  s = np.asarray(s)
  assert s.max() > 0 and (s == 0).any()
  np.testing.assert_allclose(np.asarray(shown)[..., 0], 2.0 * s / 10 - 1.0, atol=1e-6)


def test_image_view_is_the_low_res_image_nearest_upsampled():
  x = np.asarray(to_float(np.random.default_rng(1).integers(0, 256, (2, 32, 32, 1), np.uint8)))
  shown, low = previews.concat_view("bicubic_x4", None, x)
  assert low.shape == (2, 8, 8, 1) and shown.shape == x.shape
  np.testing.assert_array_equal(np.asarray(shown)[:, 4 * 3 + 2, 4 * 5 + 1], np.asarray(low)[:, 3, 5])
