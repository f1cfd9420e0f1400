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


# Semantic synthesis (LDM sec. 4.3.2): the MNIST-pairs stroke map and its one-hot on the latent grid.


def test_segmentation_pairs_map_of_a_hand_built_canvas():
  """s = 0 off the strokes, left digit + 1 on a stroke of columns 0..W/2-1, right digit + 1 on one
  of W/2..W-1; a stroke pixel is uint8 >= 128 (x > 0 in [-1, 1]) in any channel."""
  from ldm_jax.data import to_float  # pylint: disable=import-outside-toplevel
  u = np.zeros((2, 3, 8, 2), np.uint8)
  u[0, 0, 1, 0] = 128  # just above the threshold: a stroke of the left digit
  u[0, 0, 2, 0] = 127  # just below: background
  u[0, 1, 3, 1] = 255  # the second channel counts too
  u[0, 2, 4, 0] = 200  # right half
  u[0, 2, 7, 1] = 255
  u[1, :, 3:5, 0] = 255  # a bar across the middle: columns 3 | 4 belong to different digits
  labels = np.array([37, 90], np.int32)  # (3, 7) and (9, 0)
  s = np.asarray(concat.segmentation_pairs(None, to_float(u), labels))
  want = np.zeros((2, 3, 8), np.int32)
  want[0, 0, 1] = want[0, 1, 3] = 3 + 1
  want[0, 2, 4] = want[0, 2, 7] = 7 + 1
  want[1, :, 3] = 9 + 1
  want[1, :, 4] = 0 + 1
  assert s.dtype == np.int32
  np.testing.assert_array_equal(s, want)
  with pytest.raises(ValueError, match="needs the batch's labels .*mnist_pairs"):
    concat.segmentation_pairs(None, to_float(u), None)


def test_segmentation_pairs_of_real_canvases_marks_each_half_with_its_digit():
  from ldm_jax.data import mnist_pairs, to_float  # pylint: disable=import-outside-toplevel
  images, labels = mnist_pairs.MnistPairs("test").read(np.arange(6))
  s = np.asarray(concat.segmentation_pairs(None, to_float(images), labels))
  for k, y in enumerate(labels):
    a, b = divmod(int(y), 10)
    assert set(np.unique(s[k, :, :32])) == {0, a + 1} and set(np.unique(s[k, :, 32:])) == {0, b + 1}
    np.testing.assert_array_equal(s[k] > 0, images[k, ..., 0] >= 128)


def _spatial_rescaler(one_hot_nhwc, n_stages):
  """CompVis' SpatialRescaler before its remap, in torch: n bilinear x0.5 resizes (NCHW)."""
  torch = pytest.importorskip("torch")
  x = torch.from_numpy(np.asarray(one_hot_nhwc, np.float32)).permute(0, 3, 1, 2)
  for _ in range(n_stages):
    x = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear")
  return x.permute(0, 2, 3, 1).numpy()


def test_segmentation_to_latent_grid_is_the_spatial_rescaler():
  s = np.random.default_rng(0).integers(0, 11, (2, 32, 64))
  one_hot = np.eye(11, dtype=np.float32)[s]
  for n_stages in (0, 1, 2, 3):  # f = 1, 2, 4, 8
    f = 2 ** n_stages
    got = np.asarray(concat.segmentation_to_latent_grid(jnp.asarray(s), (32 // f, 64 // f), 11))
    assert got.shape == (2, 32 // f, 64 // f, 11)
    np.testing.assert_allclose(got, _spatial_rescaler(one_hot, n_stages), atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)  # class fractions
  # f = 4 by hand: the fraction of each class in a 4 x 4 block.
  got = np.asarray(concat.segmentation_to_latent_grid(jnp.asarray(s), (8, 16), 11))
  np.testing.assert_allclose(got[1, 2, 5, 7], np.mean(s[1, 8:12, 20:24] == 7), atol=1e-7)
  with pytest.raises(ValueError, match=r"32x64 pixels does not reduce to the 8x8 latent grid"):
    concat.segmentation_to_latent_grid(jnp.asarray(s), (8, 8), 11)


def test_segmentation_degradation_registry():
  assert concat.is_segmentation("segmentation_pairs") and not concat.is_segmentation("bicubic_x4")
  assert not concat.is_inpainting("segmentation_pairs")
  assert concat.concat_channels("segmentation_pairs", 1, 3) == 11  # [z_t, 11 class fractions]
  assert concat.unet_inputs("segmentation_pairs", 1, 3) == (
      "latent + segmentation class channels = 3 + 11")
  stripes = np.where(np.arange(64) % 3 == 0, 1.0, -1.0)[None, None, :, None]  # strokes every 3rd column
  x = jnp.asarray(np.broadcast_to(stripes, (2, 32, 64, 1)), jnp.float32)
  labels = jnp.asarray([12, 45])
  c = concat.conditioning_map("segmentation_pairs", None, x, (8, 16), labels)
  want = concat.segmentation_to_latent_grid(concat.segmentation_pairs(None, x, labels), (8, 16), 11)
  np.testing.assert_array_equal(c, want)
  assert set(np.flatnonzero(np.asarray(c)[0].sum((0, 1)))) == {0, 1 + 1, 2 + 1}
