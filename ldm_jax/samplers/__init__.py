"""Samplers: each method is a step function driven by one `lax.scan` (`driver.run`; `sample` here).

Every method follows the diffusers scheduler of the same name step by step (same grids, same
update), with all sampler arithmetic in float32 and per-step constants computed on the host.
"""

import jax.numpy as jnp
import numpy as np

from ldm_jax.array_values import check_values
from ldm_jax.diffusion.parameterization import PREDICTION_TYPES
from ldm_jax.samplers import driver
from ldm_jax.samplers.guidance import classifier_free_guidance
from ldm_jax.samplers.methods import METHODS
from ldm_jax.samplers.timesteps import SPACINGS, Tables, check_spacing

__all__ = ["sample", "driver", "make_tables", "noise_level", "start_step_for_strength", "start_step_for_noise",
           "classifier_free_guidance",
           "METHODS", "SPACINGS", "Tables"]


def make_tables(schedule, *, method, num_steps, timestep_spacing="leading", steps_offset=0,
                set_alpha_to_one=True, karras_sigmas=False, variance_type="fixed_small") -> Tables:
  """The per-step constants of `method` (host numpy; validated). See `sample` for the arguments.

  tables.xs["t"] [S] are the model timesteps; tables.xs["alpha"], ["sigma"] [S] the VP noise level
  alpha_t, sigma_t of the model input at each step.
  """
  if method not in METHODS:
    raise ValueError(f"Unknown method {method!r}; valid choices: {', '.join(METHODS)}.")
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}.")
  check_spacing(timestep_spacing)
  if not isinstance(steps_offset, (int, np.integer)) or steps_offset < 0:
    raise ValueError(f"steps_offset must be an integer >= 0, got {steps_offset!r}.")
  if karras_sigmas and not METHODS[method].sigma_space:
    valid = [m for m, v in METHODS.items() if v.sigma_space]
    raise ValueError(f"karras_sigmas=True is not defined for method {method!r}; valid methods: {', '.join(valid)}.")
  if variance_type != "fixed_small" and method != "ddpm":
    raise ValueError(f"variance_type={variance_type!r} only applies to method 'ddpm', got method {method!r}.")
  return METHODS[method].tables(
      schedule, int(num_steps), timestep_spacing=timestep_spacing, steps_offset=int(steps_offset),
      set_alpha_to_one=set_alpha_to_one, karras_sigmas=karras_sigmas, variance_type=variance_type,
      method=method)


def noise_level(schedule, step, **grid_kwargs):
  """(t, alpha_t, sigma_t) of the model input at grid step `step` (for img2img / SDEdit starts).

  grid_kwargs: method, num_steps and the grid keywords of `sample`. A start sample for
  `sample(..., start_step=step)` is x = alpha_t x0 + sigma_t eps (the usual q_sample).
  """
  xs = make_tables(schedule, **grid_kwargs).xs
  S = len(xs["t"])
  if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < S:
    raise ValueError(f"step must be an integer in [0, {S - 1}] (a grid step), got {step!r}.")
  return float(xs["t"][step]), float(xs["alpha"][step]), float(xs["sigma"][step])


def start_step_for_strength(num_steps: int, strength: float) -> int:
  """First grid step for img2img with `strength` in [0, 1] (diffusers' convention:
  the last round-down(strength * S) steps are run; strength 1 starts from pure noise)."""
  if not 0.0 <= strength <= 1.0:
    raise ValueError(f"strength must be in [0, 1], got {strength!r}.")
  return num_steps - min(int(num_steps * strength), num_steps)


def start_step_for_noise(tables, sigma_latent: float) -> int:
  """Grid step whose noise level sigma_t / alpha_t is closest (in log) to sigma_latent; S for 0
  (restoring an input that carries noise of std sigma_latent: `driver.initial_state` weight 0)."""
  ve = np.asarray(tables.xs["sigma"], np.float64) / np.asarray(tables.xs["alpha"], np.float64)
  if sigma_latent <= 0:
    return len(ve)
  return int(np.argmin(np.abs(np.log(ve) - np.log(sigma_latent))))


def _check_x(x_T):
  shape, dtype = getattr(x_T, "shape", None), getattr(x_T, "dtype", None)
  if shape is None or len(shape) < 2 or shape[0] < 1:
    raise ValueError(f"x_T must be an array of shape [B, ...] with at least 2 axes (e.g. [B, H, W, C]), "
                     f"got shape {shape}.")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"x_T must be a floating-point array, got dtype {dtype}.")
  check_values(x_T, "x_T", expected="finite noise / latent values")


