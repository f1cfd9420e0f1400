"""The pipeline's jitted programs, built once per static configuration by pure builder functions.

Each builder returns a `jax.jit` function; everything a user varies between calls (rng, labels,
context, guidance scale, eta, start step, images, masks) is an argument, so it is traced and never
recompiles. Static: the sampler method, num_steps, the conditioning kind, inpainting on/off, the
RePaint resampling count and the trajectory flag (the pipeline keys its cache on them and on the
batch size). `on_trace(name)` is called whenever a program is traced (i.e. about to compile).
"""

import jax
import jax.numpy as jnp

from ldm_jax import diffusion
from ldm_jax.diffusion import concat
from ldm_jax.samplers import driver
from ldm_jax.pipeline import conditioning

INIT_NOISE, PROBE_NOISE, LIKELIHOOD_NOISE = 0, 4, 5  # fold_in purposes of the per-sample keys
# (1-3: the sampler driver's STEP, KNOWN, RESAMPLE)


def sample_keys(rng, index):
  """Per-sample keys fold_in(rng, index_b): [B] keys, independent of batching and sharding."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(index)


def noise_program(latent_shape, on_trace):
  """noise(rng, index [B]) -> the initial noise x_T [B, *latent_shape] of those samples."""
  def fn(rng, index):
    on_trace("noise")
    return driver.per_sample_normal(sample_keys(rng, index), tuple(latent_shape), INIT_NOISE)
  return jax.jit(fn)


def denoise_program(unet, tables, on_trace, *, method, kind, prediction_type, inpaint, resample,
                    trajectory, compiler_options=None):
  """fn(params, rng, index, noise, cond, null_cond, w, eta, start, z0, noise_weight, known_mask)
  -> final latents [B, h, w, c] (and, if `trajectory`, {"x_t", "x0_pred"} [B, S, h, w, c]).

  tables: `samplers.make_tables(schedule, method=method, num_steps=S, **grid)`. The start state is
  built by `driver.initial_state` from z0, noise and the traced `start` step; with `inpaint` the
  region where known_mask [B, h, w, 1] = 1 is held to z0. compiler_options: the XLA:CPU
  convolution back end for the UNet (`ldm_jax.xla_cpu`; None: the defaults).
  """
  def fn(params, rng, index, noise, cond, null_cond, w, eta, start, z0, noise_weight, known_mask):
    on_trace("denoise")
    x = driver.initial_state(tables, z0, noise, start, noise_weight)
    model_fn = conditioning.model_fn(unet, params, kind, cond, null_cond, w)
    out = driver.run(driver.denoiser(model_fn, prediction_type), tables, method, x,
                     driver.per_sample_noise(sample_keys(rng, index), x.shape[1:]), start=start,
                     eta=eta, after_step=driver.known_region(z0, known_mask) if inpaint else None,
                     resample=resample, return_trajectory=trajectory)
    if not trajectory:
      return out
    return out[0], {k: jnp.moveaxis(out[1][k], 1, 0) for k in ("x_t", "x0_pred")}  # [B, S, ...]

  return jax.jit(fn, compiler_options=compiler_options)


def likelihood_program(unet, schedule, on_trace, *, kind, prediction_type, timesteps_per_chunk,
                       compiler_options=None):
  """fn(params, rng, index, z0, cond) -> (prior_bpd [B], terms_bpd [B, T]): the variational bound
  of the conditional latent model on latents z0 (`diffusion.vlb_terms`, Gaussian decoder); sample
  b's noise comes from its own key fold_in(fold_in(rng, index_b), LIKELIHOOD_NOISE)."""
  def fn(params, rng, index, z0, cond):
    on_trace("likelihood")
    keys = jax.vmap(lambda k: jax.random.fold_in(k, LIKELIHOOD_NOISE))(sample_keys(rng, index))
    out = diffusion.vlb_terms(conditioning.conditional_model_fn(unet, params, kind, cond), schedule,
                              z0, keys, prediction_type=prediction_type, decoder="gaussian",
                              timesteps_per_chunk=timesteps_per_chunk)
    return out.prior_bpd, out.terms_bpd
  return jax.jit(fn, compiler_options=compiler_options)


def _latents(ae, params, x, scale, shift):
  """Diffusion-space latents (z - shift) * scale of images x [B, H, W, C]: the posterior mean for
  KL autoencoders, the pre-quantisation latents for VQ (LDM sec. 3.1)."""
  return (ae.apply({"params": params}, x, method="latents") - shift) * scale


def encode_program(ae, scale, shift, on_trace):
  """encode(params, x [B, H, W, C] float) -> latents [B, h, w, c]."""
  def fn(params, x):
    on_trace("encode")
    return _latents(ae, params, x, scale, shift)
  return jax.jit(fn)


def inpainting_conditioning_program(ae, scale, shift, on_trace):
  """fn(params, x [B, H, W, C] float in [-1, 1], m [B, H, W, 1] in {0, 1}) -> (c, null c)
  [B, h, w, 1 + C_z]: `diffusion.concat.inpainting_conditioning` (the training loss's function)
  with the posterior mean of the masked image, and with the fully masked image (m = 1, p_drop's
  null conditioning)."""
  def fn(params, x, m):
    on_trace("inpainting_conditioning")
    encode = lambda v: _latents(ae, params, v, scale, shift)
    return (concat.inpainting_conditioning(encode, x, m),
            concat.inpainting_conditioning(encode, x, jnp.ones_like(m)))
  return jax.jit(fn)


def encode_with_gain_program(ae, scale, shift, on_trace):
  """fn(params, x, rng, index) -> (latents [B, h, w, c], gain [B]).

  gain_b = rms(J_b n_b) for a probe n_b ~ N(0, I) in pixel space (a forward-mode JVP of the
  encoder): white pixel noise of std s becomes latent noise of std about s * gain_b.
  """
  def fn(params, x, rng, index):
    on_trace("encode_with_gain")
    probe = driver.per_sample_normal(sample_keys(rng, index), x.shape[1:], PROBE_NOISE)
    z, jz = jax.jvp(lambda v: _latents(ae, params, v, scale, shift), (x,), (probe,))
    return z, jnp.sqrt(jnp.mean(jnp.square(jz), axis=tuple(range(1, jz.ndim))))
  return jax.jit(fn)


def concat_map_program(latent_hw, on_trace):
  """fn(low_res float [B, h0, w0, C] in [-1, 1]) -> the concat conditioning c [B, h, w, C] on the
  latent grid (`diffusion.concat.to_latent_grid`, the function the training loss uses)."""
  def fn(low_res):
    on_trace("concat_map")
    return concat.to_latent_grid(low_res, tuple(latent_hw))
  return jax.jit(fn)


def segmentation_map_program(latent_hw, num_classes, on_trace):
  """fn(s int32 [B, H, W] in 0..K-1) -> c [B, h, w, K], the class fractions per latent pixel
  (`diffusion.concat.segmentation_to_latent_grid`, the function the training loss uses)."""
  def fn(s):
    on_trace("segmentation_map")
    return concat.segmentation_to_latent_grid(s, tuple(latent_hw), num_classes)
  return jax.jit(fn)


def decode_program(ae, scale, shift, on_trace):
  """decode(params, latents [B, h, w, c]) -> images float [B, H, W, C] (VQ latents are quantised)."""
  def fn(params, z):
    on_trace("decode")
    return ae.apply({"params": params}, z / scale + shift, method="decode")  # VQ: quantize=True
  return jax.jit(fn)
