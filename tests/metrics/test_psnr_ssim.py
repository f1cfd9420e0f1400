"""PSNR and SSIM against skimage.metrics on batched NHWC images."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ldm_jax.metrics import image


def _pair(shape, lo, hi, noise, seed):
  rng = np.random.default_rng(seed)
  x = rng.uniform(lo, hi, size=shape)
  # Smooth structure plus noise so that SSIM is far from 0 and 1.
  x = 0.5 * (x + np.roll(x, 1, axis=1))
  y = np.clip(x + noise * (hi - lo) * rng.normal(size=shape), lo, hi)
  return x.astype(np.float32), y.astype(np.float32)


def _skimage_ssim(x, y, data_range):
  return np.array([
      structural_similarity(a.astype(np.float64), b.astype(np.float64), gaussian_weights=True,
                            sigma=1.5, use_sample_covariance=False, data_range=data_range,
                            channel_axis=-1)
      for a, b in zip(x, y)])


@pytest.mark.parametrize("shape,lo,hi", [
    ((3, 32, 32, 1), -1.0, 1.0),
    ((2, 24, 40, 3), 0.0, 1.0),
    ((2, 16, 16, 2), 0.0, 255.0),
])
def test_ssim_and_psnr_match_skimage(shape, lo, hi):
  x, y = _pair(shape, lo, hi, noise=0.1, seed=sum(shape))
  data_range = hi - lo
  expected = _skimage_ssim(x, y, data_range)
  assert np.all((expected > 0.1) & (expected < 0.95))
  np.testing.assert_allclose(image.ssim(x, y, data_range=data_range), expected, atol=1e-4)
  expected_psnr = [peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64),
                                           data_range=data_range) for a, b in zip(x, y)]
  np.testing.assert_allclose(image.psnr(x, y, data_range=data_range), expected_psnr, atol=1e-4)


def test_identical_images_and_uint8_input():
  x, y = _pair((2, 16, 16, 1), 0.0, 255.0, noise=0.05, seed=1)
  x8, y8 = x.round().astype(np.uint8), y.round().astype(np.uint8)
  np.testing.assert_allclose(image.ssim(x8, x8, data_range=255), 1.0, atol=1e-6)
  expected = [structural_similarity(a[..., 0], b[..., 0], gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=255)
              for a, b in zip(x8, y8)]
  np.testing.assert_allclose(image.ssim(x8, y8, data_range=255), expected, atol=1e-4)


def test_gaussian_window_is_scipy_kernel():
  w = image.gaussian_window(11, 1.5)
  t = np.arange(-5, 6)
  np.testing.assert_allclose(w, np.exp(-t**2 / 4.5) / np.exp(-t**2 / 4.5).sum(), rtol=1e-6)


def test_bad_arguments_raise():
  x = np.zeros((1, 16, 16, 1), np.float32)
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    image.ssim(x, x[0], data_range=1.0)
  with pytest.raises(ValueError, match="at least 11x11"):
    image.ssim(x[:, :8], x[:, :8], data_range=1.0)
  with pytest.raises(ValueError, match="odd"):
    image.ssim(x, x, data_range=1.0, window_size=10)
  with pytest.raises(ValueError, match="data_range"):
    image.psnr(x, x, data_range=0.0)
