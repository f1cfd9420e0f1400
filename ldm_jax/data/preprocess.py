"""Preprocessing for diffusion training: channels, square crop, fit to the model size, flip.

Runs on host numpy uint8 images and returns uint8 [B, S, S, C]; scaling to [-1, 1] is left to
`to_float`, called inside the jitted step (the pipeline ships 4x fewer bytes than float32).
Per example, in this order:

  1. channels: grayscale -> RGB repeats the channel; RGB -> grayscale uses the ITU-R 601 luma
     weights with PIL's integer rounding; an alpha channel is dropped.
  2. crop "center" | "random": the largest centred / randomly placed square (side min(H, W));
     "none" keeps the whole image. A random crop of a square image is the whole image.
  3. resize "auto" | "pad" | "resize": "pad" zero-pads (centred) up to S x S and is lossless (MNIST
     28 -> 32); "resize" resamples to S x S with PIL bicubic (antialiased when shrinking);
     "auto" pads images that fit in S x S and resizes the others.
  4. flip: a horizontal flip with probability 1/2.

Random choices are hashes of (seed, epoch, example index) (`hashing`), so they are the same
whichever process reads the example and however often the batch is recomputed after a resume.
"""

import jax.numpy as jnp
import numpy as np
from PIL import Image

from ldm_jax.data import hashing

CROPS = ("center", "random", "none")
RESIZES = ("auto", "pad", "resize")
CHANNELS = (1, 3)


def to_float(images):
  """uint8 images [B, H, W, C] -> float32 in [-1, 1] (x / 127.5 - 1); use inside jit."""
  return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def check_options(image_size, crop, resize, channels):
  """Raises ValueError for an option outside its valid choices."""
  if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or (
      image_size <= 0):
    raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
  if crop not in CROPS:
    raise ValueError(f"crop {crop!r} unknown; valid: {CROPS}.")
  if resize not in RESIZES:
    raise ValueError(f"resize {resize!r} unknown; valid: {RESIZES}.")
  if channels not in CHANNELS:
    raise ValueError(f"channels {channels!r} unknown; valid: {CHANNELS}.")


def convert_channels(image, channels):
  """uint8 [H, W] or [H, W, C] with C in 1..4 -> uint8 [H, W, channels]."""
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(f"expected an image [H, W] or [H, W, C<=4], got shape {image.shape}.")
  c = image.shape[-1]
  if c in (2, 4):  # drop alpha
    image, c = image[..., :c - 1], c - 1
  if c == channels:
    return image
  if channels == 3:
    return np.repeat(image, 3, axis=-1)
  rgb = image.astype(np.uint32)  # PIL "L": (19595 R + 38470 G + 7471 B + 2^15) >> 16
  luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
  return luma.astype(np.uint8)[..., None]


def square_crop(image, crop, offset):
  """The square of side min(H, W) starting `offset` pixels along the long axis (crop != none)."""
  if crop == "none":
    return image
  h, w = image.shape[:2]
  s = min(h, w)
  if crop == "center":
    offset = (max(h, w) - s) // 2
  return image[offset:offset + s] if h > w else image[:, offset:offset + s]


def fit(image, size, resize):
  """uint8 [h, w, C] -> uint8 [size, size, C] by centred zero padding or bicubic resampling."""
  h, w, c = image.shape
  if (h, w) == (size, size):
    return image
  fits = h <= size and w <= size
  if resize == "pad" and not fits:
    raise ValueError(f"resize='pad' cannot fit a {h}x{w} image into {size}x{size}; "
                     "use resize='resize' or 'auto', or a larger image_size.")
  if resize == "pad" or (resize == "auto" and fits):
    out = np.zeros((size, size, c), np.uint8)
    top, left = (size - h) // 2, (size - w) // 2
    out[top:top + h, left:left + w] = image
    return out
  mode_image = Image.fromarray(image[..., 0] if c == 1 else image)
  resized = np.asarray(mode_image.resize((size, size), Image.Resampling.BICUBIC))
  return resized.reshape(size, size, c)


def preprocess_batch(images, *, image_size, channels, crop, resize, flip, seed, epoch, indices):
  """Preprocesses a list of uint8 images; indices: int [B] dataset indices (for randomness).

  Returns uint8 [B, image_size, image_size, channels].
  """
  indices = np.asarray(indices, np.int64)
  out = np.empty((len(images), image_size, image_size, channels), np.uint8)
  offsets = np.zeros(len(images), np.int64)
  if crop == "random":  # uniform in [0, |H - W|] along the long axis
    slack = [abs(im.shape[0] - im.shape[1]) for im in images]
    offsets = hashing.uniform_ints(seed, hashing.CROP, epoch, indices, slack)
  for i, image in enumerate(images):
    image = convert_channels(np.asarray(image), channels)
    out[i] = fit(square_crop(image, crop, int(offsets[i])), image_size, resize)
  if flip:
    mirrored = (hashing.hash_ints(seed, hashing.FLIP, epoch, indices) >> np.uint64(63)) == 1
    out[mirrored] = out[mirrored, :, ::-1]
  return out
