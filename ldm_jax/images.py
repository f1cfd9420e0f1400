"""Image conversions shared by the pipeline and the stages' previews: uint8 <-> float [-1, 1],
pixel masks -> latent masks, grids."""

import numpy as np


def to_uint8(x) -> np.ndarray:
  """float images in [-1, 1] [..., H, W, C] -> uint8 in [0, 255] (rounded, clipped)."""
  x = np.asarray(x, np.float32)
  return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_float(images) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]; float input is taken to be in [-1, 1] already."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 127.5 - 1.0
  return images.astype(np.float32)


def latent_known_mask(mask, factor: int) -> np.ndarray:
  """Pixel inpainting mask [N, H, W] (1 = regenerate) -> latent *known* mask float32 [N, H/f, W/f, 1].

  A latent pixel is known only if none of the f x f image pixels it covers is to be regenerated
  (a max-pool of the mask), so the regenerated region is never smaller than the one asked for.
  """
  n, h, w = mask.shape
  blocks = mask.reshape(n, h // factor, factor, w // factor, factor)
  return (1.0 - blocks.max(axis=(2, 4)))[..., None].astype(np.float32)


def image_grid(images: np.ndarray, rows: int) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 grid image [rows * H, cols * W, C] (row-major)."""
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"image_grid: expected images [N, H, W, C], got shape {images.shape}.")
  if not isinstance(rows, (int, np.integer)) or rows < 1:
    raise ValueError(f"image_grid: rows must be an integer >= 1, got {rows!r}.")
  n, h, w, c = images.shape
  cols = -(-n // rows)
  grid = np.zeros((rows * h, cols * w, c), images.dtype)
  for i, im in enumerate(images):
    r, q = divmod(i, cols)
    grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = im
  return grid
