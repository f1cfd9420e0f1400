"""Image previews written to TensorBoard while a stage trains (from the EMA parameters).

Each builder returns `preview(step, state) -> {name: uint8 grid [H, W, C]}` for
`ldm_jax.train.loop.fit(images_fn=...)`; `state` is the global train state (`dp.to_global`), so a
preview never changes training (it reads `state.ema_params`, draws its own fixed noise). Every
process calls a preview (the parameters are gathered collectively) and draws it locally.

  autoencoder_preview   a held-out batch x (top row) over its reconstruction D(E(x)) (bottom row)
  ldm_preview           samples of the latent diffusion model: one row per class (classifier-free
                        guidance), one row per prompt for text models, or a square grid when
                        unconditional
  concat_preview        a concat-conditioned model (super-resolution, inpainting, semantic
                        synthesis): the conditioning D(x) as an image (`concat_view`), the model's
                        outputs, the held-out originals x
"""

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import samplers
from ldm_jax.data import to_float
from ldm_jax.diffusion import concat as concat_lib
from ldm_jax.models.unet import concat_conditioning
from ldm_jax.images import image_grid, to_uint8
from ldm_jax.train.checkpoint import host_value


def _host(tree):
  """Host copy of (part of) the global state on every process (collective where sharded across
  processes). Every process then draws the preview on its own devices (the same grid; only
  process 0's writer writes it): no process waits in a collective while another draws."""
  return jax.tree.map(host_value, tree)


def autoencoder_preview(ae, images: np.ndarray):
  """preview(step, state) of `ae` on fixed uint8 images [N, H, W, C] (EMA autoencoder params)."""
  images = np.asarray(images)
  # KL: decode the mode of q(z|x); VQ: decode the quantised code.
  recon = jax.jit(lambda p, x: ae.apply({"params": p}, to_float(x))[0])

  def preview(step, state):
    del step
    params = _host(state.ema_params["autoencoder"])
    x_hat = to_uint8(recon(params, images))
    return {"reconstructions": image_grid(np.concatenate([images, x_hat]), rows=2)}

  return preview


def ldm_preview(unet, ae, schedule, *, scale_factor: float, latent_shape, prediction_type: str,
                num_classes: int | None, per_class: int = 8, num_samples: int = 64, max_rows: int = 10,
                method: str = "ddim", num_steps: int = 25, guidance_scale: float = 2.0, seed: int = 0,
                text=None):
  """preview(step, state): samples of the EMA UNet decoded by the frozen first stage.

  Class-conditional (num_classes K): min(K, max_rows) rows of `per_class` samples, one class per
  row (classes 0..K-1 when K <= max_rows, else max_rows classes evenly spaced over 0..K-1), guided
  with weight `guidance_scale` against the null label K. Text (text = (encoder, prompt ids
  [P, L], empty-prompt ids [L])): one row of `per_class` samples per prompt, guided against the
  empty prompt; the UNet and encoder params are state.ema_params["unet" / "text_encoder"] (or a
  frozen encoder's state.extra["text_encoder"]). Unconditional: `num_samples` in a square grid.
  The noise is the same at every call (fold of `seed`), so grids of successive steps compare.
  """
  latent_shape = tuple(latent_shape)
  if text is not None:
    encoder, ids, null_ids = text
    n, rows = len(ids) * per_class, len(ids)
    ids = jnp.repeat(jnp.asarray(ids), per_class, axis=0)
    null = jnp.broadcast_to(jnp.asarray(null_ids)[None], ids.shape)
  elif num_classes is None:
    n, rows, y = num_samples, max(1, int(round(np.sqrt(num_samples)))), None
  else:
    classes = np.unique(np.linspace(0, num_classes - 1, min(num_classes, max_rows)).round().astype(np.int32))
    n, rows = len(classes) * per_class, len(classes)
    y = jnp.repeat(jnp.asarray(classes), per_class)
  x_T = jax.random.normal(jax.random.key(seed), (n, *latent_shape))
  rng = jax.random.fold_in(jax.random.key(seed), 1)

  @jax.jit
  def draw(unet_params, ae_params, w, text_params=None):
    if text is not None:
      context = encoder.apply({"params": text_params}, jnp.concatenate([ids, null]))
      cond_fn = lambda x, t, c: unet.apply({"params": unet_params}, x, t, context=c)
      model_fn = samplers.classifier_free_guidance(cond_fn, context[:n], context[n:], w)
    elif y is None:
      model_fn = lambda x, t: unet.apply({"params": unet_params}, x, t)
    else:
      cond_fn = lambda x, t, c: unet.apply({"params": unet_params}, x, t, y=c)
      model_fn = samplers.classifier_free_guidance(cond_fn, y, jnp.full_like(y, num_classes), w)
    z = samplers.sample(model_fn, schedule, x_T, rng, method=method, num_steps=num_steps,
                        prediction_type=prediction_type)
    return ae.apply({"params": ae_params}, z / scale_factor, method="decode")

  def preview(step, state):
    del step
    unet_params, ae_params, text_params = _host(state.ema_params), _host(state.extra["frozen"]), None
    if text is not None:
      text_params = (unet_params["text_encoder"] if "text_encoder" in unet_params
                     else _host(state.extra["text_encoder"]))
      unet_params = unet_params["unet"]
    x = draw(unet_params, ae_params, jnp.float32(guidance_scale), text_params)
    return {"samples": image_grid(to_uint8(x), rows=rows)}

  return preview


