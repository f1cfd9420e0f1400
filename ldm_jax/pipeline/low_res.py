"""How `LatentDiffusionPipeline.upscale` takes its low-resolution images (the pipeline's
`low_res_input` rule), checked on the host before anything compiles.

Both rules give c as this project's training does (`diffusion.concat.to_latent_grid`: on an f = 4
autoencoder the x4 low-res image *is* on the latent grid and is concatenated as it is, in [-1, 1],
which is also what diffusers' LDMSuperResolutionPipeline does with a tensor). They differ only in
the images they accept:

  "exact"      images of `low_res_shape` only (this project's SR models; the default).
  "diffusers"  also uint8 images a little larger, as LDMSuperResolutionPipeline's `preprocess` of
               PIL images: each side floored to a multiple of 32 (`w - w % 32`), then a PIL
               Lanczos resize to that size. Here the floored size must be `low_res_shape`
               (the pipeline's size is fixed: load with latent_shape=... for another); images of
               `low_res_shape` itself pass unchanged (PIL returns a copy when the size does not
               change), also where diffusers would floor a side below 32 to a smaller size.
               Floats (diffusers' tensor input) are never resized.
"""

import numpy as np
from PIL import Image

from ldm_jax.pipeline import checks

LOW_RES_INPUTS = {
    "exact": "low-res images of the pipeline's low_res_shape only (this project's SR models)",
    "diffusers": "uint8 images whose sides floored to a multiple of 32 give low_res_shape are "
                 "first resized to it by PIL's Lanczos filter (diffusers' "
                 "LDMSuperResolutionPipeline on PIL images)",
}
MULTIPLE = 32  # LDMSuperResolutionPipeline's preprocess: sides floored to a multiple of 32


def check_rule(name):
  if name not in LOW_RES_INPUTS:
    raise ValueError(f"Unknown low_res_input {name!r}; valid choices: "
                     + "; ".join(f"{k!r} ({v})" for k, v in LOW_RES_INPUTS.items()) + ".")
  return name


def _lanczos(x, hw):
  """uint8 [N, h0, w0, C] -> [N, h, w, C] by PIL's LANCZOS resize, image by image (diffusers'
  `image.resize((w, h), resample=PIL_INTERPOLATION["lanczos"])`)."""
  squeeze = x.shape[-1] == 1
  out = [np.asarray(Image.fromarray(img[..., 0] if squeeze else img).resize(
      (hw[1], hw[0]), resample=Image.Resampling.LANCZOS)) for img in x]
  return np.stack(out).reshape((len(x), *hw, x.shape[-1]))


def images(values, low_res_shape, rule, describe):
  """The low-res images [N, h, w, C] of `upscale` under `rule` (see the module docstring), uint8
  or float as given. describe: the sentence on where low_res_shape comes from, for the errors."""
  shape = np.shape(values)
  want = tuple(low_res_shape)
  if len(shape) == 4 and tuple(shape[1:]) != want and rule == "diffusers":
    floored = tuple(s - s % MULTIPLE for s in shape[1:3])
    x = np.asarray(values)
    if x.dtype == np.uint8 and shape[0] >= 1 and shape[3] == want[2] and floored == want[:2]:
      return _lanczos(x, want[:2])
    raise ValueError(
        f"low_res_images must have shape [N, {want[0]}, {want[1]}, {want[2]}] ({describe}), or "
        f"with low_res_input='diffusers' be uint8 [N, h, w, {want[2]}] with h - h % {MULTIPLE} = "
        f"{want[0]} and w - w % {MULTIPLE} = {want[1]} (resized to it by Lanczos, as "
        f"LDMSuperResolutionPipeline does); got {x.dtype} {tuple(shape)} (another size needs the "
        f"model loaded with latent_shape=(h', w', latent channels), h' x w' the low-res size).")
  if len(shape) != 4 or tuple(shape[1:]) != want:
    raise ValueError(f"low_res_images must have shape [N, {want[0]}, {want[1]}, {want[2]}] "
                     f"({describe}), got {tuple(shape)}.")
  return checks.images(values, want, name="low_res_images")
