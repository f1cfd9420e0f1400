"""Preprocessing for diffusion training: channels, square crop, fit to the model size, flip.

Runs on host numpy uint8 images and returns uint8 [B, H, W, C] (image_size S: H = W = S, or an
(H, W) pair for non-square canvases such as MNIST pairs' 32 x 64); scaling to [-1, 1] is left to
`to_float`, called inside the jitted step (the pipeline ships 4x fewer bytes than float32).
Per example, in this order:

  1. channels: grayscale -> RGB repeats the channel; RGB -> grayscale uses the ITU-R 601 luma
     weights with PIL's integer rounding; an alpha channel is dropped.
  2. crop "center" | "random": the largest centred / randomly placed square (side min(H, W));
     "none" keeps the whole image. A random crop of a square image is the whole image.
  3. resize "auto" | "pad" | "resize": "pad" zero-pads (centred) up to H x W and is lossless (MNIST
     28 -> 32); "resize" resamples to H x W with PIL bicubic (antialiased when shrinking);
     "auto" pads images that fit in H x W and resizes the others.
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


def _positive_int(v):
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0


def image_hw(image_size) -> tuple[int, int]:
  """(H, W) of an image_size: a positive int S (S x S) or a pair (H, W) of positive ints."""
  if _positive_int(image_size):
    return int(image_size), int(image_size)
  if (isinstance(image_size, (tuple, list)) and len(image_size) == 2
      and all(_positive_int(v) for v in image_size)):
    return int(image_size[0]), int(image_size[1])
  raise ValueError(f"image_size must be a positive int S or a pair (H, W) of positive ints, "
                   f"got {image_size!r}.")


def check_options(image_size, crop, resize, channels):
  """Raises ValueError for an option outside its valid choices."""
  image_hw(image_size)
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
  """uint8 [h, w, C] -> uint8 [H, W, C] (size: S or (H, W)) by centred zero padding or bicubic
  resampling."""
  out_h, out_w = image_hw(size)
  h, w, c = image.shape
  if (h, w) == (out_h, out_w):
    return image
  fits = h <= out_h and w <= out_w
  if resize == "pad" and not fits:
    raise ValueError(f"resize='pad' cannot fit a {h}x{w} image into {out_h}x{out_w}; "
                     "use resize='resize' or 'auto', or a larger image_size.")
  if resize == "pad" or (resize == "auto" and fits):
    out = np.zeros((out_h, out_w, c), np.uint8)
    top, left = (out_h - h) // 2, (out_w - w) // 2
    out[top:top + h, left:left + w] = image
    return out
  mode_image = Image.fromarray(image[..., 0] if c == 1 else image)
  resized = np.asarray(mode_image.resize((out_w, out_h), Image.Resampling.BICUBIC))
  return resized.reshape(out_h, out_w, c)


def preprocess_batch(images, *, image_size, channels, crop, resize, flip, seed, epoch, indices):
  """Preprocesses a list of uint8 images; indices: int [B] dataset indices (for randomness).

  Returns uint8 [B, H, W, channels] ((H, W) = image_hw(image_size)).
  """
  indices = np.asarray(indices, np.int64)
  out = np.empty((len(images), *image_hw(image_size), channels), np.uint8)
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