def concat_view(degradation: str, rng, x, labels=None):
  """(D(x) for the conditioning row as images [N, H, W, C] in [-1, 1], D(x) itself) of images x
  [N, H, W, C] in [-1, 1]: "image" kind (super-resolution) the low-res images nearest-upsampled;
  "mask" kind (inpainting) the masked images x * (m < 0.5) (masked pixels 0, mid-gray); and
  "segmentation" kind the class map s as gray levels 2 s / (K - 1) - 1 (background black, class
  K - 1 white) in every channel. labels: the images' labels [N] ("segmentation_pairs" needs them)."""
  d = concat_lib.get_degradation(degradation)
  out = d.apply(rng, x, labels)
  n, h, w, ch = x.shape
  if d.kind == "mask":
    return concat_lib.masked_image(x, out), out
  if d.kind == "segmentation":
    gray = 2.0 * out.astype(jnp.float32) / (d.classes - 1) - 1.0
    return jnp.broadcast_to(gray[..., None], (n, h, w, ch)), out
  return jnp.repeat(jnp.repeat(out, h // out.shape[1], axis=1), w // out.shape[2], axis=2), out


PREVIEW_NAMES = {"image": "upscaled", "mask": "inpainted", "segmentation": "synthesized"}


def concat_preview(unet, ae, schedule, images: np.ndarray, *, degradation: str, image_labels=None,
                   hybrid: bool = False, scale_factor: float, latent_shape, prediction_type: str,
                   method: str = "ddim", num_steps: int = 25, seed: int = 0):
  """preview(step, state) of a concat-conditioned model on fixed held-out uint8 images [N, H, W, C]:
  rows D(x) as `concat_view` shows it, the unguided samples of eps_theta([z_t, c], t) with c built
  from D(x) as the loss builds it (`diffusion.concat`: the low-res image or the class fractions on
  the latent grid; for inpainting [m on the latent grid, s E(x * (m < 0.5))], E sampling q(z | x)
  from a fixed key), and x; named by the degradation's kind (`PREVIEW_NAMES`). image_labels: the
  images' labels [N] (a segmentation degradation reads them; a `hybrid` concat + class model is
  given them as its class labels)."""
  images = np.asarray(images)
  n = images.shape[0]
  x = to_float(images)
  d = concat_lib.get_degradation(degradation)
  labels = None if image_labels is None else jnp.asarray(image_labels, jnp.int32)
  shown, out = concat_view(degradation, jax.random.fold_in(jax.random.key(seed), 2), x, labels)
  y = labels if hybrid else None
  x_T = jax.random.normal(jax.random.key(seed), (n, *latent_shape))
  rng = jax.random.fold_in(jax.random.key(seed), 1)
  hw = tuple(latent_shape)[:2]

  @jax.jit
  def draw(unet_params, ae_params):
    if d.kind == "mask":
      encode = lambda v: ae.apply({"params": ae_params}, v, jax.random.fold_in(rng, 3),
                                  method="latents") * scale_factor
      c = concat_lib.inpainting_conditioning(encode, x, out)
    elif d.kind == "segmentation":
      c = concat_lib.segmentation_to_latent_grid(out, hw, d.classes)
    else:
      c = concat_lib.to_latent_grid(out, hw)
    model_fn = lambda z, t: unet.apply({"params": unet_params}, concat_conditioning(z, c), t, y=y)
    z = samplers.sample(model_fn, schedule, x_T, rng, method=method, num_steps=num_steps,
                        prediction_type=prediction_type)
    return ae.apply({"params": ae_params}, z / scale_factor, method="decode")

  def preview(step, state):
    del step
    result = draw(_host(state.ema_params), _host(state.extra["frozen"]))
    rows = np.concatenate([to_uint8(shown), to_uint8(result), images])
    return {PREVIEW_NAMES[d.kind]: image_grid(rows, rows=3)}

  return preview
