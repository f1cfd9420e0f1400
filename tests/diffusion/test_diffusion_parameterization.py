"""Conversions between eps, x0 and v predictions round-trip in every direction."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from ldm_jax.diffusion import (PREDICTION_TYPES, append_dims, eps_to_x0, model_output_to_x0_eps, target_from_x0_eps,
                               v_target, v_to_eps, v_to_x0, x0_to_eps)
from ldm_jax.schedules import alpha_sigma, get_schedule


@pytest.fixture(scope="module")
def case():
  s = get_schedule("cosine", 1000)
  t = jnp.array([0, 1, 100, 400, 700, 900], jnp.int32)  # alpha_t >= 0.15: x0 = (x_t - s eps) / a stays tame
  alpha, sigma = (append_dims(v, 4) for v in alpha_sigma(s, t))
  x0 = jax.random.normal(jax.random.key(0), (6, 4, 4, 2))
  eps = jax.random.normal(jax.random.key(1), x0.shape)
  x_t = alpha * x0 + sigma * eps
  return x0, eps, x_t, alpha, sigma, alpha * eps - sigma * x0


def test_round_trips_every_direction(case):
  x0, eps, x_t, alpha, sigma, v = case
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  close(alpha**2 + sigma**2, np.ones_like(alpha))
  close(eps_to_x0(x_t, eps, alpha, sigma), x0)                                   # eps -> x0
  close(x0_to_eps(x_t, x0, alpha, sigma), eps)                                   # x0 -> eps
  close(v_target(x0, eps, alpha, sigma), v)                                      # (x0, eps) -> v
  close(v_to_x0(x_t, v, alpha, sigma), x0)                                       # v -> x0
  close(v_to_eps(x_t, v, alpha, sigma), eps)                                     # v -> eps
  close(v_target(eps_to_x0(x_t, eps, alpha, sigma), eps, alpha, sigma), v)       # eps -> v
  close(v_target(x0, x0_to_eps(x_t, x0, alpha, sigma), alpha, sigma), v)         # x0 -> v
  close(x0_to_eps(x_t, v_to_x0(x_t, v, alpha, sigma), alpha, sigma), eps)        # v -> x0 -> eps


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_model_output_interpretation_inverts_the_target(case, prediction_type):
  x0, eps, x_t, alpha, sigma, _ = case
  target = target_from_x0_eps(prediction_type, x0, eps, alpha, sigma)
  x0_hat, eps_hat = model_output_to_x0_eps(prediction_type, target, x_t, alpha, sigma)
  np.testing.assert_allclose(x0_hat, x0, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(eps_hat, eps, rtol=1e-4, atol=1e-4)


def test_unknown_prediction_type_raises():
  with pytest.raises(ValueError, match="'x0'.*epsilon, sample, v_prediction"):
    model_output_to_x0_eps("x0", jnp.zeros(2), jnp.zeros(2), 1.0, 0.0)
