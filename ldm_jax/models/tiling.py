"""Tiled decoding of latents too large to decode at once (overlapping tiles, linear blending).

Like diffusers' ``AutoencoderKL.tiled_decode``: the latent is cut into overlapping square tiles,
each tile is decoded on its own (one compiled decoder, run sequentially with ``lax.map``), and
the decoded tiles are blended with weights that ramp linearly across the overlaps.
"""

import jax
import jax.numpy as jnp


def tile_starts(n, tile, stride):
  """Start offsets of tiles of size ``tile`` covering [0, n); the last one is flush with n."""
  if n <= tile:
    return [0]
  starts = list(range(0, n - tile, stride))
  return starts + [n - tile]


def ramp_weights(length, ramp, left, right):
  """1-D blend weights [length]: linear ramps of ``ramp`` pixels on the sides that overlap."""
  i = jnp.arange(length, dtype=jnp.float32) + 0.5
  w = jnp.ones((length,), jnp.float32)
  if ramp > 0 and left:
    w = jnp.minimum(w, i / ramp)
  if ramp > 0 and right:
    w = jnp.minimum(w, (length - i) / ramp)
  return w


def decode_tiled(module, params, z, *, tile_size, overlap, **decode_kwargs):
  """Decodes z [B, h, w, c] tile by tile -> [B, h*f, w*f, C_out] (float32).

  module: an ``AutoencoderKL`` / ``VQModel`` (anything with ``decode`` and
  ``downsampling_factor``); params: its ``params`` collection. tile_size, overlap: in latent
  pixels, 0 <= overlap < tile_size. With tile_size >= max(h, w) this is exactly
  ``module.decode``. Extra keyword arguments go to ``decode``.
  """
  if not 0 <= overlap < tile_size:
    raise ValueError(f"decode_tiled needs 0 <= overlap < tile_size, got overlap={overlap}, "
                     f"tile_size={tile_size}")
  if z.ndim != 4:
    raise ValueError(f"decode_tiled: expected z of shape [B, h, w, c], got {tuple(z.shape)}")
  decode = lambda t: module.apply({"params": params}, t, method="decode", **decode_kwargs)
  _, h, w, _ = z.shape
  if h <= tile_size and w <= tile_size:
    return decode(z)
  f = module.downsampling_factor
  th, tw = min(tile_size, h), min(tile_size, w)
  rows = tile_starts(h, th, tile_size - overlap)
  cols = tile_starts(w, tw, tile_size - overlap)
  corners = [(r, c) for r in rows for c in cols]
  tiles = jnp.stack([z[:, r:r + th, c:c + tw] for r, c in corners])
  decoded = jax.lax.map(decode, tiles)  # [N, B, th*f, tw*f, C]
  out = jnp.zeros(z.shape[:1] + (h * f, w * f) + decoded.shape[-1:], jnp.float32)
  total = jnp.zeros((h * f, w * f, 1), jnp.float32)
  for k, (r, c) in enumerate(corners):
    wr = ramp_weights(th * f, overlap * f, r > 0, r + th < h)
    wc = ramp_weights(tw * f, overlap * f, c > 0, c + tw < w)
    weight = (wr[:, None] * wc[None, :])[:, :, None]
    rs, cs = slice(r * f, (r + th) * f), slice(c * f, (c + tw) * f)
    out = out.at[:, rs, cs].add(weight * decoded[k].astype(jnp.float32))
    total = total.at[rs, cs].add(weight)
  return out / total
