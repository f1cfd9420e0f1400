"""The forward-process posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7).

With DDPM indices t = 0..T-1 (the paper's 1..T shifted by one) and alpha-bar_{-1} = 1:

  mean     = c0_t x_0 + ct_t x_t,   c0_t = beta_t sqrt(alpha-bar_{t-1}) / (1 - alpha-bar_t),
                                    ct_t = sqrt(1 - beta_t) (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t),
  variance = beta-tilde_t = beta_t (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t).

At t = 0 the posterior is a point mass at x_0 (c0 = 1, ct = 0, variance 0); its log-variance is
"clipped" to log beta-tilde_1, as in Ho et al.'s code, improved-diffusion and diffusers, so that a
model with variance exp(log-variance) stays finite there (this is the t = 0 decoder variance).
All tables are float32 [T], computed from `one_minus_alphas_cumprod` to keep full relative
precision at small t.
"""

import jax
import jax.numpy as jnp

from ldm_jax.diffusion.forward import check_timesteps
from ldm_jax.diffusion.parameterization import append_dims
from ldm_jax.schedules import Schedule, one_minus_alphas_cumprod


def _prev_tables(schedule: Schedule):
  """(alpha-bar_{t-1}, 1 - alpha-bar_{t-1}) with alpha-bar_{-1} = 1, float32 [T]."""
  abar = schedule.alphas_cumprod.astype(jnp.float32)
  one_minus = one_minus_alphas_cumprod(schedule)
  abar_prev = jnp.concatenate([jnp.ones((1,), jnp.float32), abar[:-1]])
  one_minus_prev = jnp.concatenate([jnp.zeros((1,), jnp.float32), one_minus[:-1]])
  return abar_prev, one_minus_prev


def posterior_variance(schedule: Schedule) -> jax.Array:
  """beta-tilde_t = beta_t (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t), float32 [T] (0 at t = 0)."""
  _, one_minus_prev = _prev_tables(schedule)
  betas = schedule.betas.astype(jnp.float32)
  return betas * one_minus_prev / one_minus_alphas_cumprod(schedule)


def posterior_log_variance_clipped(schedule: Schedule) -> jax.Array:
  """log beta-tilde_t with the t = 0 entry replaced by log beta-tilde_1, float32 [T].

  For T = 1 there is no beta-tilde_1; log beta_0 (the "fixed large" variance) is used instead.
  """
  var = posterior_variance(schedule)
  first = var[1] if schedule.num_timesteps > 1 else schedule.betas[0].astype(jnp.float32)
  return jnp.log(jnp.concatenate([first[None], var[1:]]))


def posterior_mean_coefs(schedule: Schedule) -> tuple[jax.Array, jax.Array]:
  """(c0_t, ct_t): the posterior mean is c0_t x_0 + ct_t x_t (Ho et al. 2020, eq. 7), float32 [T] each."""
  abar_prev, one_minus_prev = _prev_tables(schedule)
  betas = schedule.betas.astype(jnp.float32)
  one_minus = one_minus_alphas_cumprod(schedule)
  coef_x0 = betas * jnp.sqrt(abar_prev) / one_minus
  coef_xt = jnp.sqrt(1.0 - betas) * one_minus_prev / one_minus
  return coef_x0, coef_xt


def q_posterior(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array):
  """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7).

  Args:
    schedule: the noise schedule.
    x0, x_t: [B, ...] (same shape); x0 may be a model's estimate, which gives the mean of
      p_theta(x_{t-1} | x_t).
    t: int32 [B] in [0, T-1] (checked when concrete).
  Returns:
    (mean [B, ...] float32, variance [B, 1, ..., 1], log_variance_clipped [B, 1, ..., 1]); the
    last two broadcast against x_t.
  """
  x0, x_t = jnp.asarray(x0), jnp.asarray(x_t)
  if x0.shape != x_t.shape or x0.ndim < 1:
    raise ValueError(f"x0 and x_t must have the same shape [B, ...], got {list(x0.shape)} and {list(x_t.shape)}.")
  check_timesteps(t, schedule.num_timesteps, x0.shape[0])
  t = jnp.asarray(t)
  coef_x0, coef_xt = posterior_mean_coefs(schedule)
  expand = lambda table: append_dims(table[t], x0.ndim)
  mean = expand(coef_x0) * x0.astype(jnp.float32) + expand(coef_xt) * x_t.astype(jnp.float32)
  return mean, expand(posterior_variance(schedule)), expand(posterior_log_variance_clipped(schedule))
