"""What the network predicts: conversions between eps, x0 and v for z_t = alpha_t x0 + sigma_t eps.

All functions assume a variance-preserving process (alpha_t^2 + sigma_t^2 = 1) and take alpha,
sigma already broadcastable against x (see `append_dims`). v = alpha_t eps - sigma_t x0
(Salimans & Ho 2022, sec. 4).
"""

import jax
import jax.numpy as jnp

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def append_dims(x: jax.Array, ndim: int) -> jax.Array:
  """Appends trailing singleton axes to x until it has `ndim` axes: [B] -> [B, 1, 1, 1]."""
  x = jnp.asarray(x)
  if x.ndim > ndim:
    raise ValueError(f"append_dims: x has {x.ndim} dims, more than the target {ndim}.")
  return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def eps_to_x0(x_t, eps, alpha, sigma):
  """x0 = (x_t - sigma_t eps) / alpha_t (Ho et al. 2020, eq. 15)."""
  return (x_t - sigma * eps) / alpha


def x0_to_eps(x_t, x0, alpha, sigma):
  """eps = (x_t - alpha_t x0) / sigma_t."""
  return (x_t - alpha * x0) / sigma


def v_target(x0, eps, alpha, sigma):
  """v = alpha_t eps - sigma_t x0 (Salimans & Ho 2022)."""
  return alpha * eps - sigma * x0


def v_to_x0(x_t, v, alpha, sigma):
  """x0 = alpha_t x_t - sigma_t v."""
  return alpha * x_t - sigma * v


def v_to_eps(x_t, v, alpha, sigma):
  """eps = sigma_t x_t + alpha_t v."""
  return sigma * x_t + alpha * v


def check_prediction_type(prediction_type: str) -> None:
  if prediction_type not in PREDICTION_TYPES:
    raise ValueError(
        f"Unknown prediction_type {prediction_type!r}; valid choices: {', '.join(PREDICTION_TYPES)}.")


def model_output_to_x0_eps(prediction_type, model_output, x_t, alpha, sigma):
  """Interprets a network output as (x0, eps) for any prediction type.

  This is the one place that branches on the prediction type; samplers and losses call it.
  Args:
    prediction_type: "epsilon", "sample" (x0) or "v_prediction".
    model_output, x_t: [B, ...]; alpha, sigma: broadcastable to x_t.
  """
  check_prediction_type(prediction_type)
  if prediction_type == "epsilon":
    return eps_to_x0(x_t, model_output, alpha, sigma), model_output
  if prediction_type == "sample":
    return model_output, x0_to_eps(x_t, model_output, alpha, sigma)
  return v_to_x0(x_t, model_output, alpha, sigma), v_to_eps(x_t, model_output, alpha, sigma)


def target_from_x0_eps(prediction_type, x0, eps, alpha, sigma):
  """The regression target of the network for a given prediction type."""
  check_prediction_type(prediction_type)
  if prediction_type == "epsilon":
    return eps
  if prediction_type == "sample":
    return x0
  return v_target(x0, eps, alpha, sigma)
