"""Closed form: driven by the exact denoiser of Gaussian data, every sampler converges to N(mu, S)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax import samplers, schedules
from ldm_jax.diffusion.parameterization import target_from_x0_eps, x0_to_eps

MU = np.array([1.0, -0.5], np.float32)
COV = np.array([[0.5, 0.3], [0.3, 0.4]], np.float32)
# Zero terminal SNR, so that x_T ~ N(0, I) is exactly the terminal marginal (Lin et al. 2023).
SCHEDULE = schedules.rescale_zero_terminal_snr(schedules.get_schedule("linear", 1000))
DETERMINISTIC = ("ddim", "dpmpp_2m", "euler", "heun")
SAMPLES = 20000  # Monte Carlo error of the stochastic samplers' moments ~ 1e-2


def gaussian_model_fn(prediction_type):
  """Exact network output for x0 ~ N(MU, COV): E[x0|x_t] = mu + a S (a^2 S + s^2 I)^-1 (x_t - a mu)."""
  mu, cov = jnp.asarray(MU), jnp.asarray(COV)

  def model_fn(x_t, t):
    a, s = schedules.alpha_sigma(SCHEDULE, t[0])  # the samplers call with one t for the whole batch
    gain = a * cov @ jnp.linalg.inv(a**2 * cov + s**2 * jnp.eye(2))
    x0 = mu + (x_t - a * mu) @ gain.T
    return target_from_x0_eps(prediction_type, x0, x0_to_eps(x_t, x0, a, s), a, s)

  return model_fn


def moment_errors(method, num_steps, prediction_type="v_prediction", **kw):
  """(|mean - mu|, ||cov - S||_F / ||S||_F) of the sampler output; exact for deterministic samplers
  (an affine map of x_T here: push 0 and the unit vectors through), Monte Carlo otherwise."""
  deterministic = method in DETERMINISTIC and kw.get("eta", 0.0) == 0.0
  rng = jax.random.key(0, impl="rbg")  # any key type works; rbg compiles faster on CPU
  x_T = (jnp.concatenate([jnp.zeros((1, 2)), jnp.eye(2)]) if deterministic
         else jax.random.normal(jax.random.key(1), (SAMPLES, 2)))
  x0 = samplers.sample(gaussian_model_fn(prediction_type), SCHEDULE, x_T, rng, method=method, num_steps=num_steps,
                       prediction_type=prediction_type, timestep_spacing="trailing", **kw)
  x0 = np.asarray(x0, np.float64)
  if deterministic:
    A = (x0[1:] - x0[0]).T
    mean, cov = x0[0], A @ A.T
  else:
    mean, cov = x0.mean(0), np.cov(x0.T)
  return np.linalg.norm(mean - MU), np.linalg.norm(cov - COV) / np.linalg.norm(COV)


@pytest.mark.parametrize("method,kw,tol", [
    ("ddpm", {}, 0.03), ("ddpm", {"variance_type": "fixed_large"}, 0.03), ("ddim", {}, 0.01),
    ("ddim", {"eta": 1.0}, 0.03), ("dpmpp_2m", {}, 0.01), ("euler", {}, 0.01),
    ("euler", {"karras_sigmas": True}, 0.02), ("euler_ancestral", {}, 0.03), ("heun", {}, 0.01),
    ("dpmpp_2m", {"karras_sigmas": True}, 0.01), ("heun", {"karras_sigmas": True}, 0.01)])
def test_moments_converge(method, kw, tol):
  few_mean, few_cov = moment_errors(method, 10, **kw)
  many_mean, many_cov = moment_errors(method, 250 if method in ("dpmpp_2m", "heun") else 1000, **kw)
  assert many_mean < tol and many_cov < tol, (many_mean, many_cov)
  assert many_cov < 0.25 * few_cov, (few_cov, many_cov)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_prediction_types_agree(prediction_type):
  """The same exact model in another parameterisation gives the same samples (up to float32)."""
  ref_mean, ref_cov = moment_errors("dpmpp_2m", 50)
  mean, cov = moment_errors("dpmpp_2m", 50, prediction_type=prediction_type)
  assert abs(mean - ref_mean) < 2e-3 and abs(cov - ref_cov) < 2e-3


def test_euler_ancestral_equals_ddpm_posterior():
  """Euler-ancestral's step (sigma_down, sigma_up) is DDPM's posterior q(x_t'|x_t, x0) in VE form, so with
  the same per-step noise both samplers give the same samples (same grid: trailing spacing)."""
  x_T = jax.random.normal(jax.random.key(1), (64, 2))
  kw = dict(num_steps=20, prediction_type="v_prediction", timestep_spacing="trailing")
  a = samplers.sample(gaussian_model_fn("v_prediction"), SCHEDULE, x_T, jax.random.key(0), method="ddpm", **kw)
  b = samplers.sample(gaussian_model_fn("v_prediction"), SCHEDULE, x_T, jax.random.key(0), method="euler_ancestral", **kw)
  np.testing.assert_allclose(a, b, atol=2e-4)
