"""Concat conditioning (LDM-SR): the bicubic x4 degradation and the resize to the latent grid
against PIL's float32 bicubic resize (Keys a = -0.5, antialiased when shrinking), clipping to
[-1, 1], guidance dropout to zeros, and the registry's errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ldm_jax.diffusion import concat


def _pil_resize(x, hw):
  """x float [B, H, W, C] -> [B, h, w, C] by PIL's BICUBIC on mode "F" images, in float64."""
  out = np.empty((x.shape[0], *hw, x.shape[-1]))
  for b in range(x.shape[0]):
    for ch in range(x.shape[-1]):
      im = Image.fromarray(np.asarray(x[b, :, :, ch], np.float32), mode="F")
      out[b, :, :, ch] = np.asarray(im.resize((hw[1], hw[0]), Image.BICUBIC), np.float64)
  return out


@pytest.fixture(scope="module")
def images():
  """Images [2, 32, 32, 3] in [-1, 1] with sharp edges (so bicubic overshoots and is clipped)."""
  rng = np.random.default_rng(0)
  x = rng.uniform(-1.0, 1.0, (2, 32, 32, 3))
  x[:, 8:20, 8:20] = np.sign(x[:, 8:20, 8:20])  # +-1 blocks
  return x.astype(np.float32)


def test_bicubic_x4_equals_pil_bicubic_clipped(images):
  got = np.asarray(concat.bicubic_x4(None, jnp.asarray(images)), np.float64)
  want = np.clip(_pil_resize(images, (8, 8)), -1.0, 1.0)
  assert got.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert got.min() >= -1.0 and got.max() <= 1.0
  # Antialiased, not point-sampled (which would give +-1): a x4 shrink of a +-1 checkerboard of
  # period 2 is 0 away from the border (where the 16-pixel kernel is cut and renormalised).
  board = np.where((np.indices((32, 32)).sum(0) % 2) == 0, 1.0, -1.0)[None, :, :, None]
  low = np.asarray(concat.bicubic_x4(None, jnp.asarray(board, jnp.float32)))
  np.testing.assert_allclose(low[:, 2:-2, 2:-2], 0.0, atol=1e-6)
  assert np.abs(low).max() < 0.01


def test_non_square_images_shrink_each_side_by_four(images):
  x = images[:, :, :16]
  got = np.asarray(concat.conditioning_map("bicubic_x4", None, jnp.asarray(x), (8, 4)))
  np.testing.assert_allclose(got, np.clip(_pil_resize(x, (8, 4)), -1, 1), atol=1e-6)
  assert concat.low_res_hw("bicubic_x4", (32, 64)) == (8, 16)


def test_resize_to_the_latent_grid(images):
  low = np.asarray(concat.bicubic_x4(None, jnp.asarray(images)))
  # f = 4 (LDM-SR): the low-resolution image is the map itself.
  np.testing.assert_array_equal(concat.to_latent_grid(low, (8, 8)), low)
  # Another latent size: the bicubic resize of the low-resolution image (here up to 32 x 32, as
  # for the f = 1 test autoencoder), clipped to [-1, 1].
  up = np.asarray(concat.to_latent_grid(low, (32, 32)), np.float64)
  np.testing.assert_allclose(up, np.clip(_pil_resize(low, (32, 32)), -1, 1), atol=1e-6)
  c = np.asarray(concat.conditioning_map("bicubic_x4", None, jnp.asarray(images), (16, 16)))
  np.testing.assert_allclose(c, np.clip(_pil_resize(low, (16, 16)), -1, 1), atol=1e-6)


def test_drop_replaces_whole_examples_by_zeros_at_rate_p():
  c = jnp.ones((4000, 2, 2, 1))
  np.testing.assert_array_equal(concat.drop(jax.random.key(0), c, 1.0), 0.0)
  np.testing.assert_array_equal(concat.drop(jax.random.key(0), c, 0.0), c)
  out = np.asarray(concat.drop(jax.random.key(1), c, 0.25)).reshape(4000, -1)
  assert set(np.unique(out.min(axis=1) == out.max(axis=1))) == {True}  # all or nothing per example
  rate = np.mean(out[:, 0] == 0)
  assert abs(rate - 0.25) < 5 * np.sqrt(0.25 * 0.75 / 4000)


def test_unknown_degradation_names_the_valid_choices():
  with pytest.raises(ValueError, match="Unknown degradation 'bicubic_x8'; valid choices: bicubic_x4"):
    concat.get_degradation("bicubic_x8")
  with pytest.raises(ValueError, match="valid choices"):
    concat.low_res_hw("nearest", (32, 32))
