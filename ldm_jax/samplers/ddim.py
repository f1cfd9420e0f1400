"""DDIM sampler (Song et al. 2021, eq. 12) with diffusers' DDIMScheduler semantics, any eta."""

import jax.numpy as jnp
import numpy as np

from ldm_jax.samplers import timesteps as ts


def tables(schedule, num_steps, *, timestep_spacing, steps_offset, set_alpha_to_one, **_):
  """Per-step constants.  The previous level is alpha-bar at t - T // S, as in diffusers.

  Note (diffusers' behaviour, kept for parity): for "trailing" and "linspace" spacing the step
  from t_i lands on t_i - T // S, which need not equal the next grid timestep t_{i+1}. A level
  below 0 is the final alpha-bar: 1 if set_alpha_to_one else alpha-bar_0.
  """
  T, n = schedule.num_timesteps, num_steps
  t = ts.discrete_timesteps(T, n, timestep_spacing, steps_offset)
  ts.check_timesteps(t, T, n, method="ddim", timestep_spacing=timestep_spacing, steps_offset=steps_offset)
  abar = np.asarray(schedule.alphas_cumprod, np.float64)
  final = 1.0 if set_alpha_to_one else abar[0]
  prev = t - T // n
  a_t = abar[t]
  a_prev = np.where(prev >= 0, abar[np.maximum(prev, 0)], final)
  # sigma_t(eta = 1)^2 = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)  (Song et al. eq. 16).
  var = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)
  xs = dict(t=t, alpha=np.sqrt(a_t), sigma=np.sqrt(1.0 - a_t), scale=np.ones(n),
            alpha_prev=np.sqrt(a_prev), one_minus_a_prev=1.0 - a_prev, var=var)
  return ts.Tables(xs, init_scale=1.0, final_alpha=float(np.sqrt(final)), final_sigma=float(np.sqrt(1.0 - final)))


def init_carry(x):
  return {"x": x}


def step(denoise, carry, xs, noise, *, eta):
  """x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - s^2) eps + s z, s = eta sigma_t(1)  (Song et al. eq. 12)."""
  x = carry["x"]
  x0, eps = denoise(x, xs["t"], xs["alpha"], xs["sigma"])
  std = eta * jnp.sqrt(xs["var"])
  direction = jnp.sqrt(jnp.maximum(xs["one_minus_a_prev"] - std**2, 0.0)) * eps
  x_prev = xs["alpha_prev"] * x0 + direction + std * noise
  return {"x": x_prev}, (x, x0)
