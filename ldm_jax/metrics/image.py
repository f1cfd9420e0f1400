"""Full-reference image quality: PSNR and SSIM (Wang et al. 2004), batched over NHWC images.

SSIM follows Wang et al. 2004 eq. 13 with their constants: local statistics under an 11 x 11
Gaussian window (sigma = 1.5), C1 = (K1 L)^2, C2 = (K2 L)^2 with K1 = 0.01, K2 = 0.03 and L the
data range, population (not sample) covariances, averaged over the positions where the window lies
fully inside the image and over channels. This is what `skimage.metrics.structural_similarity(...,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=L, channel_axis=-1)`
computes, per image.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _check_pair(x, y, min_size=1):
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(f"images must both have shape [B, H, W, C], got {x.shape} and {y.shape}")
  if min(x.shape[1:3]) < min_size:
    raise ValueError(f"images must be at least {min_size}x{min_size} for this window, got "
                     f"H, W = {x.shape[1:3]}")


def _check_data_range(data_range):
  if isinstance(data_range, (int, float, np.number)) and not data_range > 0:
    raise ValueError(f"data_range must be > 0 (e.g. 2.0 for [-1, 1], 255 for uint8), "
                     f"got {data_range!r}")


@jax.jit
def _psnr(x, y, data_range):
  mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
  return 10.0 * jnp.log10(jnp.square(data_range) / mse)


def psnr(x, y, *, data_range) -> jax.Array:
  """Peak signal-to-noise ratio [B] in dB, 10 log10(L^2 / MSE) per image of x, y [B, H, W, C]."""
  x, y = jnp.asarray(x), jnp.asarray(y)
  _check_pair(x, y)
  _check_data_range(data_range)
  return _psnr(x.astype(jnp.float32), y.astype(jnp.float32), jnp.float32(data_range))


def gaussian_window(window_size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """Normalised 1-D Gaussian weights [window_size] (scipy.ndimage's kernel for that radius)."""
  if not isinstance(window_size, int) or window_size < 1 or window_size % 2 == 0:
    raise ValueError(f"window_size must be a positive odd int, got {window_size!r}")
  r = window_size // 2
  t = np.arange(-r, r + 1, dtype=np.float64)
  w = np.exp(-0.5 * (t / sigma) ** 2)
  return (w / w.sum()).astype(np.float32)


def _filter_valid(maps, w):
  """Separable 'valid' correlation of maps [..., H, W, C] with window w along H and W."""
  n = w.shape[0]
  h, wd = maps.shape[-3], maps.shape[-2]
  rows = sum(w[i] * maps[..., i:h - n + 1 + i, :, :] for i in range(n))
  return sum(w[i] * rows[..., :, i:wd - n + 1 + i, :] for i in range(n))


@functools.partial(jax.jit, static_argnames=("window_size", "sigma"))
def _ssim(x, y, data_range, k1, k2, window_size, sigma):
  w = gaussian_window(window_size, sigma)
  # Second moments of values shifted by the per-image mean m, so that E[x^2] - E[x]^2 does not
  # cancel catastrophically in float32 when |m| >> std (e.g. uint8-range images).
  m = 0.5 * jnp.mean(x + y, axis=(1, 2, 3), keepdims=True)
  xc, yc = x - m, y - m
  mu_xc, mu_yc, e_xx, e_yy, e_xy = _filter_valid(jnp.stack([xc, yc, xc * xc, yc * yc, xc * yc]), w)
  var_x = e_xx - mu_xc * mu_xc  # population variances and covariance under the window
  var_y = e_yy - mu_yc * mu_yc
  cov_xy = e_xy - mu_xc * mu_yc
  mu_x, mu_y = mu_xc + m, mu_yc + m
  c1 = jnp.square(k1 * data_range)
  c2 = jnp.square(k2 * data_range)
  s = ((2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
       / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)))
  return jnp.mean(s, axis=(1, 2, 3))


def ssim(x, y, *, data_range, window_size: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> jax.Array:
  """Mean structural similarity [B] per image of x, y [B, H, W, C] (Wang et al. 2004, eq. 13)."""
  x, y = jnp.asarray(x), jnp.asarray(y)
  gaussian_window(window_size, sigma)  # validates window_size
  _check_pair(x, y, min_size=window_size)
  _check_data_range(data_range)
  f32 = jnp.float32
  return _ssim(x.astype(f32), y.astype(f32), f32(data_range), f32(k1), f32(k2),
               window_size=window_size, sigma=float(sigma))
