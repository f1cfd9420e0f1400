"""The denoising training loss: regression on the eps / x0 / v target with a weighting over t.

For z_t = alpha_t x0 + sigma_t eps (alpha_t^2 = alpha-bar_t, SNR_t = alpha_t^2 / sigma_t^2), a model
output implies estimates (x0_hat, eps_hat) and the three squared errors are proportional
(`parameterization.py`):

  ||eps_hat - eps||^2 = SNR_t ||x0_hat - x0||^2,   ||v_hat - v||^2 = (1 + SNR_t) ||x0_hat - x0||^2.

Every weighting is therefore one function w(t) on the x0-MSE; the weight applied to the MSE of the
actual target is w(t) / SNR_t (eps), w(t) (x0) or w(t) / (1 + SNR_t) (v):

  "simple":  uniform MSE on the target itself (Ho et al. 2020, L_simple): w = SNR_t for eps,
             1 for x0, 1 + SNR_t for v. The only weighting that depends on the prediction type.
  "snr":     w = SNR_t; equals the unweighted eps-MSE for every prediction type.
  "min_snr": w = min(SNR_t, gamma) (Hang et al. 2023, Min-SNR-gamma): eps-MSE weight
             min(SNR_t, gamma) / SNR_t, v-MSE weight min(SNR_t, gamma) / (SNR_t + 1).
  "vlb":     w = T c0_t^2 / (2 sigma_t^2) with c0_t the posterior-mean coefficient of x0 and
             sigma_t^2 = beta-tilde_t (clipped at t = 0): T times the KL term L_{t-1} of Ho et al.
             2020 (eq. 5; fixed-small reverse variance), in nats. On the eps-MSE this is
             T beta_t^2 / (2 sigma_t^2 (1 - beta_t) (1 - alpha-bar_t)). At t = 0 it is T times the
             quadratic part of the Gaussian decoder -log N(x0; x0_hat, beta-tilde_1) (the constant and
             the 8-bit discretisation are left to `likelihood.vlb_terms`).

Losses are means over the non-batch axes, so per-example values are per dimension; with t uniform
on [0, T-1], E_t["vlb" loss] = sum_t L_{t-1} / D nats/dim. All arithmetic is float32.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from ldm_jax.diffusion.forward import check_timesteps, q_sample
from ldm_jax.diffusion.parameterization import append_dims, check_prediction_type, target_from_x0_eps
from ldm_jax.diffusion.posterior import posterior_log_variance_clipped, posterior_mean_coefs
from ldm_jax.schedules import Schedule, alpha_sigma, snr_table

WEIGHTINGS = ("simple", "snr", "min_snr", "vlb")


def _check_weighting(weighting: str, min_snr_gamma) -> None:
  if weighting not in WEIGHTINGS:
    raise ValueError(f"Unknown weighting {weighting!r}; valid choices: {', '.join(WEIGHTINGS)}.")
  if weighting == "min_snr" and isinstance(min_snr_gamma, (int, float)) and not min_snr_gamma > 0:
    raise ValueError(f"min_snr_gamma must be > 0, got {min_snr_gamma}.")


def loss_weight(schedule: Schedule, t: jax.Array, *, prediction_type: str = "epsilon",
                weighting: str = "simple", min_snr_gamma: float = 5.0) -> jax.Array:
  """The weight on the MSE of the `prediction_type` target at int32 timesteps t [B]; float32 [B].

  See the module docstring for each weighting in terms of the x0-MSE and the eps-MSE.
  """
  check_prediction_type(prediction_type)
  _check_weighting(weighting, min_snr_gamma)
  if weighting == "simple":
    return jnp.ones(jnp.shape(t), jnp.float32)
  snr = snr_table(schedule)[t]
  if weighting == "snr":
    w_x0 = snr
  elif weighting == "min_snr":
    w_x0 = jnp.minimum(snr, jnp.asarray(min_snr_gamma, jnp.float32))
  else:  # "vlb": L_{t-1} = c0_t^2 ||x0 - x0_hat||^2 / (2 sigma_t^2), times T for uniform t.
    coef_x0, _ = posterior_mean_coefs(schedule)
    log_var = posterior_log_variance_clipped(schedule)
    w_x0 = schedule.num_timesteps * coef_x0[t] ** 2 * 0.5 * jnp.exp(-log_var[t])
  if prediction_type == "epsilon":
    return w_x0 / snr
  if prediction_type == "v_prediction":
    return w_x0 / (1.0 + snr)
  return w_x0


LOSS_TYPES = ("l2", "l1")


def check_loss_type(loss_type: str) -> None:
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"Unknown loss_type {loss_type!r}; valid choices: {', '.join(LOSS_TYPES)}.")


def loss_from_output(schedule: Schedule, model_output: jax.Array, x0: jax.Array, noise: jax.Array,
                     t: jax.Array, *, prediction_type: str = "epsilon", weighting: str = "simple",
                     min_snr_gamma: float = 5.0, loss_type: str = "l2") -> jax.Array:
  """Weighted per-example loss of a model output given the x0, eps and t that made x_t.

  Args:
    schedule: the noise schedule.
    model_output: the network's prediction [B, ...] (any float dtype; computed on in float32).
    x0, noise: the clean data and the eps used in x_t = q_sample(schedule, x0, t, noise) [B, ...].
    t: int32 [B] in [0, T-1].
    prediction_type: one of PREDICTION_TYPES ("epsilon", "sample", "v_prediction").
    weighting: one of WEIGHTINGS (see module docstring); min_snr_gamma: gamma for "min_snr".
    loss_type: "l2" (squared error, every weighting's derivation assumes it) or "l1" (absolute
      error, LDM's `loss_type: l1`, used by its LSUN-Churches model).
  Returns:
    float32 [B]: weight(t) * mean over non-batch axes of (model_output - target)^2 (or |.|).
  """
  check_prediction_type(prediction_type)
  check_loss_type(loss_type)
  _check_weighting(weighting, min_snr_gamma)
  x0 = jnp.asarray(x0, jnp.float32)
  noise = jnp.asarray(noise, jnp.float32)
  model_output = jnp.asarray(model_output).astype(jnp.float32)
  if not model_output.shape == x0.shape == noise.shape or x0.ndim < 1:
    raise ValueError(f"model_output, x0 and noise must share a shape [B, ...], got {list(model_output.shape)}, "
                     f"{list(x0.shape)} and {list(noise.shape)}.")
  check_timesteps(t, schedule.num_timesteps, x0.shape[0])
  t = jnp.asarray(t)
  alpha, sigma = alpha_sigma(schedule, t)
  target = target_from_x0_eps(prediction_type, x0, noise, append_dims(alpha, x0.ndim), append_dims(sigma, x0.ndim))
  err = model_output - target
  err = jnp.square(err) if loss_type == "l2" else jnp.abs(err)
  mse = jnp.mean(err, axis=tuple(range(1, x0.ndim)))
  weight = loss_weight(schedule, t, prediction_type=prediction_type, weighting=weighting, min_snr_gamma=min_snr_gamma)
  return weight * mse


def training_loss(model_fn: Callable[[jax.Array, jax.Array], jax.Array], schedule: Schedule, x0: jax.Array,
                  rng: jax.Array, *, prediction_type: str = "epsilon", weighting: str = "simple",
                  min_snr_gamma: float = 5.0, loss_type: str = "l2") -> jax.Array:
  """Per-example diffusion training loss with t ~ U{0, ..., T-1} and eps ~ N(0, I).

  Args:
    model_fn: (x_t [B, ...] float32, t [B] float32 on the DDPM index scale [0, T-1], as for the
      samplers) -> model output [B, ...].
    schedule: the noise schedule.
    x0: clean data [B, ...].
    rng: PRNG key; split into one key for t and one for eps.
    prediction_type, weighting, min_snr_gamma, loss_type: see `loss_from_output`.
  Returns:
    float32 [B]; average it for the batch loss.
  """
  check_prediction_type(prediction_type)
  check_loss_type(loss_type)
  _check_weighting(weighting, min_snr_gamma)
  x0 = jnp.asarray(x0, jnp.float32)
  t_rng, noise_rng = jax.random.split(rng)
  t = jax.random.randint(t_rng, (x0.shape[0],), 0, schedule.num_timesteps, dtype=jnp.int32)
  noise = jax.random.normal(noise_rng, x0.shape, jnp.float32)
  x_t = q_sample(schedule, x0, t, noise)
  model_output = model_fn(x_t, t.astype(jnp.float32))
  return loss_from_output(schedule, model_output, x0, noise, t, prediction_type=prediction_type,
                          weighting=weighting, min_snr_gamma=min_snr_gamma, loss_type=loss_type)
