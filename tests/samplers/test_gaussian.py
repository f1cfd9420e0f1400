"""Closed form: driven by the exact denoiser of Gaussian data, every sampler converges to N(mu, S)."""

import jax
import numpy as np
import pytest

from experiments import gaussian_reference as ref
from ldm_jax import samplers, schedules
from ldm_jax.host_devices import OPTIMIZED_PROGRAM

MU = np.array([1.0, -0.5], np.float32)
COV = np.array([[0.5, 0.3], [0.3, 0.4]], np.float32)
# Zero terminal SNR, so that x_T ~ N(0, I) is exactly the terminal marginal (Lin et al. 2023).
SCHEDULE = schedules.rescale_zero_terminal_snr(schedules.get_schedule("linear", 1000))
SAMPLES = 20000  # Monte Carlo error of the stochastic samplers' moments ~ 1e-2


def gaussian_model_fn(prediction_type):
  return ref.exact_denoiser(SCHEDULE, MU, COV, prediction_type)


def moment_errors(method, num_steps, prediction_type="v_prediction", **kw):
  """(|mean - mu|, ||cov - S||_F / ||S||_F) of the sampler output (`ref.sampler_moments`)."""
  mean, cov = ref.sampler_moments(method, num_steps, SCHEDULE, MU, COV, samples=SAMPLES,
                                  rng=jax.random.key(0, impl="rbg"),  # rbg compiles faster on CPU
                                  x_rng=jax.random.key(1), prediction_type=prediction_type,
                                  compiler_options=OPTIMIZED_PROGRAM, **kw)  # runs > compiles
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
