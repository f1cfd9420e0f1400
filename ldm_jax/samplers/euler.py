"""Euler and Euler-ancestral samplers in sigma space (Karras et al. 2022, Alg. 1 with Euler steps;
k-diffusion's sample_euler_ancestral), as diffusers' EulerDiscreteScheduler and
EulerAncestralDiscreteScheduler.

The state is the variance-exploding x = x0 + sigma eps = x_t / alpha_t; the model sees x_t = x / sqrt(sigma^2 + 1).
"""

import numpy as np

from ldm_jax.samplers import timesteps as ts

def tables(schedule, num_steps, *, timestep_spacing, steps_offset, karras_sigmas=False, method="euler", **_):
  """Per-step sigma_i -> sigma_{i+1}; for the ancestral variant sigma_up, sigma_down with
  sigma_up^2 = sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2, sigma_down^2 = sigma_{i+1}^2 - sigma_up^2."""
  t, sig, init = ts.sigma_space_grid(schedule, num_steps, method=method, timestep_spacing=timestep_spacing,
                                     steps_offset=steps_offset, karras_sigmas=karras_sigmas)
  s, s_next = sig[:-1], sig[1:]
  alpha, sigma, scale = ts.vp_of_ve(s)
  up = np.sqrt(s_next**2 * (s**2 - s_next**2) / s**2)
  down = np.sqrt(s_next**2 - up**2)
  xs = dict(t=t, alpha=alpha, sigma=sigma, scale=scale, s=s, s_next=s_next, s_up=up, s_down=down)
  return ts.Tables(xs, init_scale=init)


def init_carry(x):
  return {"x": x}


def _derivative(denoise, x, xs):
  """d = (x - D(x; sigma)) / sigma (Karras et al. 2022, eq. 1 / Alg. 1 line 5)."""
  x_t = x / xs["scale"]
  x0, _ = denoise(x_t, xs["t"], xs["alpha"], xs["sigma"])
  return (x - x0) / xs["s"], x_t, x0


def step(denoise, carry, xs, noise):
  """Euler step x' = x + (sigma_{i+1} - sigma_i) d."""
  x = carry["x"]
  d, x_t, x0 = _derivative(denoise, x, xs)
  return {"x": x + d * (xs["s_next"] - xs["s"])}, (x_t, x0)


def step_ancestral(denoise, carry, xs, noise):
  """Euler step to sigma_down, then fresh noise of std sigma_up: x' = x + (sigma_down - sigma_i) d + sigma_up z."""
  x = carry["x"]
  d, x_t, x0 = _derivative(denoise, x, xs)
  return {"x": x + d * (xs["s_down"] - xs["s"]) + xs["s_up"] * noise}, (x_t, x0)
