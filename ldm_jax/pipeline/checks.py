"""Validation of the pipeline's user inputs: every error is a ValueError raised on the host,
before anything is traced or compiled, naming the bad value and what is expected."""

import jax
import numpy as np

from ldm_jax import samplers
from ldm_jax.array_values import check_values

# Float images may overshoot [-1, 1] by this much: a bicubic (Keys a = -0.5, PIL's and
# jax.image's) resize of data in [-1, 1] stays within [-1.25, 1.25] (its negative lobes sum to
# 0.125 of the 2-wide range). Further out is taken for a wrong scale ([0, 255] floats) or garbage.
IMAGE_MARGIN = 0.25
IMAGE_RANGES = "uint8 in [0, 255] or float in [-1, 1]"

OUTPUTS = ("uint8", "float", "latent")


def rng_key(rng):
  """A typed JAX key: `rng` itself, or jax.random.key(rng) for a Python / NumPy int seed."""
  return jax.random.key(int(rng)) if isinstance(rng, (int, np.integer)) else rng


def _array(values, name, dtype=None):
  """np.asarray(values, dtype), a TypeError naming `name` where that conversion fails."""
  try:
    return np.asarray(values, dtype)
  except (TypeError, ValueError) as e:
    raise TypeError(f"{name} must be an array of numbers, got {type(values).__name__} "
                    f"{values!r:.60} ({e}).") from None


def _real(value):
  """A real scalar (Python or numpy number, 0-d array) as float, else None."""
  if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    return None


def method(name):
  if name not in samplers.METHODS:
    raise ValueError(f"Unknown method {name!r}; valid choices: {', '.join(samplers.METHODS)}.")


def output(kind, allowed=OUTPUTS):
  if kind not in allowed:
    raise ValueError(f"Unknown output {kind!r}; valid choices: {', '.join(allowed)}.")


def positive_int(value, name, minimum=1):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
  return int(value)


def eta(value, method_name):
  """DDIM's noise weight: a finite number >= 0 (0 for every other method)."""
  v = _real(value)
  if v is None or not np.isfinite(v) or v < 0:
    raise ValueError(f"eta must be a finite scalar >= 0, got {value!r:.60}.")
  if method_name != "ddim" and value != 0:
    raise ValueError(f"eta={value} only applies to method 'ddim', got method {method_name!r}.")
  return np.float32(value)


def strength(value):
  """img2img / inpaint strength: a number in [0, 1]."""
  v = _real(value)
  if v is None or not 0.0 <= v <= 1.0:
    raise ValueError(f"strength must be a number in [0, 1], got {value!r:.60}.")
  return v


