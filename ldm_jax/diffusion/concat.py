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

Degradations are named (`DEGRADATIONS`); each takes (rng, x), so random degradations fit. An
"image" degradation maps images to the conditioning image at 1 / factor of their size (LDM-SR).

A "mask" degradation (SD-inpainting, Rombach et al. 2022 sec. 4.5 and the SD inpainting models)
draws a random mask m [B, H, W, 1] (1 = fill; `diffusion.masks`); the conditioning is
c = [m on the latent grid (1 channel), s * E(x * (m < 0.5)) (C_z channels)], so the UNet reads
[z_t, m, masked-image latents], C_z + 1 + C_z channels, diffusers' StableDiffusionInpaintPipeline
order (`torch.cat([latents, mask, masked_image_latents], dim=1)`). As there, the masked image sets
the masked pixels to 0 in [-1, 1] space (`init_image * (mask < 0.5)`), and the mask reaches the
latent grid by torch's default nearest `F.interpolate` (pixel floor(i * H / h), the top-left pixel
of each f x f block: `mask_to_latent_grid`). Guidance's null conditioning is the fully masked image
(m = 1, masked image 0: nothing known), which `null_mask` substitutes with probability p_drop
(SD-inpainting's training masks everything in 25% of the examples; diffusers' pipeline guides on
the prompt only and keeps c in both branches).

A "segmentation" degradation (LDM semantic synthesis, sec. 4.3.2: the `semantic_synthesis256`
config of CompVis/latent-diffusion) maps the batch's images and labels to an int class map
s [B, H, W] in 0..K-1 (`segmentation_pairs`: the MNIST-pairs canvas, class 0 background, d + 1 a
stroke pixel of digit d); it needs the batch's labels, the third argument of every `apply`.
CompVis feeds the one-hot map [B, K, H, W] to its `SpatialRescaler` (n_stages = log2 f bilinear
x0.5 resizes, then a learned bias-free 1x1 conv K -> 3 channels) and concatenates the result to
z_t (conditioning_key "concat"). Here c = `segmentation_to_latent_grid(s)`: the one-hot map
averaged over each f x f pixel block, i.e. the fraction of each class in the block (each of
torch's bilinear x0.5 resizes with align_corners=False averages 2 x 2 blocks, so n of them are
exactly this mean for f = 2^n). The learned 1x1 remap is left out: it is a bias-free linear map
followed by the UNet's first (linear) convolution, so it adds no expressiveness; CompVis uses it
to shrink 182 COCO-Stuff classes to 3 channels, while K = 11 channels are read directly here
(UNet input C_z + K). Guidance's null conditioning is c = 0 (`drop`, probability p_drop): every
real c sums to 1 over the classes at every latent pixel, so the zero map is unambiguous "no map",
whereas the all-background map is information ("no strokes here", an empty canvas).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.diffusion import masks

KINDS = ("image", "mask", "segmentation")
# segmentation_pairs: a stroke pixel is one whose value (in [-1, 1]) exceeds this, i.e. uint8 >= 128,
# half intensity: the core of MNIST's antialiased strokes, not their faint rim.
STROKE_THRESHOLD = 0.0


class Degradation(NamedTuple):
  apply: Callable  # (rng, x [B, H, W, C] float in [-1, 1], labels int [B] or None) ->
  # "image": [B, H / factor, W / factor, C]; "mask": the mask m [B, H, W, 1] in {0, 1}, 1 = fill;
  # "segmentation": the class map s int32 [B, H, W] in 0..classes-1 (needs the labels)
  factor: int  # spatial downsampling of the conditioning image (1 for masks and maps)
  description: str
  kind: str = "image"  # one of KINDS
  classes: int = 0  # "segmentation": K, the map's classes (0 = background)


