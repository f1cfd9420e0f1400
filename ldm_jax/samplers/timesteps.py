"""Timestep and noise-level grids of the samplers, with diffusers' exact spacing semantics.

All grids are computed on the host in numpy at trace time (they depend only on Python ints and the
schedule table) and checked explicitly: JAX would clamp an out-of-range index silently.

Three families, as in diffusers (Lin et al. 2023, Table 2 names the spacings):
  * integer grids of DDIM / DDPM (`discrete_timesteps`): S timesteps in [0, T-1];
  * integer grids of DPM-Solver (`dpm_timesteps`): S + 1 points, the last (t = 0 side) dropped;
  * float grids of the sigma-space samplers Euler / Heun (`sigma_space_timesteps`), whose noise
    levels are interpolated linearly in sigma (`interp_sigmas`), optionally replaced by Karras et al.
    (2022, eq. 5) levels (`karras_levels`) whose timesteps are found by `sigma_to_t`; the final
    noise level is 0.
"""

from typing import NamedTuple

import numpy as np

SPACINGS = ("leading", "trailing", "linspace")


def check_spacing(timestep_spacing: str) -> None:
  if timestep_spacing not in SPACINGS:
    raise ValueError(
        f"Unknown timestep_spacing {timestep_spacing!r}; valid choices: {', '.join(SPACINGS)}.")


def _trailing(T: int, n: int) -> np.ndarray:
  # diffusers' round(arange(T, 0, -T / n)) - 1, keeping only its first n values: floating-point
  # rounding makes numpy's arange return n + 1 values for some n (e.g. n = 61 for T = 1000), whose
  # last, round(~0) - 1 = -1, would index alpha-bar from the end in diffusers.
  return np.round(np.arange(T, 0, -T / n)[:n]) - 1


