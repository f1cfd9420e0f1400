"""Random inpainting masks: LaMa-style large masks (Suvorov et al. 2022), thick strokes and boxes.

A mask m is float32 [B, H, W, 1] in {0, 1}, 1 where a pixel is to be filled (diffusers' and SD's
convention: white = inpaint). Every function is a pure jnp function of (rng, shape), traceable
inside the training loss, with all sizes relative to the image side, so a 32 x 32 MNIST mask has
the proportions of a 256 x 256 LaMa mask:

  strokes (LaMa's irregular masks): 1..5 polylines of 1..4 segments each, segment length
    0.04..0.82 side, brush width 0.02..0.41 side, turning by up to 4 rad per segment; each segment is
    rasterised as a capsule (the pixels within width / 2 of it; cv2.line's thick line).
  boxes (LaMa's rectangle masks): 1..4 axis-aligned boxes of sides 0.12..0.6 of the image's.
  large_masks: per example, strokes with probability 1 / 1.3, else boxes.

Statistics (measured on 2000 masks at 32 x 32 and at 64 x 64, the same within 0.01; checked by
`tests/diffusion/test_masks.py`): the masked fraction of large_masks has mean 0.34 (strokes 0.38,
boxes 0.25), 5th / 50th / 95th percentiles 0.05 / 0.32 / 0.69, from under 1% to 98% of the image.
"""

import jax
import jax.numpy as jnp
import numpy as np

MAX_STROKES, MAX_SEGMENTS = 5, 4  # LaMa: max_times = 5, vertices randint(1, 5)
MAX_ANGLE, MAX_LEN, WIDTH = 4.0, 200 / 256, (5 / 256, 105 / 256)  # LaMa's large irregular, / side
MAX_BOXES, BOX_SIDE = 4, (0.12, 0.6)
P_STROKES = 1 / 1.3  # strokes : boxes = 1 : 0.3


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
  start = jax.random.uniform(k_start, (MAX_STROKES, 2)) * jnp.array([h - 1, w - 1], jnp.float32)
  angle = 0.01 + jax.random.uniform(k_angle, (MAX_STROKES, MAX_SEGMENTS)) * MAX_ANGLE
  angle = jnp.where(jnp.arange(MAX_SEGMENTS) % 2 == 0, 2 * jnp.pi - angle, angle)
  length = side * (10 / 256 + jax.random.uniform(k_len, (MAX_STROKES, MAX_SEGMENTS)) * MAX_LEN)
  width = side * jax.random.uniform(k_width, (MAX_STROKES,), minval=WIDTH[0], maxval=WIDTH[1])
  step = length[..., None] * jnp.stack([jnp.sin(angle), jnp.cos(angle)], -1)  # [S, V, 2]
  hi = jnp.array([h - 1, w - 1], jnp.float32)

  def walk(p, d):  # a polyline: each end is clipped to the image (LaMa's np.clip of the end)
    q = jnp.clip(p + d, 0.0, hi)
    return q, (p, q)

  _, (a, b) = jax.lax.scan(walk, start, jnp.moveaxis(step, 1, 0))  # [V, S, 2]
  active = (jnp.arange(MAX_SEGMENTS)[:, None] < verts[None]) & (jnp.arange(MAX_STROKES)[None] < n)
  radius = jnp.broadcast_to(width / 2, (MAX_SEGMENTS, MAX_STROKES))
  return _capsules(a.reshape(-1, 2), b.reshape(-1, 2), radius.reshape(-1), active.reshape(-1), h, w)


def _boxes_one(rng, h, w):
  k_n, k_size, k_pos = jax.random.split(rng, 3)
  n = jax.random.randint(k_n, (), 1, MAX_BOXES + 1)
  hw = jnp.array([h, w], jnp.float32)
  size = jnp.floor(jax.random.uniform(k_size, (MAX_BOXES, 2), minval=BOX_SIDE[0],
                                      maxval=BOX_SIDE[1]) * hw)
  lo = jnp.floor(jax.random.uniform(k_pos, (MAX_BOXES, 2)) * (hw - size + 1))
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
  """LaMa-style large masks [B, H, W, 1]: per example strokes (probability 1 / 1.3) or boxes."""
  k_choice, k_strokes, k_boxes = jax.random.split(rng, 3)
  use_strokes = jax.random.bernoulli(k_choice, P_STROKES, shape[:1])
  return jnp.where(use_strokes[:, None, None, None], strokes(k_strokes, shape),
                   boxes(k_boxes, shape))


def masked_fraction(m) -> np.ndarray:
  """The fraction of masked pixels per example, float64 [B] (host)."""
  return np.asarray(m, np.float64).reshape(np.shape(m)[0], -1).mean(axis=1)
