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


# Inpainting (SD-inpainting): the masked image, the mask on the latent grid, c's channel order.


def test_inpainting_degradation_is_a_mask_kind():
  assert concat.is_inpainting("inpaint_large_masks") and not concat.is_inpainting("bicubic_x4")
  assert concat.concat_channels("inpaint_large_masks", 3, 4) == 1 + 4  # SD: 4 + [1 + 4] = 9
  assert concat.concat_channels("bicubic_x4", 3, 4) == 3
  x = jnp.zeros((3, 16, 24, 1))
  m = concat.get_degradation("inpaint_large_masks").apply(jax.random.key(0), x)
  assert m.shape == (3, 16, 24, 1) and set(np.unique(np.asarray(m))) <= {0.0, 1.0}


def test_masked_image_zeroes_the_masked_pixels_in_minus_one_one(images):
  """diffusers: masked_image = init_image * (mask_condition < 0.5), init_image in [-1, 1]."""
  m = np.zeros((2, 32, 32, 1), np.float32)
  m[0, 4:10, 2:30] = 1.0
  m[1, 20:, :] = 1.0
  got = np.asarray(concat.masked_image(jnp.asarray(images), jnp.asarray(m)))
  want = images.copy()
  want[np.broadcast_to(m, images.shape) == 1] = 0.0
  np.testing.assert_array_equal(got, want)


def test_mask_to_latent_grid_is_torch_nearest_interpolate():
  """torch.nn.functional.interpolate(mask, size=(h, w)) (mode "nearest"), diffusers'
  prepare_mask_latents: latent pixel i reads pixel floor(i * H / h)."""
  torch = pytest.importorskip("torch")
  m = (np.random.default_rng(0).uniform(size=(2, 32, 24, 1)) < 0.5).astype(np.float32)
  for hw in ((8, 8), (4, 3), (32, 24), (5, 7)):
    want = torch.nn.functional.interpolate(torch.from_numpy(m).permute(0, 3, 1, 2), size=hw)
    got = np.asarray(concat.mask_to_latent_grid(jnp.asarray(m), hw))
    np.testing.assert_array_equal(got, want.permute(0, 2, 3, 1).numpy())
  np.testing.assert_array_equal(concat.mask_to_latent_grid(m, (8, 6)), m[:, ::4, ::4])  # f = 4


def test_inpainting_conditioning_is_mask_then_masked_latents(images):
  """c = [m on the latent grid, encode(x * (m < 0.5))]: the UNet input [z_t, c] is diffusers'
  torch.cat([latents, mask, masked_image_latents], dim=1) (channels last here)."""
  m = np.zeros((2, 32, 32, 1), np.float32)
  m[:, 8:24, 8:24] = 1.0
  encode = lambda v: v[:, ::4, ::4] * 2.0  # any map to an 8 x 8 grid: here 3 "latent" channels
  c = np.asarray(concat.inpainting_conditioning(encode, jnp.asarray(images), jnp.asarray(m)))
  assert c.shape == (2, 8, 8, 1 + 3)
  np.testing.assert_array_equal(c[..., :1], m[:, ::4, ::4])
  masked = np.where(m == 1, 0.0, images)
  np.testing.assert_allclose(c[..., 1:], masked[:, ::4, ::4] * 2.0, rtol=1e-6)


def test_null_mask_masks_everything_at_rate_p():
  m = jnp.zeros((4000, 2, 2, 1))
  np.testing.assert_array_equal(concat.null_mask(jax.random.key(0), m, 1.0), 1.0)
  np.testing.assert_array_equal(concat.null_mask(jax.random.key(0), m, 0.0), m)
  out = np.asarray(concat.null_mask(jax.random.key(1), m, 0.25)).reshape(4000, -1)
  assert set(np.unique(out.min(axis=1) == out.max(axis=1))) == {True}
  assert abs(out[:, 0].mean() - 0.25) < 5 * np.sqrt(0.25 * 0.75 / 4000)
