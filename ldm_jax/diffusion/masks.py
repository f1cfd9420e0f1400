"""Random inpainting masks: LaMa-style large masks (Suvorov et al. 2022), thick strokes and boxes.

A mask m is float32 [B, H, W, 1] in {0, 1}, 1 where a pixel is to be filled (diffusers' and SD's
convention: white = inpaint). Every function is a pure jnp function of (rng, shape), traceable
inside the training loss. The generators follow LaMa's `make_random_irregular_mask` and
`make_random_rectangle_mask` with the large-mask training config (configs/training/data/
abl-04-256-mh-dist.yaml), every pixel size divided by 256 and multiplied by the image side, so a
32 x 32 MNIST mask has the proportions of a 256 x 256 LaMa mask; LaMa's integer draws of sizes are
continuous here:

  strokes (irregular): 1..5 polylines of 1..5 segments; segment direction 0.01 + k rad,
    k in {0, 1, 2, 3} (2 pi minus that on even polylines), length (10 + U[0, 200)) / 256 side,
    brush width (5 + U[0, 100)) / 256 side; each end clipped to the image; each segment is
    rasterised as a capsule (the pixels within width / 2 of it, cv2.line's thick line).
  boxes (rectangles): 1..4 axis-aligned boxes of sides U[30, 150) / 256 of the image's, at least
    10 / 256 of it from the border.
  large_masks: per example strokes or boxes with probability 1/2 each (LaMa's irregular_proba = 1,
    box_proba = 1, renormalised).

Statistics (measured on 2000 masks at 32 x 32 and at 64 x 64, the same within 0.01; checked by
`tests/diffusion/test_masks.py`): the masked fraction of large_masks has mean 0.32 (strokes 0.41,
boxes 0.23), 5th / 50th / 95th percentiles 0.06 / 0.29 / 0.67, from under 1% to 88% of the image.
"""

import jax
import jax.numpy as jnp
import numpy as np

MAX_STROKES, MAX_SEGMENTS = 5, 5  # times in 1..5, segments 1 + randint(5)
LENGTH, WIDTH = (10 / 256, 210 / 256), (5 / 256, 105 / 256)  # of the image side
MAX_BOXES, BOX_SIDE, BOX_MARGIN = 4, (30 / 256, 150 / 256), 10 / 256  # of each image dimension
P_STROKES = 0.5


def _pixel_grid(h, w):
  """Pixel centres (y, x) float32 [H, W] each."""
  return jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                      indexing="ij")


def _capsules(a, b, radius, active, h, w):
  """Union over segments k of the pixels within radius_k of the segment a_k -> b_k.
  a, b: [K, 2] (y, x); radius, active: [K] -> bool [H, W]."""
  py, px = _pixel_grid(h, w)
  p = jnp.stack([py, px], -1)[None]  # [1, H, W, 2]
  ab = (b - a)[:, None, None]
  ap = p - a[:, None, None]
  s = jnp.clip(jnp.sum(ap * ab, -1) / jnp.maximum(jnp.sum(ab * ab, -1), 1e-6), 0.0, 1.0)
  d2 = jnp.sum((ap - s[..., None] * ab) ** 2, -1)  # [K, H, W]
  inside = (d2 <= (radius ** 2)[:, None, None]) & active[:, None, None]
  return jnp.any(inside, axis=0)


def _strokes_one(rng, h, w):
  side = float(min(h, w))
  k_n, k_v, k_start, k_angle, k_len, k_width = jax.random.split(rng, 6)
  n = jax.random.randint(k_n, (), 1, MAX_STROKES + 1)
  verts = jax.random.randint(k_v, (MAX_STROKES,), 1, MAX_SEGMENTS + 1)
  hi = jnp.array([h, w], jnp.float32)
  start = jax.random.uniform(k_start, (MAX_STROKES, 2)) * hi
  shape = (MAX_STROKES, MAX_SEGMENTS)
  angle = 0.01 + jax.random.randint(k_angle, shape, 0, 4).astype(jnp.float32)
  angle = jnp.where((jnp.arange(MAX_STROKES) % 2 == 0)[:, None], 2 * jnp.pi - angle, angle)
  length = side * jax.random.uniform(k_len, shape, minval=LENGTH[0], maxval=LENGTH[1])
  width = side * jax.random.uniform(k_width, shape, minval=WIDTH[0], maxval=WIDTH[1])
  step = length[..., None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)  # (row, column)

  def walk(p, d):  # a polyline: each end is clipped to the image
    q = jnp.clip(p + d, 0.0, hi)
    return q, (p, q)

  _, (a, b) = jax.lax.scan(walk, start, jnp.moveaxis(step, 1, 0))  # [V, S, 2]
  active = (jnp.arange(MAX_SEGMENTS)[:, None] < verts[None]) & (jnp.arange(MAX_STROKES)[None] < n)
  return _capsules(a.reshape(-1, 2), b.reshape(-1, 2), (width.T / 2).reshape(-1),
                   active.reshape(-1), h, w)


def _boxes_one(rng, h, w):
  k_n, k_size, k_pos = jax.random.split(rng, 3)
  n = jax.random.randint(k_n, (), 1, MAX_BOXES + 1)
  hw = jnp.array([h, w], jnp.float32)
  margin = jnp.round(BOX_MARGIN * hw)
  size = jnp.floor(jax.random.uniform(k_size, (MAX_BOXES, 2), minval=BOX_SIDE[0],
                                      maxval=BOX_SIDE[1]) * hw)
  size = jnp.clip(size, 1.0, hw - 2 * margin)
  lo = margin + jnp.floor(jax.random.uniform(k_pos, (MAX_BOXES, 2)) * (hw - 2 * margin - size + 1))
  py, px = _pixel_grid(h, w)
  inside = ((py >= lo[:, 0, None, None]) & (py < (lo + size)[:, 0, None, None])
            & (px >= lo[:, 1, None, None]) & (px < (lo + size)[:, 1, None, None]))
  return jnp.any(inside & (jnp.arange(MAX_BOXES) < n)[:, None, None], axis=0)


def _batched(one, rng, shape):
  b, h, w = shape
  m = jax.vmap(lambda r: one(r, h, w))(jax.random.split(rng, b))
  return m.astype(jnp.float32)[..., None]


def strokes(rng, shape):
  """LaMa's irregular (thick stroke) masks, float32 [B, H, W, 1] in {0, 1}; shape = (B, H, W)."""
  return _batched(_strokes_one, rng, shape)


def boxes(rng, shape):
  """LaMa's rectangle masks, float32 [B, H, W, 1] in {0, 1}; shape = (B, H, W)."""
  return _batched(_boxes_one, rng, shape)


def large_masks(rng, shape):
  """LaMa-style large masks [B, H, W, 1]: per example strokes or boxes (probability 1/2 each)."""
  k_choice, k_strokes, k_boxes = jax.random.split(rng, 3)
  use_strokes = jax.random.bernoulli(k_choice, P_STROKES, shape[:1])
  return jnp.where(use_strokes[:, None, None, None], strokes(k_strokes, shape),
                   boxes(k_boxes, shape))


def masked_fraction(m) -> np.ndarray:
  """The fraction of masked pixels per example, float64 [B] (host)."""
  return np.asarray(m, np.float64).reshape(np.shape(m)[0], -1).mean(axis=1)