def resize_bicubic(x, hw):
  """x [B, H, W, C] -> [B, h, w, C]: bicubic (Keys a = -0.5, PIL's BICUBIC) with antialiasing
  when shrinking, clipped to [-1, 1] (the kernel's negative lobes overshoot)."""
  b, _, _, c = x.shape
  y = jax.image.resize(x.astype(jnp.float32), (b, *hw, c), method="bicubic", antialias=True)
  return jnp.clip(y, -1.0, 1.0)


def bicubic_x4(rng, x, labels=None):
  """LDM-SR's degradation: x [B, H, W, C] in [-1, 1] -> bicubic x4 downsampling [B, H/4, W/4, C]."""
  del rng, labels  # deterministic, label-free
  _, h, w, _ = x.shape
  return resize_bicubic(x, (h // 4, w // 4))


def inpaint_large_masks(rng, x, labels=None):
  """SD-inpainting's degradation: the LaMa-style large mask m [B, H, W, 1] of images x [B, H, W, C]."""
  del labels
  return masks.large_masks(rng, x.shape[:3])


def segmentation_pairs(rng, x, labels):
  """The MNIST-pairs segmentation map s int32 [B, H, W] of canvases x [B, H, W, C] in [-1, 1] (left
  digit a in columns 0..W/2-1, right digit b in W/2..W-1) with labels 10 a + b [B]: s = 0 for
  background, d + 1 where a pixel of the half showing digit d is a stroke (any channel above
  STROKE_THRESHOLD)."""
  del rng  # deterministic
  if labels is None:
    raise ValueError("The 'segmentation_pairs' degradation needs the batch's labels (10 * left + "
                     "right digit: data.name='mnist_pairs').")
  w = x.shape[2]
  y = jnp.asarray(labels, jnp.int32)
  digit = jnp.where(jnp.arange(w)[None, :] < w // 2, (y // 10)[:, None], (y % 10)[:, None])  # [B, W]
  stroke = jnp.max(x, axis=-1) > STROKE_THRESHOLD  # [B, H, W]
  return jnp.where(stroke, digit[:, None, :] + 1, 0).astype(jnp.int32)


DEGRADATIONS = {
    "bicubic_x4": Degradation(bicubic_x4, 4, "bicubic x4 downsampling with antialiasing"),
    "inpaint_large_masks": Degradation(inpaint_large_masks, 1, "LaMa-style large masks (strokes "
                                       "and boxes); c = [mask, masked-image latents]", "mask"),
    "segmentation_pairs": Degradation(segmentation_pairs, 1, "0 = background, d + 1 = a stroke "
                                      "pixel of digit d (MNIST pairs)", "segmentation", classes=11),
}


def get_degradation(name: str) -> Degradation:
  if name not in DEGRADATIONS:
    raise ValueError(f"Unknown degradation {name!r}; valid choices: {', '.join(DEGRADATIONS)}.")
  return DEGRADATIONS[name]


def is_inpainting(name: str) -> bool:
  """Whether the degradation `name` is a mask (the UNet reads [z_t, m, masked-image latents])."""
  return get_degradation(name).kind == "mask"


def is_segmentation(name: str) -> bool:
  """Whether the degradation `name` is a class map (the UNet reads [z_t, K class fractions])."""
  return get_degradation(name).kind == "segmentation"


def concat_channels(name: str, image_channels: int, latent_channels: int) -> int:
  """Channels of c: the image channels ("image" kind), 1 + latent channels ("mask" kind), or the
  map's classes K ("segmentation" kind)."""
  d = get_degradation(name)
  return {"image": image_channels, "mask": 1 + latent_channels, "segmentation": d.classes}[d.kind]


def unet_inputs(name: str, image_channels: int, latent_channels: int) -> str:
  """The UNet's input channels [z_t, c] in words, for error messages ("latent + image channels =
  2 + 1")."""
  d, c = get_degradation(name), latent_channels
  return {"image": f"latent + image channels = {c} + {image_channels}",
          "mask": f"latent + mask + masked-image latent channels = {c} + 1 + {c}",
          "segmentation": f"latent + segmentation class channels = {c} + {d.classes}"}[d.kind]


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


def conditioning_map(name: str, rng, x, latent_hw, labels=None):
  """c on the latent grid for images x [B, H, W, C] in [-1, 1] (and their labels [B]) and the
  degradation D = name: to_latent_grid(D(x)) ("image" kind), or
  segmentation_to_latent_grid(D(x, labels)) ("segmentation" kind)."""
  d = get_degradation(name)
  out = d.apply(rng, x, labels)
  if d.kind == "segmentation":
    return segmentation_to_latent_grid(out, latent_hw, d.classes)
  return to_latent_grid(out, latent_hw)


def segmentation_to_latent_grid(s, latent_hw, num_classes: int):
  """c [B, h, w, K]: the one-hot of the class map s int [B, H, W] averaged over each f x f pixel
  block (f = H / h = W / w), the fraction of each class in the block. For f = 2^n this equals n
  bilinear x0.5 resizes (torch, align_corners=False), CompVis' SpatialRescaler before its remap."""
  b, h0, w0 = s.shape
  h, w = latent_hw
  if h0 % h or w0 % w or h0 // h != w0 // w:
    raise ValueError(f"A segmentation map of {h0}x{w0} pixels does not reduce to the {h}x{w} "
                     "latent grid by one integer factor f (H = f h and W = f w).")
  f = h0 // h
  one_hot = jax.nn.one_hot(s, num_classes, dtype=jnp.float32)
  return one_hot.reshape(b, h, f, w, f, num_classes).mean(axis=(2, 4))


def drop(rng, c, p_drop: float):
  """Replaces each example's c [B, ...] by zeros with probability p_drop (guidance's null c)."""
  keep = ~jax.random.bernoulli(rng, p_drop, c.shape[:1])
  return jnp.where(keep.reshape((-1,) + (1,) * (c.ndim - 1)), c, jnp.zeros_like(c))


def masked_image(x, m):
  """x * (m < 0.5): images x [B, H, W, C] in [-1, 1] with the masked pixels (m [B, H, W, 1] = 1)
  set to 0 (diffusers' `init_image * (mask_condition < 0.5)`)."""
  return x * (m < 0.5).astype(x.dtype)


def mask_to_latent_grid(m, latent_hw):
  """m [B, H, W, 1] -> [B, h, w, 1] by nearest sampling as torch's `F.interpolate(mode="nearest")`:
  latent pixel i reads pixel floor(i * H / h) (for H = f h, the top-left pixel of its block)."""
  _, h0, w0, _ = m.shape
  rows = np.floor(np.arange(latent_hw[0]) * (h0 / latent_hw[0])).astype(np.int32)
  cols = np.floor(np.arange(latent_hw[1]) * (w0 / latent_hw[1])).astype(np.int32)
  return jnp.asarray(m, jnp.float32)[:, rows][:, :, cols]


def inpainting_conditioning(encode, x, m):
  """c = [m on the latent grid, encode(masked_image(x, m))] [B, h, w, 1 + C_z], the UNet reading
  [z_t, c]. x: images [B, H, W, C] in [-1, 1]; m: mask [B, H, W, 1] (1 = fill); encode: images ->
  diffusion-space latents [B, h, w, C_z] (s * E, the frozen first stage)."""
  z_masked = encode(masked_image(x, m))
  return jnp.concatenate([mask_to_latent_grid(m, z_masked.shape[1:3]), z_masked], axis=-1)


def null_mask(rng, m, p_drop: float):
  """Replaces each example's mask m [B, H, W, 1] by ones (everything to fill, nothing known:
  guidance's null conditioning) with probability p_drop."""
  dropped = jax.random.bernoulli(rng, p_drop, m.shape[:1])
  return jnp.where(dropped.reshape((-1,) + (1,) * (m.ndim - 1)), jnp.ones_like(m), m)