def guidance(value, n):
  """guidance_scale: a finite scalar or one finite value per sample -> float32 [n]."""
  w = _array(value, "guidance_scale")
  if w.ndim not in (0, 1) or (w.ndim == 1 and w.shape != (n,)) or not (
      np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
    raise ValueError(f"guidance_scale must be a finite scalar or an array of shape [{n}], got "
                     f"{value!r:.80}.")
  check_values(w, "guidance_scale", expected="finite numbers (1: no guidance)")
  w = w.astype(np.float32)
  return np.broadcast_to(w, (n,)).copy()


def labels(values, n, num_classes, name="labels"):
  """Class labels -> int32 [n] (a scalar is repeated); None only for unconditional models."""
  if num_classes is None:
    if values is not None:
      raise ValueError(f"This model is unconditional; {name} must be None, got {values!r}.")
    return None
  if values is None:
    raise ValueError(f"This model is class-conditional: give {name} in 0..{num_classes - 1}.")
  y = _array(values, name)
  if y.ndim == 0:
    y = np.full((n,), y)
  if y.shape != (n,) or not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
    raise ValueError(f"{name} must be integers of shape [{n}] (or one integer), got {y.dtype} {y.shape}.")
  bad = y[(y < 0) | (y >= num_classes)]
  if bad.size:
    raise ValueError(f"{name} must lie in 0..{num_classes - 1} (the class range), got "
                     f"{sorted(set(bad.tolist()))}.")
  return y.astype(np.int32)


def context(values, n, dim, name="context"):
  """Cross-attention context [n, L, dim] (or [L, dim], repeated), finite -> float32 [n, L, dim]."""
  if dim is None:
    if values is not None:
      raise ValueError(f"This model has no cross-attention; {name} must be None.")
    return None
  if values is None:
    raise ValueError(f"This model is conditioned on a context [N, L, {dim}]; give {name}=.")
  c = _array(values, name, np.float32)
  if c.ndim in (2, 3):
    check_values(c, name, expected="finite float values")
  if c.ndim == 2:
    c = np.broadcast_to(c, (n,) + c.shape)
  if c.ndim != 3 or c.shape[0] != n or c.shape[2] != dim:
    raise ValueError(f"{name} must have shape [{n}, L, {dim}] or [L, {dim}], got {np.shape(values)}.")
  return np.ascontiguousarray(c)


def images(values, image_shape, name="images"):
  """uint8 [N, H, W, C] in [0, 255] or float in [-1, 1] images of the model's size -> numpy array.

  Float values must be finite and within [-1 - IMAGE_MARGIN, 1 + IMAGE_MARGIN] (resampling
  overshoot is tolerated and passed on unchanged)."""
  x = _array(values, name)
  if x.ndim == 3:
    raise ValueError(f"{name} must be a batch [N, {', '.join(map(str, image_shape))}]; got one image "
                     f"{x.shape} (add a leading axis).")
  if x.ndim != 4 or x.shape[0] < 1 or tuple(x.shape[1:]) != tuple(image_shape):
    raise ValueError(f"{name} must have shape [N, {', '.join(map(str, image_shape))}] (the model's "
                     f"image size), got {x.shape}.")
  if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
    raise ValueError(f"{name} must be {IMAGE_RANGES}, got dtype {x.dtype}.")
  if x.dtype != np.uint8:
    check_values(x, name, lo=-1.0 - IMAGE_MARGIN, hi=1.0 + IMAGE_MARGIN,
                 expected=f"{IMAGE_RANGES} (floats within {IMAGE_MARGIN} of it tolerated)")
  return x


def mask(values, n, height, width):
  """Inpainting mask (1 = regenerate, 0 = keep) [N, H, W], [N, H, W, 1] or [H, W] -> float32 [N, H, W]."""
  m = _array(values, "mask")
  if m.ndim == 4 and m.shape[-1] == 1:
    m = m[..., 0]
  if m.ndim == 2:
    m = np.broadcast_to(m, (n,) + m.shape)
  if m.shape != (n, height, width):
    raise ValueError(f"mask must have shape [{n}, {height}, {width}] (or [{n}, {height}, {width}, 1] or "
                     f"[{height}, {width}]) to match the images, got {np.shape(values)}.")
  if not (m.dtype == bool or np.issubdtype(m.dtype, np.floating) or np.issubdtype(m.dtype, np.integer)):
    raise ValueError(f"mask must be bool or numbers in [0, 1], got dtype {m.dtype}.")
  check_values(m, "mask", lo=0, hi=1, expected="values in [0, 1] (1 = regenerate, 0 = keep)")
  return m.astype(np.float32)


def segmentation(values, height, width, num_classes, legend, name="segmentation"):
  """Integer class maps [N, H, W] of the model's image size, classes in 0..num_classes-1 -> int32.
  legend: what the classes mean, for the messages."""
  s = _array(values, name)
  if s.ndim != 3 or s.shape[0] < 1 or s.shape[1:] != (height, width):
    raise ValueError(f"{name} must have shape [N, {height}, {width}] (one class per pixel of the "
                     f"model's {height}x{width} images), got {s.shape}.")
  if s.dtype == bool or not np.issubdtype(s.dtype, np.integer):
    raise ValueError(f"{name} must be integer classes in 0..{num_classes - 1} ({legend}), got "
                     f"dtype {s.dtype}.")
  bad = s[(s < 0) | (s >= num_classes)]
  if bad.size:
    raise ValueError(f"{name} classes must lie in 0..{num_classes - 1} ({legend}), got "
                     f"{sorted(set(bad.tolist()))[:8]}.")
  return s.astype(np.int32)


def latents(values, latent_shape, name="latents"):
  """Diffusion-space latents [N, h, w, c], finite -> float32."""
  z = _array(values, name, np.float32)
  if z.ndim != 4 or tuple(z.shape[1:]) != tuple(latent_shape):
    raise ValueError(f"{name} must have shape [N, {', '.join(map(str, latent_shape))}], got {np.shape(values)}.")
  check_values(z, name, expected="finite float values")
  return z


def noise_level(value):
  """restore's noise std on the [0, 1] image scale: a finite number >= 0."""
  v = _real(value)
  if v is None or not np.isfinite(v) or v < 0:
    raise ValueError(f"noise_level must be a finite number >= 0 (noise std on the [0, 1] image "
                     f"scale), got {value!r:.60}.")
  return v


def defaults(values, base):
  """Sampling defaults: `base` ({"method", "num_steps", "guidance_scale"}) updated by `values`
  (None entries keep base's), each checked like the argument it stands for."""
  values = dict(values or {})
  unknown = sorted(set(values) - set(base))
  if unknown:
    raise ValueError(f"Unknown sampling defaults {unknown}; valid keys: {', '.join(base)}.")
  out = {**base, **{k: v for k, v in values.items() if v is not None}}
  method(out["method"])
  out["num_steps"] = positive_int(out["num_steps"], "defaults['num_steps']")
  w = _real(out["guidance_scale"])
  if w is None or not np.isfinite(w):
    raise ValueError(f"defaults['guidance_scale'] must be a finite scalar, got {out['guidance_scale']!r}.")
  out["guidance_scale"] = w
  return out
