"""Noise schedules: the variances beta_t of the discrete forward process and their continuous view.

A schedule is data, not a class with behaviour: a `Schedule` pytree of two float32 arrays of shape
[T], `betas` (beta_t) and `alphas_cumprod` (alpha-bar_t = prod_{s<=t} (1 - beta_s), Ho et al. 2020
eq. 4). Index t runs over 0..T-1 (the DDPM paper's 1..T shifted by one, as in every codebase).

The tables are computed in float64 on the host and stored in float32, whatever dtype the network
runs in. `alpha_sigma` and `log_snr` give the continuous-time view (Kingma et al. 2021): for
fractional t the log-SNR is interpolated linearly between integer steps, which is what sigma-space
samplers and continuous likelihood computations need.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import array_values

SCHEDULE_NAMES = ("linear", "scaled_linear", "cosine", "sigmoid")

# Defaults (beta_start, beta_end) per schedule: Ho et al. 2020 for "linear" and "sigmoid";
# Rombach et al. 2022 / Stable Diffusion for "scaled_linear" (their configs call it "linear").
_DEFAULT_BETAS = {
    "linear": (1e-4, 2e-2),
    "scaled_linear": (0.00085, 0.012),
    "sigmoid": (1e-4, 2e-2),
}

# Terminal alpha-bar after rescaling to zero terminal SNR (2^-24, as diffusers' Euler scheduler
# does; lowered to alpha-bar_{T-2} / 2 where that is smaller, see rescale_zero_terminal_snr):
# SNR(T) <= 6e-8 is zero for every practical purpose, and an epsilon-prediction model still has a
# finite x0 = (x_t - sigma * eps) / alpha at the last step.
ZERO_SNR_ALPHA_BAR = 2.0**-24


class Schedule(NamedTuple):
  """The discrete forward process q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

  Attributes:
    betas: float32 [T], beta_t.
    alphas_cumprod: float32 [T], alpha-bar_t.
  """

  betas: jax.Array
  alphas_cumprod: jax.Array

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def _betas_float64(name, num_timesteps, beta_start, beta_end, cosine_s, max_beta):
  """beta_t for t = 0..T-1 in float64."""
  T = num_timesteps
  if name == "linear":
    return np.linspace(beta_start, beta_end, T, dtype=np.float64)
  if name == "scaled_linear":
    return np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
  if name == "sigmoid":
    s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, T, dtype=np.float64)))
    return s * (beta_end - beta_start) + beta_start
  # "cosine": alpha-bar(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2) (Nichol & Dhariwal 2021, eq. 17),
  # beta_t = 1 - alpha-bar(t + 1) / alpha-bar(t), clipped at max_beta to avoid a singularity at t = T.
  f = lambda u: np.cos((u / T + cosine_s) / (1.0 + cosine_s) * np.pi / 2.0) ** 2
  u = np.arange(T, dtype=np.float64)
  return np.minimum(1.0 - f(u + 1.0) / f(u), max_beta)


def get_schedule(
    name: str,
    num_timesteps: int = 1000,
    *,
    beta_start: float | None = None,
    beta_end: float | None = None,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
) -> Schedule:
  """Builds a named noise schedule.

  Args:
    name: one of SCHEDULE_NAMES. "linear": beta linear from 1e-4 to 0.02 (Ho et al. 2020);
      "scaled_linear": sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012) (LDM / Stable Diffusion);
      "cosine": Nichol & Dhariwal 2021 with offset `cosine_s` and beta clipped at `max_beta`;
      "sigmoid": beta = sigmoid(linspace(-6, 6)) rescaled to [beta_start, beta_end].
    num_timesteps: T >= 1.
    beta_start, beta_end: override the endpoints (not used by "cosine").
  Returns:
    A float32 `Schedule` with arrays of shape [T].
  """
  if name not in SCHEDULE_NAMES:
    raise ValueError(f"Unknown schedule name {name!r}; valid names: {', '.join(SCHEDULE_NAMES)}.")
  if not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
    raise ValueError(f"num_timesteps must be an integer >= 1, got {num_timesteps!r}.")
  if not cosine_s >= 0.0 or not 0.0 < max_beta < 1.0:
    raise ValueError(f"Need cosine_s >= 0 and 0 < max_beta < 1, got cosine_s={cosine_s}, max_beta={max_beta}.")
  if name == "cosine" and (beta_start is not None or beta_end is not None):
    raise ValueError("beta_start / beta_end do not apply to the 'cosine' schedule; use cosine_s / max_beta.")
  default_start, default_end = _DEFAULT_BETAS.get(name, (None, None))
  beta_start = default_start if beta_start is None else float(beta_start)
  beta_end = default_end if beta_end is None else float(beta_end)
  if name != "cosine" and not 0.0 < beta_start <= beta_end < 1.0:
    raise ValueError(f"Need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}.")
  betas = _betas_float64(name, int(num_timesteps), beta_start, beta_end, cosine_s, max_beta)
  return _from_betas_float64(betas)


def _from_betas_float64(betas: np.ndarray) -> Schedule:
  alphas_cumprod = np.cumprod(1.0 - betas)
  return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(alphas_cumprod, jnp.float32))


def from_betas(betas) -> Schedule:
  """A schedule from explicit beta_t values [T], each finite and in (0, 1].

  beta_t = 1 (alpha-bar_t = 0, zero SNR) is allowed for the last step, as diffusers' zero-terminal-SNR
  `trained_betas` have it; beta_t <= 0, > 1, NaN or inf raise a ValueError naming the bad values.
  """
  try:
    betas = np.asarray(betas, np.float64)
  except (TypeError, ValueError) as e:
    raise TypeError(f"betas must be a 1-D array of numbers in (0, 1], got {type(betas).__name__} "
                    f"({e}).") from None
  if betas.ndim != 1 or betas.size < 1:
    raise ValueError(f"betas must be a non-empty 1-D array with values in (0, 1], got shape {betas.shape}.")
  array_values.check_values(betas, "betas", lo=0.0, hi=1.0, lo_open=True,
                            expected="finite values in (0, 1]")
  return _from_betas_float64(betas)


def rescale_zero_terminal_snr(schedule: Schedule) -> Schedule:
  """Rescales a schedule to zero terminal SNR (Lin et al. 2023, Algorithm 1).

  sqrt(alpha-bar) is shifted so that its last value is 0 and scaled so that its first value is
  unchanged; betas are recomputed from the new alpha-bar. The terminal alpha-bar (exactly 0 after
  the shift) is then raised to min(ZERO_SNR_ALPHA_BAR, alpha-bar_{T-2} / 2) so that
  epsilon-prediction models keep a finite x0 estimate. Only the terminal entry changes, and it stays
  below alpha-bar_{T-2} so every beta stays in (0, 1) (for "linear" at T = 1000, alpha-bar_{T-2} is
  already 4e-9 < 2^-24). Needs T >= 2.
  """
  if schedule.num_timesteps < 2:
    raise ValueError(f"rescale_zero_terminal_snr needs num_timesteps >= 2, got {schedule.num_timesteps}.")
  # alpha-bar recomputed in float64 from the betas: the float32 table's rounding (6e-8) would become
  # a 1e-3 relative error in the recomputed beta_t ~ 1e-4.
  sqrt_ab = np.sqrt(np.cumprod(1.0 - np.asarray(schedule.betas, np.float64)))
  first, last = sqrt_ab[0], sqrt_ab[-1]
  sqrt_ab = (sqrt_ab - last) * first / (first - last)
  alphas_cumprod = sqrt_ab**2
  alphas_cumprod[-1] = min(ZERO_SNR_ALPHA_BAR, 0.5 * alphas_cumprod[-2])
  prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
  betas = 1.0 - alphas_cumprod / prev
  return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(alphas_cumprod, jnp.float32))


# ----------------------------------------------------------------------------------------------------
# Continuous-time view (Kingma et al. 2021): z_t = alpha_t x + sigma_t eps with alpha_t^2 + sigma_t^2 = 1.


def log_snr_table(schedule: Schedule) -> jax.Array:
  """lambda_t = log(alpha-bar_t / (1 - alpha-bar_t)) at t = 0..T-1, float32 [T]."""
  a = schedule.alphas_cumprod.astype(jnp.float32)
  return jnp.log(a) - jnp.log1p(-a)


def log_snr(schedule: Schedule, t) -> jax.Array:
  """lambda(t) at float or int timesteps t (any shape), linear in t between integer steps.

  t is clipped to [0, T-1] (callers validate ranges at their public edges).
  """
  table = log_snr_table(schedule)
  t = jnp.clip(jnp.asarray(t, jnp.float32), 0.0, schedule.num_timesteps - 1)
  lo = jnp.floor(t).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, schedule.num_timesteps - 1)
  w = t - lo.astype(jnp.float32)
  return table[lo] * (1.0 - w) + table[hi] * w


def alpha_sigma(schedule: Schedule, t) -> tuple[jax.Array, jax.Array]:
  """(alpha_t, sigma_t) = (sqrt(alpha-bar_t), sqrt(1 - alpha-bar_t)), float32, shape of t.

  Integer t indexes the table exactly; float t uses the interpolated log-SNR,
  alpha_t^2 = sigmoid(lambda), sigma_t^2 = sigmoid(-lambda).
  """
  t = jnp.asarray(t)
  if jnp.issubdtype(t.dtype, jnp.integer):
    a = schedule.alphas_cumprod[t].astype(jnp.float32)
    return jnp.sqrt(a), jnp.sqrt(1.0 - a)
  lam = log_snr(schedule, t)
  return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))


def sigmas(schedule: Schedule) -> jax.Array:
  """Variance-exploding noise levels sigma_t = sqrt((1 - alpha-bar_t) / alpha-bar_t), float32 [T].

  x_t / alpha_t = x_0 + sigma_t * eps (Karras et al. 2022's parameterisation of the same process).
  """
  a = schedule.alphas_cumprod.astype(jnp.float32)
  return jnp.sqrt((1.0 - a) / a)


# ----------------------------------------------------------------------------------------------------
# Accurate derived tables (float32, computed inside jit from the stored float32 arrays).


def one_minus_alphas_cumprod(schedule: Schedule) -> jax.Array:
  """1 - alpha-bar_t, float32 [T], accurate to a few ulp also where alpha-bar_t is close to 1.

  Computed as -expm1(sum_{s<=t} log1p(-beta_s)): the naive float32 `1 - alphas_cumprod` loses
  about 3e-4 of its relative precision at t = 0 of the linear schedule (beta_0 = 1e-4), which the
  posterior variance and the SNR inherit.
  """
  log_alphas_cumprod = jnp.cumsum(jnp.log1p(-schedule.betas.astype(jnp.float32)))
  return -jnp.expm1(log_alphas_cumprod)


def snr_table(schedule: Schedule) -> jax.Array:
  """SNR_t = alpha-bar_t / (1 - alpha-bar_t) = alpha_t^2 / sigma_t^2 (Kingma et al. 2021), float32 [T]."""
  return schedule.alphas_cumprod.astype(jnp.float32) / one_minus_alphas_cumprod(schedule)


def from_log_snr(log_snr_values) -> Schedule:
  """A schedule with prescribed log-SNR lambda_t = log(alpha-bar_t / (1 - alpha-bar_t)), t = 0..T-1.

  alpha-bar_t = sigmoid(lambda_t) and beta_t = 1 - alpha-bar_t / alpha-bar_{t-1} (alpha-bar_{-1} = 1),
  computed in float64. `lambda_t` must be strictly decreasing. With lambda linear in t the steps are
  uniform in log-SNR, so the discrete variational bound converges to the continuous-time one as
  T grows (Kingma et al. 2021); the named schedules instead have sigma_t^2 growing linearly in t
  near t = 0, whose first steps double the noise variance for every T.
  """
  lam = np.asarray(log_snr_values, np.float64)
  if lam.ndim != 1 or lam.size < 1 or np.any(np.diff(lam) >= 0) or not np.all(np.isfinite(lam)):
    raise ValueError(f"log_snr_values must be a finite, strictly decreasing 1-D array, got shape {lam.shape}.")
  alphas_cumprod = 1.0 / (1.0 + np.exp(-lam))
  prev = np.concatenate([[1.0], alphas_cumprod[:-1]])
  betas = -np.expm1(np.log(alphas_cumprod) - np.log(prev))
  return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(alphas_cumprod, jnp.float32))
