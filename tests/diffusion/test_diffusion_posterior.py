"""q(x_{t-1} | x_t, x_0) against Bayes' rule in float64 and against diffusers' DDPMScheduler."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

import jax.numpy as jnp
from ldm_jax.diffusion import posterior_log_variance_clipped, posterior_variance, q_posterior
from ldm_jax.schedules import get_schedule, rescale_zero_terminal_snr

SCHEDULES = {
    "linear": get_schedule("linear", 1000),
    "cosine": get_schedule("cosine", 1000),
    "zero_snr_scaled_linear": rescale_zero_terminal_snr(get_schedule("scaled_linear", 1000)),
    "short_sigmoid": get_schedule("sigmoid", 7),
}


def bayes_posterior_float64(betas, x0, x_t):
  """Normalised product q(x_t | x_{t-1}) q(x_{t-1} | x_0) over x_{t-1}, per dimension, for t = 1..T-1.

  q(x_t | x_{t-1}) = N(sqrt(1 - b_t) x_{t-1}, b_t) is, as a function of x_{t-1}, a Gaussian with
  precision (1 - b_t) / b_t and mean x_t / sqrt(1 - b_t); q(x_{t-1} | x_0) = N(sqrt(a_{t-1}) x0, 1 - a_{t-1}).
  Returns (mean [T-1, D], variance [T-1]).
  """
  alphas_cumprod = np.cumprod(1.0 - betas)
  b, a_prev = betas[1:, None], alphas_cumprod[:-1, None]
  prec_lik, mean_lik = (1.0 - b) / b, x_t[1:] / np.sqrt(1.0 - b)
  prec_prior, mean_prior = 1.0 / (1.0 - a_prev), np.sqrt(a_prev) * x0[1:]
  var = 1.0 / (prec_lik + prec_prior)
  return var * (prec_lik * mean_lik + prec_prior * mean_prior), var[:, 0]


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_posterior_equals_bayes_rule(name):
  s = SCHEDULES[name]
  T = s.num_timesteps
  rs = np.random.RandomState(0)
  x0, x_t = rs.randn(T, 3), rs.randn(T, 3)
  mean, var, log_var = q_posterior(s, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32),
                                   jnp.arange(T, dtype=jnp.int32))
  assert mean.shape == (T, 3) and var.shape == log_var.shape == (T, 1)
  assert mean.dtype == var.dtype == jnp.float32
  ref_mean, ref_var = bayes_posterior_float64(np.asarray(s.betas, np.float64), x0, x_t)
  np.testing.assert_allclose(var[1:, 0], ref_var, rtol=1e-4)
  np.testing.assert_allclose(mean[1:], ref_mean, rtol=1e-4, atol=1e-5)
  # t = 0: q(x_{-1} | x_0) is a point mass at x_0; log-variance clipped to that of t = 1.
  np.testing.assert_allclose(mean[0], x0[0], rtol=1e-6)
  assert float(var[0, 0]) == 0.0
  np.testing.assert_allclose(log_var[1:, 0], np.log(ref_var), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(log_var[0, 0], np.log(ref_var[0]), rtol=1e-4)
  assert np.all(np.isfinite(log_var))


def _diffusers_float64(**kw):
  """DDPMScheduler with its tables recomputed in float64 (its float32 1 - a_t / a_{t-1} is 1e-3 off at small t)."""
  ref = DDPMScheduler(num_train_timesteps=1000, clip_sample=False, prediction_type="sample", **kw)
  ref.betas = ref.betas.double()
  ref.alphas = 1.0 - ref.betas
  ref.alphas_cumprod = torch.cumprod(ref.alphas, 0)
  ref.one = torch.tensor(1.0, dtype=torch.float64)
  return ref


@pytest.mark.parametrize("name, kw", [("linear", {}), ("cosine", dict(beta_schedule="squaredcos_cap_v2"))])
def test_posterior_matches_diffusers(name, kw):
  s, ref = SCHEDULES[name], _diffusers_float64(**kw)
  ts = [0, 1, 2, 10, 500, 998, 999]
  ref_var = np.array([float(ref._get_variance(t, variance_type="fixed_small")) for t in ts])
  var = np.asarray(posterior_variance(s))[ts]
  np.testing.assert_allclose(var[1:], ref_var[1:], rtol=1e-4)
  assert var[0] == 0.0 and ref_var[0] <= 1e-20  # diffusers clamps the t = 0 variance to 1e-20
  # Posterior mean through DDPMScheduler.step with an x0 ("sample") output and its noise switched off.
  ref._get_variance = lambda *args, **kwargs: torch.zeros((), dtype=torch.float64)
  rs = np.random.RandomState(1)
  x0, x_t = rs.randn(len(ts), 4, 4, 2), rs.randn(len(ts), 4, 4, 2)
  ref_mean = np.stack([ref.step(torch.from_numpy(x0[i:i + 1]), t, torch.from_numpy(x_t[i:i + 1])).prev_sample[0].numpy()
                       for i, t in enumerate(ts)])
  mean, _, _ = q_posterior(s, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), jnp.asarray(ts, jnp.int32))
  np.testing.assert_allclose(mean, ref_mean, rtol=1e-4, atol=1e-5)


def test_clipped_log_variance_replaces_first_entry():
  s = SCHEDULES["linear"]
  var, log_var = np.asarray(posterior_variance(s)), np.asarray(posterior_log_variance_clipped(s))
  np.testing.assert_allclose(log_var[1:], np.log(var[1:]), rtol=1e-6)
  assert log_var[0] == log_var[1]


def test_posterior_rejects_bad_timesteps():
  s = SCHEDULES["linear"]
  with pytest.raises(ValueError, match=r"\[0, 999\].*1000"):
    q_posterior(s, jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.array([1000]))
