"""Concat conditioning (LDM, Rombach et al. 2022 sec. 3.3 and 4.4): c = D(x) concatenated to z_t.

LDM-SR trains eps_theta([z_t, c], t) where c is the low-resolution image D(x) (D: bicubic x4
downsampling), brought to the latent grid h x w and concatenated to z_t along channels, so the
UNet reads latent + image channels and predicts latent channels. For the paper's f = 4 first
stages the x4 low-resolution image already has the latent size; otherwise it is resized (bicubic)
to h x w here.

The training loss computes c from the batch's images (`conditioning_map`); the pipeline's
`upscale` receives the low-resolution images D(x) themselves and computes c with `to_latent_grid`,
the same function, so training and sampling see the same c. For classifier-free guidance c is
replaced by zeros with probability p_drop (`drop`); the pipeline's null conditioning is zeros too.

Degradations are named (`DEGRADATIONS`); each maps images to the conditioning image at 1 / factor
of their size. Future entries (inpainting's masked image and mask, segmentation maps) take the
same (rng, x) arguments, so random degradations fit.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Degradation(NamedTuple):
  apply: Callable  # (rng, x [B, H, W, C] float in [-1, 1]) -> [B, H / factor, W / factor, C]
  factor: int  # spatial downsampling of the conditioning image
  description: str


def resize_bicubic(x, hw):
  """x [B, H, W, C] -> [B, h, w, C]: bicubic (Keys a = -0.5, PIL's BICUBIC) with antialiasing
  when shrinking, clipped to [-1, 1] (the kernel's negative lobes overshoot)."""
  b, _, _, c = x.shape
  y = jax.image.resize(x.astype(jnp.float32), (b, *hw, c), method="bicubic", antialias=True)
  return jnp.clip(y, -1.0, 1.0)


def bicubic_x4(rng, x):
  """LDM-SR's degradation: x [B, H, W, C] in [-1, 1] -> bicubic x4 downsampling [B, H/4, W/4, C]."""
  del rng  # deterministic
  _, h, w, _ = x.shape
  return resize_bicubic(x, (h // 4, w // 4))


DEGRADATIONS = {
    "bicubic_x4": Degradation(bicubic_x4, 4, "bicubic x4 downsampling with antialiasing"),
}


def get_degradation(name: str) -> Degradation:
  if name not in DEGRADATIONS:
    raise ValueError(f"Unknown degradation {name!r}; valid choices: {', '.join(DEGRADATIONS)}.")
  return DEGRADATIONS[name]


def low_res_hw(name: str, image_hw) -> tuple[int, int]:
  """(h, w) of the conditioning image of `name` for images of size image_hw (H, W)."""
  f = get_degradation(name).factor
  return image_hw[0] // f, image_hw[1] // f


def to_latent_grid(low_res, latent_hw):
  """The conditioning map c [B, h, w, C] of low-resolution images [B, h0, w0, C] in [-1, 1]: the
  images themselves when (h0, w0) = latent_hw (LDM-SR on f = 4), else their bicubic resize."""
  low_res = jnp.asarray(low_res, jnp.float32)
  if tuple(low_res.shape[1:3]) == tuple(latent_hw):
    return low_res
  return resize_bicubic(low_res, latent_hw)


def conditioning_map(name: str, rng, x, latent_hw):
  """c = to_latent_grid(D(x)) for images x [B, H, W, C] in [-1, 1] and the degradation D = name."""
  return to_latent_grid(get_degradation(name).apply(rng, x), latent_hw)


def drop(rng, c, p_drop: float):
  """Replaces each example's c [B, ...] by zeros with probability p_drop (guidance's null c)."""
  keep = ~jax.random.bernoulli(rng, p_drop, c.shape[:1])
  return jnp.where(keep.reshape((-1,) + (1,) * (c.ndim - 1)), c, jnp.zeros_like(c))
