"""Ancestral DDPM sampler (Ho et al. 2020, Alg. 2 / eq. 7) with diffusers' DDPMScheduler semantics."""

import numpy as np

from ldm_jax.samplers import timesteps as ts

VARIANCE_TYPES = ("fixed_small", "fixed_large")


def tables(schedule, num_steps, *, timestep_spacing, steps_offset, variance_type="fixed_small", **_):
  """Per-step posterior coefficients between consecutive grid timesteps t -> t' (t' = -1: alpha-bar 1).

  q(x_t' | x_t, x0) has mean c0 x0 + ct x_t with c0 = sqrt(a_t') beta / (1 - a_t),
  ct = sqrt(a_t / a_t') (1 - a_t') / (1 - a_t), beta = 1 - a_t / a_t' (Ho et al. eq. 7). Its variance
  is "fixed_small": beta (1 - a_t') / (1 - a_t) (clamped at 1e-20) or "fixed_large": beta. As in
  diffusers, no noise is added at t = 0.
  """
  if variance_type not in VARIANCE_TYPES:
    raise ValueError(f"Unknown variance_type {variance_type!r}; valid choices: {', '.join(VARIANCE_TYPES)}.")
  T, n = schedule.num_timesteps, num_steps
  t = ts.discrete_timesteps(T, n, timestep_spacing, steps_offset)
  ts.check_timesteps(t, T, n, method="ddpm", timestep_spacing=timestep_spacing, steps_offset=steps_offset)
  abar = np.asarray(schedule.alphas_cumprod, np.float64)
  a_t = abar[t]
  a_prev = np.concatenate([abar[t[1:]], [1.0]])
  beta = 1.0 - a_t / a_prev
  c0 = np.sqrt(a_prev) * beta / (1.0 - a_t)
  ct = np.sqrt(a_t / a_prev) * (1.0 - a_prev) / (1.0 - a_t)
  var = np.maximum((1.0 - a_prev) / (1.0 - a_t) * beta, 1e-20) if variance_type == "fixed_small" else beta
  std = np.where(t > 0, np.sqrt(var), 0.0)
  xs = dict(t=t, alpha=np.sqrt(a_t), sigma=np.sqrt(1.0 - a_t), scale=np.ones(n), c0=c0, ct=ct, std=std)
  return ts.Tables(xs, init_scale=1.0)


def init_carry(x):
  return {"x": x}


def step(denoise, carry, xs, noise):
  """x_t' = c0 x0 + ct x_t + std z."""
  x = carry["x"]
  x0, _ = denoise(x, xs["t"], xs["alpha"], xs["sigma"])
  return {"x": xs["c0"] * x0 + xs["ct"] * x + xs["std"] * noise}, (x, x0)