def sample(model_fn, schedule, x_T, rng, *, method, num_steps, eta=0.0, prediction_type="epsilon",
           timestep_spacing="leading", steps_offset=0, set_alpha_to_one=True, karras_sigmas=False,
           variance_type="fixed_small", clip_sample=False, start_step=0, known=None,
           return_trajectory=False):
  """Draws x_0 by running `method` from x_T; the whole loop is one `lax.scan`.

  Args:
    model_fn: model_fn(x_t, t) -> prediction like x_t (any float dtype; used in float32). x_t is
      always the variance-preserving input alpha_t x0 + sigma_t eps; t is float32 [B] on the DDPM
      index scale [0, T-1] (fractional for the sigma-space grids). For guidance wrap it with
      `classifier_free_guidance`.
    schedule: `ldm_jax.schedules.Schedule`.
    x_T: float [B, ...] finite standard normal noise (each method scales it by its init_noise_sigma), or,
      with start_step > 0, the VP sample at the noise level `noise_level(..., step=start_step)`.
    rng: PRNG key; step i draws its noise from jax.random.fold_in(rng, i).
    method: "ddpm", "ddim", "dpmpp_2m", "euler", "euler_ancestral" or "heun".
    num_steps: S >= 1, the number of grid steps (Heun evaluates the model 2S - 1 times).
    eta: DDIM noise weight >= 0 (0: deterministic DDIM, 1: DDPM-like); may be traced; "ddim" only.
    prediction_type: "epsilon", "sample" (x0) or "v_prediction".
    timestep_spacing, steps_offset: diffusers' grid semantics ("leading", "trailing", "linspace").
    set_alpha_to_one: DDIM's final alpha-bar is 1 (else alpha-bar_0), as in diffusers.
    karras_sigmas: Karras et al. (2022) noise levels; for "euler", "euler_ancestral", "heun", "dpmpp_2m".
    variance_type: "fixed_small" or "fixed_large" ("ddpm" only).
    clip_sample: clip every x0 prediction to [-1, 1].
    start_step: begin at this grid step (img2img / SDEdit; see `start_step_for_strength`).
    known: optional (x0_known [B, ...], known_mask broadcastable to x_T) for inpainting: after every
      step the region where known_mask = 1 (values in [0, 1]) is replaced by q_sample(x0_known) at the noise level of
      the next step (noise from fold_in(fold_in(rng, i), 1)); at the end it equals x0_known.
    return_trajectory: also return {"x_t": [S', B, ...], "x0_pred": [S', B, ...], "t": [S']}, the
      VP model input and the x0 prediction at each of the S' = S - start_step steps.
  Returns:
    x_0 float32 [B, ...] (and the trajectory dict if asked).
  """
  if not callable(model_fn):
    raise ValueError(f"model_fn must be callable, got {type(model_fn).__name__}.")
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(f"Unknown prediction_type {prediction_type!r}; valid choices: {', '.join(PREDICTION_TYPES)}.")
  _check_x(x_T)
  tables = make_tables(schedule, method=method, num_steps=num_steps, timestep_spacing=timestep_spacing,
                       steps_offset=steps_offset, set_alpha_to_one=set_alpha_to_one,
                       karras_sigmas=karras_sigmas, variance_type=variance_type)
  if not isinstance(start_step, (int, np.integer)) or not 0 <= start_step < num_steps:
    raise ValueError(f"start_step must be an integer in [0, {num_steps - 1}], got {start_step!r}.")
  if isinstance(eta, (int, float)) and not (np.isfinite(eta) and eta >= 0):
    raise ValueError(f"eta must be a finite number >= 0, got {eta!r}.")
  if method != "ddim" and isinstance(eta, (int, float)) and eta != 0:
    raise ValueError(f"eta={eta} only applies to method 'ddim', got method {method!r}.")
  if known is not None and (len(known) != 2 or getattr(known[0], "shape", None) != x_T.shape):
    raise ValueError(f"known must be (x0_known, known_mask) with x0_known of shape {x_T.shape}.")
  if known is not None:
    check_values(known[0], "known[0] (x0_known)", expected="finite values")
    check_values(known[1], "known[1] (known_mask)", lo=0, hi=1, expected="values in [0, 1]")
  stochastic = METHODS[method].stochastic
  if method == "ddim" and isinstance(eta, (int, float)) and eta == 0:
    stochastic = False  # deterministic DDIM: no noise to draw
  x = jnp.asarray(x_T, jnp.float32)
  scale0 = tables.init_scale if start_step == 0 else float(tables.xs["scale"][start_step])
  return driver.run(driver.denoiser(model_fn, prediction_type, clip_sample), tables, method,
                    x * scale0, driver.batch_noise(rng, x.shape), start=int(start_step), eta=eta,
                    after_step=None if known is None else driver.known_region(*known),
                    stochastic=stochastic, return_trajectory=return_trajectory)
