"""Heun's second-order sampler (Karras et al. 2022, Alg. 1, deterministic: Alg. 2 with S_churn = 0),
as diffusers' HeunDiscreteScheduler: 2S - 1 model evaluations, the last step (to sigma = 0) is Euler."""

import jax
import numpy as np

from ldm_jax.samplers import timesteps as ts


def tables(schedule, num_steps, *, timestep_spacing, steps_offset, karras_sigmas=False, **_):
  """Per-step sigma_i, sigma_{i+1} and the model inputs of both evaluations."""
  t, sig, init = ts.sigma_space_grid(schedule, num_steps, method="heun", timestep_spacing=timestep_spacing,
                                     steps_offset=steps_offset, karras_sigmas=karras_sigmas)
  s, s_next = sig[:-1], sig[1:]
  alpha, sigma, scale = ts.vp_of_ve(s)
  alpha_n, sigma_n, scale_n = ts.vp_of_ve(s_next)
  t_next = np.concatenate([t[1:], t[-1:]])
  xs = dict(t=t, alpha=alpha, sigma=sigma, scale=scale, s=s, s_next=s_next, t_next=t_next,
            alpha_next=alpha_n, sigma_next=sigma_n, scale_next=scale_n,
            s_next_safe=np.where(s_next > 0, s_next, 1.0))
  return ts.Tables(xs, init_scale=init)


def init_carry(x):
  return {"x": x}


def step(denoise, carry, xs, noise):
  """x_e = x + dt d_i; if sigma_{i+1} > 0: x' = x + dt (d_i + d(x_e; sigma_{i+1})) / 2 (Alg. 1 lines 5-8)."""
  x = carry["x"]
  x_t = x / xs["scale"]
  x0, _ = denoise(x_t, xs["t"], xs["alpha"], xs["sigma"])
  d = (x - x0) / xs["s"]
  dt = xs["s_next"] - xs["s"]
  x_euler = x + d * dt

  def correct(_):
    x0_e, _ = denoise(x_euler / xs["scale_next"], xs["t_next"], xs["alpha_next"], xs["sigma_next"])
    d_e = (x_euler - x0_e) / xs["s_next_safe"]
    return x + 0.5 * (d + d_e) * dt

  x_next = jax.lax.cond(xs["s_next"] > 0, correct, lambda _: x_euler, None)
  return {"x": x_next}, (x_t, x0)
