"""Conditioning of the pipeline's denoiser: none, class labels (mixable), a context sequence or a
concatenated map (LDM-SR's low-resolution image on the latent grid, `diffusion.concat`), or a map
and a context together (LDM's "hybrid": SD-inpainting's [z_t, mask, masked-image latents] with a
prompt), always through classifier-free guidance (Ho & Salimans 2022) for conditional models.

Class conditioning is a *label mixture* (y_a [B], y_b [B], w [B]): the UNet's class embedding is
replaced by (1 - w) E[y_a] + w E[y_b], which is E[y_a] for w = 0. This is what `interpolate` lerps
between two classes; plain sampling uses y_b = y_a, w = 0, so both share one compiled program.
The embedding is swapped with `flax.linen.intercept_methods` on the UNet's "class_embedding" table.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import samplers
from ldm_jax.models.unet import concat_conditioning

KINDS = ("none", "class", "context", "concat", "concat_context")
CLASS_EMBEDDING = "class_embedding"
# What the unconditional branch of an inpainting model's guidance reads (the pipeline's
# `inpainting_null`); the conditional branch reads c = [mask, masked-image latents] and the label
# or prompt.
INPAINTING_NULLS = {
    "fully_masked": "c of the fully masked image (m = 1, masked image 0: nothing known) with the "
                    "null label or the negative prompt; this project's training (concat.p_drop)",
    "unchanged": "the same c as the conditional branch, only the label or prompt changes (the "
                 "null label or the negative prompt); diffusers' StableDiffusionInpaintPipeline",
}


def check_inpainting_null(name):
  if name not in INPAINTING_NULLS:
    raise ValueError(f"Unknown inpainting_null {name!r}; valid choices: "
                     + "; ".join(f"{k!r} ({v})" for k, v in INPAINTING_NULLS.items()) + ".")
  return name


def _mixed_class_apply(unet, params, x, t, mix):
  y_a, y_b, w = mix

  def interceptor(next_fun, args, kwargs, context):
    if (context.method_name == "__call__" and isinstance(context.module, nn.Embed)
        and context.module.name == CLASS_EMBEDDING):
      e_a, e_b = next_fun(y_a), next_fun(y_b)
      return e_a + w[:, None].astype(e_a.dtype) * (e_b - e_a)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    return unet.apply({"params": params}, x, t, y=y_a)


def _concat_context_apply(unet, params, x, t, c):
  """The UNet on [x_t, map] cross-attending to the context: c = (map, context), or (map, context,
  y int32 [B]) with y its class labels (the SD x4 upscaler's noise level)."""
  y = c[2] if len(c) > 2 else None
  return unet.apply({"params": params}, concat_conditioning(x, c[0]), t, context=c[1], y=y)


def model_fn(unet, params, kind, cond, null_cond, guidance_scale):
  """model_fn(x_t, t) for the samplers.

  kind "none": cond is None. "class": cond = (y_a, y_b, w), null_cond the same with the null
  label. "context": cond, null_cond [B, L, D]. "concat": cond, null_cond maps [B, h, w, Cc]
  (the null map is zeros), the UNet reading [x_t, c]; a hybrid concat + class model's are pairs
  (map, label mixture). "concat_context": pairs (map [B, h, w, Cc], context [B, L, D]), the UNet
  reading [x_t, c] and cross-attending to the context; with a third entry y int32 [B] the UNet's
  class labels too (the SD x4 upscaler's noise level, the same in both branches).
  guidance_scale: [B] (traced) for conditional kinds.
  """
  if kind == "none":
    return lambda x, t: unet.apply({"params": params}, x, t)
  if kind == "class":
    cond_fn = lambda x, t, c: _mixed_class_apply(unet, params, x, t, c)
  elif kind == "context":
    cond_fn = lambda x, t, c: unet.apply({"params": params}, x, t, context=c)
  elif kind == "concat":
    def cond_fn(x, t, c):
      if isinstance(c, tuple):  # hybrid: (map, label mixture)
        return _mixed_class_apply(unet, params, concat_conditioning(x, c[0]), t, c[1])
      return unet.apply({"params": params}, concat_conditioning(x, c), t)
  elif kind == "concat_context":
    cond_fn = lambda x, t, c: _concat_context_apply(unet, params, x, t, c)
  else:
    raise ValueError(f"Unknown conditioning kind {kind!r}; valid choices: {', '.join(KINDS)}.")
  return samplers.classifier_free_guidance(cond_fn, cond, null_cond, guidance_scale)


def conditional_model_fn(unet, params, kind, cond):
  """model_fn(x_t, t) of the conditional model alone, without guidance (what the likelihood
  evaluates). cond has a leading axis B dividing x_t's batch N; example i of x_t gets cond[i mod B]
  (the layout of `diffusion.vlb_terms`, which stacks timestep chunks of the batch)."""
  if kind not in KINDS:
    raise ValueError(f"Unknown conditioning kind {kind!r}; valid choices: {', '.join(KINDS)}.")

  def fn(x, t):
    if kind == "none":
      return unet.apply({"params": params}, x, t)
    reps = x.shape[0] // jax.tree.leaves(cond)[0].shape[0]
    tiled = jax.tree.map(lambda a: jnp.tile(a, (reps,) + (1,) * (a.ndim - 1)), cond)
    if kind == "class":
      return _mixed_class_apply(unet, params, x, t, tiled)
    if kind == "concat":
      return unet.apply({"params": params}, concat_conditioning(x, tiled), t)
    if kind == "concat_context":
      return _concat_context_apply(unet, params, x, t, tiled)
    return unet.apply({"params": params}, x, t, context=tiled)

  return fn


def class_mixture(y_a, y_b=None, w=None):
  """Host arrays (y_a int32 [B], y_b int32 [B], w float32 [B]); y_b = y_a and w = 0 by default."""
  y_a = np.asarray(y_a, np.int32)
  y_b = y_a if y_b is None else np.asarray(y_b, np.int32)
  w = np.zeros(y_a.shape, np.float32) if w is None else np.asarray(w, np.float32)
  return y_a, y_b, w