def discrete_timesteps(T: int, n: int, timestep_spacing: str, steps_offset: int) -> np.ndarray:
  """DDIM / DDPM timesteps (diffusers DDIMScheduler / DDPMScheduler.set_timesteps), int64 [n], descending.

  "linspace": round(linspace(0, T-1, n)); "leading": k * (T // n) + steps_offset;
  "trailing": round(T - k T / n) - 1.
  """
  check_spacing(timestep_spacing)
  if timestep_spacing == "linspace":
    t = np.linspace(0, T - 1, n).round()[::-1]
  elif timestep_spacing == "leading":
    t = (np.arange(n) * (T // n)).round()[::-1] + steps_offset
  else:
    t = _trailing(T, n)
  return t.astype(np.int64)


def dpm_timesteps(T: int, n: int, timestep_spacing: str, steps_offset: int) -> np.ndarray:
  """DPM-Solver timesteps (diffusers DPMSolverMultistepScheduler.set_timesteps), int64 [n], descending.

  "linspace" and "leading" build n + 1 points and drop the last one (t = 0 side):
  round(linspace(0, T-1, n+1)) and k * (T // (n+1)) + steps_offset; "trailing" as for DDIM.
  """
  check_spacing(timestep_spacing)
  if timestep_spacing == "linspace":
    t = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
  elif timestep_spacing == "leading":
    t = (np.arange(n + 1) * (T // (n + 1))).round()[::-1][:-1] + steps_offset
  else:
    t = _trailing(T, n)
  return t.astype(np.int64)


def sigma_space_timesteps(T: int, n: int, timestep_spacing: str, steps_offset: int) -> np.ndarray:
  """Euler / Heun timesteps (diffusers EulerDiscreteScheduler.set_timesteps), float [n], descending.

  "linspace" is not rounded (fractional timesteps, computed in float32 as diffusers does).
  """
  check_spacing(timestep_spacing)
  if timestep_spacing == "linspace":
    t = np.linspace(0, T - 1, n, dtype=np.float32)[::-1]
  elif timestep_spacing == "leading":
    t = (np.arange(n) * (T // n)).round()[::-1].astype(np.float32) + steps_offset
  else:
    t = _trailing(T, n).astype(np.float32)
  return t.astype(np.float64)


def ve_sigmas(alphas_cumprod) -> np.ndarray:
  """sigma_t = sqrt((1 - alpha-bar_t) / alpha-bar_t) at t = 0..T-1 (float64 [T], ascending)."""
  a = np.asarray(alphas_cumprod, np.float32).astype(np.float64)
  return np.sqrt((1.0 - a) / a)


def interp_sigmas(t: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
  """sigma at fractional timesteps t, linear in sigma between integer steps (diffusers' default)."""
  return np.interp(t, np.arange(len(sigmas)), sigmas)


def karras_levels(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
  """Karras et al. 2022, eq. 5: (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho."""
  ramp = np.linspace(0, 1, n)
  lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  return (hi + ramp * (lo - hi)) ** rho


def sigma_to_t(sigma: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
  """Fractional timesteps of noise levels sigma, linear in log(sigma) between integer steps.

  This inverts the schedule's log-SNR interpolation (log-SNR = -2 log sigma), as
  `ldm_jax.schedules.alpha_sigma` uses for fractional t. sigmas: the ascending table [T].
  """
  log_sigmas = np.log(sigmas)
  log_sigma = np.log(np.maximum(np.asarray(sigma, np.float64), 1e-10))
  lo = np.clip(np.searchsorted(log_sigmas, log_sigma, side="right") - 1, 0, len(sigmas) - 2)
  w = np.clip((log_sigmas[lo] - log_sigma) / (log_sigmas[lo] - log_sigmas[lo + 1]), 0.0, 1.0)
  return (1.0 - w) * lo + w * (lo + 1)


def check_timesteps(t: np.ndarray, T: int, n: int, *, method: str, timestep_spacing: str,
                    steps_offset: int, distinct: bool = True) -> None:
  """Raises ValueError unless t holds n (distinct, if asked) timesteps, all within [0, T-1]."""
  where = (f"method={method!r}, num_steps={n}, timestep_spacing={timestep_spacing!r}, "
           f"steps_offset={steps_offset}, T={T}")
  if len(t) != n:
    raise ValueError(f"The timestep grid has {len(t)} entries instead of num_steps={n} ({where}).")
  bad = t[(t < 0) | (t > T - 1)]
  if bad.size:
    raise ValueError(f"Timesteps {sorted(set(bad.tolist()))} fall outside [0, {T - 1}] ({where}); "
                     "use a smaller steps_offset or another timestep_spacing.")
  if distinct and len(np.unique(t)) != n:
    vals, counts = np.unique(t, return_counts=True)
    raise ValueError(f"Repeated timesteps {vals[counts > 1].tolist()} in the grid ({where}); "
                     "use fewer steps or another timestep_spacing.")


def check_sigmas(sigmas: np.ndarray, *, method: str, n: int, timestep_spacing: str) -> None:
  """Raises ValueError unless the n noise levels (before the final one) strictly decrease."""
  s = sigmas[:n]
  if not np.all(np.isfinite(s)) or np.any(np.diff(s) >= 0) or np.any(s <= 0):
    raise ValueError(f"Noise levels of method={method!r}, num_steps={n}, "
                     f"timestep_spacing={timestep_spacing!r} are not strictly decreasing and positive: "
                     f"{s.tolist()[:8]}...; use fewer steps or another timestep_spacing.")


class Tables(NamedTuple):
  """A sampler's per-step constants, computed on the host and closed over by the scan.

  xs: dict of float arrays [S], one entry per step, scanned over. Every method provides "t" (the
    model timestep), "alpha", "sigma" (the variance-preserving level alpha_t, sigma_t of the model
    input x_t = alpha_t x0 + sigma_t eps at that step) and "scale" (the sampler state is
    scale * x_t: 1 for VP samplers, sqrt(sigma_VE^2 + 1) for sigma-space samplers).
  init_scale: the state at step 0 is init_scale * x_T (diffusers' init_noise_sigma).
  final_alpha, final_sigma: the VP level of the returned sample (1, 0 except for DDIM with
    set_alpha_to_one=False).
  """

  xs: dict
  init_scale: float
  final_alpha: float = 1.0
  final_sigma: float = 0.0


def sigma_space_grid(schedule, n: int, *, method: str, timestep_spacing: str, steps_offset: int,
                     karras_sigmas: bool):
  """Euler / Heun grid (diffusers EulerDiscreteScheduler, HeunDiscreteScheduler).

  Returns (t [n] float, sigmas [n + 1] with sigmas[n] = 0, init_noise_sigma). The Karras levels span
  the interpolated levels of the spaced grid (so they depend on the spacing, as in diffusers).
  init_noise_sigma is sigma_max for "linspace" / "trailing" and sqrt(sigma_max^2 + 1) for "leading".
  """
  T = schedule.num_timesteps
  table = ve_sigmas(schedule.alphas_cumprod)
  t = sigma_space_timesteps(T, n, timestep_spacing, steps_offset)
  check_timesteps(t, T, n, method=method, timestep_spacing=timestep_spacing, steps_offset=steps_offset)
  sig = interp_sigmas(t, table)
  if karras_sigmas:
    sig = karras_levels(sig[-1], sig[0], n)
    t = sigma_to_t(sig, table)
  sig = np.concatenate([sig, [0.0]]).astype(np.float32).astype(np.float64)
  check_sigmas(sig, method=method, n=n, timestep_spacing=timestep_spacing)
  check_timesteps(t, T, n, method=method, timestep_spacing=timestep_spacing, steps_offset=steps_offset)
  init = sig.max() if timestep_spacing in ("linspace", "trailing") else np.sqrt(sig.max() ** 2 + 1.0)
  return t.astype(np.float32).astype(np.float64), sig, float(np.float32(init))


def vp_of_ve(sigma_ve):
  """(alpha, sigma, scale) of a VE noise level: alpha = 1 / sqrt(s^2 + 1), sigma = s alpha, scale = 1 / alpha."""
  scale = np.sqrt(np.asarray(sigma_ve, np.float64) ** 2 + 1.0)
  return 1.0 / scale, sigma_ve / scale, scale
