"""DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2), as diffusers' DPMSolverMultistepScheduler
(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
final_sigmas_type="zero")."""

import jax.numpy as jnp
import numpy as np

from ldm_jax.samplers import timesteps as ts


def tables(schedule, num_steps, *, timestep_spacing, steps_offset, karras_sigmas=False, **_):
  """Per-step coefficients of x' = c_x x + c_d ((1 + c_2) D_i - c_2 D_{i-1}), D = x0 predictions.

  With lambda = log(alpha / sigma) and h = lambda_{i+1} - lambda_i: c_x = sigma_{i+1} / sigma_i,
  c_d = -alpha_{i+1} expm1(-h) (first order, DDIM) and c_2 = 1 / (2 r), r = h_{i-1} / h for the
  second-order multistep update. As in diffusers, the first step (no history) and the last step (to
  sigma = 0) are first order (c_2 = 0).

  karras_sigmas: Karras et al. noise levels between the table's extremes; the model then gets the
  rounded timestep of each level, as in diffusers, so with many steps (e.g. >= 45 for T = 1000
  scaled_linear) two steps can share a rounded model timestep while their noise levels differ.
  """
  T, n = schedule.num_timesteps, num_steps
  table = ts.ve_sigmas(schedule.alphas_cumprod)
  if karras_sigmas:
    sig = ts.karras_levels(table[0], table[-1], n)
    t = ts.sigma_to_t(sig, table).round()
  else:
    t = ts.dpm_timesteps(T, n, timestep_spacing, steps_offset)
    ts.check_timesteps(t, T, n, method="dpmpp_2m", timestep_spacing=timestep_spacing, steps_offset=steps_offset)
    sig = ts.interp_sigmas(t, table)
  ts.check_timesteps(t, T, n, method="dpmpp_2m", timestep_spacing=timestep_spacing,
                     steps_offset=steps_offset, distinct=not karras_sigmas)
  sig = np.asarray(sig, np.float32).astype(np.float64)  # diffusers keeps float32 sigmas
  ts.check_sigmas(sig, method="dpmpp_2m", n=n, timestep_spacing=timestep_spacing)
  s, s_next = sig, np.concatenate([sig[1:], [0.0]])
  alpha, alpha_next = 1.0 / np.sqrt(s**2 + 1.0), 1.0 / np.sqrt(s_next**2 + 1.0)
  # exp(-h) = s_next / s in VE noise levels, so the final step (s_next = 0) stays finite.
  c_x = (s_next * alpha_next) / (s * alpha)
  c_d = alpha_next * (1.0 - s_next / s)
  c_2 = np.zeros(n)
  if n > 2:
    i = np.arange(1, n - 1)
    h = np.log(s[i] / s[i + 1])
    h_prev = np.log(s[i - 1] / s[i])
    c_2[i] = 0.5 * h / h_prev
  xs = dict(t=t, alpha=alpha, sigma=s * alpha, scale=np.ones(n), c_x=c_x, c_d=c_d, c_2=c_2)
  return ts.Tables(xs, init_scale=1.0)


def init_carry(x):
  return {"x": x, "x0_prev": jnp.zeros_like(x)}


def step(denoise, carry, xs, noise):
  """One DPM-Solver++ step in data prediction: linear multistep on D = x0 in lambda."""
  x = carry["x"]
  x0, _ = denoise(x, xs["t"], xs["alpha"], xs["sigma"])
  d = (1.0 + xs["c_2"]) * x0 - xs["c_2"] * carry["x0_prev"]
  return {"x": xs["c_x"] * x + xs["c_d"] * d, "x0_prev": x0}, (x, x0)
