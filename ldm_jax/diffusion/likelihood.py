"""The variational bound on -log p(x_0) in bits/dim (Ho et al. 2020, eq. 5 and sec. 3.3).

  -log p(x_0) <= L_T + sum_{t>=1} L_{t-1} + L_0,
  L_T     = KL(q(x_T | x_0) || N(0, I))                          (prior term, no model),
  L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))  (Gaussians, exact given the model output),
  L_0     = -log p_theta(x_0 | x_1)                              (decoder).

Indices here are the DDPM indices 0..T-1 (the paper's 1..T shifted by one): `terms[:, 0]` is the
decoder term, `terms[:, t]` for t >= 1 the KL at noise level t. The reverse process has mean
mu_theta = c0_t x0_hat + ct_t x_t (x0_hat from the model output) and the fixed-small variance
beta-tilde_t (`posterior.q_posterior`). Two decoders:

  "discretized": 8-bit pixel data in [-1, 1]: the probability of x_0's bin (width 2/255, outer edges at
    -inf and +inf) under N(x0_hat, beta-tilde_1), as in Ho et al. and improved-diffusion. The result is a
    bound on the negative log-probability of the discrete image, >= 0, comparable with published
    bits/dim numbers (e.g. CIFAR-10 <= 3.70 for Ho et al.).
  "gaussian": continuous data (e.g. autoencoder latents): the density N(x_0; x0_hat, 1 / SNR_0), with
    1 / SNR_0 = (1 - alpha-bar_0) / alpha-bar_0 the posterior variance of x_0 given the first noisy
    level when the data density is smooth on that scale (Kingma et al. 2021's continuous
    reconstruction term; beta-tilde_1 would add a gap of 0.5 (2 - 1 - ln 2) ~ 0.15 nats/dim that no
    number of steps removes). The result bounds the negative log-*density* of the data, i.e. its
    differential entropy in bits per dimension: it can be negative, depends on the data's scale,
    and for LDM latents measures only the latent prior p(z), not an image likelihood (that would
    also need the autoencoder's decoder likelihood and the encoder's entropy).
"""

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from ldm_jax.diffusion.forward import q_sample
from ldm_jax.diffusion.parameterization import append_dims, check_prediction_type, model_output_to_x0_eps
from ldm_jax.diffusion.posterior import posterior_log_variance_clipped, posterior_mean_coefs
from ldm_jax.schedules import Schedule, alpha_sigma, one_minus_alphas_cumprod

DECODERS = ("discretized", "gaussian")


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
  return 0.5 * (logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2) - 1.0)


def gaussian_log_likelihood(x, mean, log_variance):
  """log N(x; mean, e^log_variance) elementwise, in nats (a density)."""
  return -0.5 * (math.log(2.0 * math.pi) + log_variance + jnp.square(x - mean) * jnp.exp(-log_variance))


def _log_ndtr_diff(b, a):
  """log(Phi(b) - Phi(a)) for b > a, stable in both tails (reflects to the left tail, log1mexp)."""
  flip = a > 0.0
  hi, lo = jnp.where(flip, -a, b), jnp.where(flip, -b, a)
  log_hi = log_ndtr(hi)
  d = jnp.minimum(log_ndtr(lo) - log_hi, -1e-30)  # <= 0; the floor keeps a vanishing bin finite (~ -69 nats).
  log1mexp = jnp.where(d > -math.log(2.0), jnp.log(-jnp.expm1(d)), jnp.log1p(-jnp.exp(jnp.minimum(d, -math.log(2.0)))))
  return log_hi + log1mexp


def discretized_gaussian_log_likelihood(x, mean, log_scale):
  """log P(bin of x) for 8-bit data under N(mean, e^(2 log_scale)), elementwise, in nats.

  x holds values (2k / 255 - 1) for k = 0..255 (8-bit pixels scaled to [-1, 1]); the bin of x is
  [x - 1/255, x + 1/255], with the lowest bin extended to -inf and the highest to +inf so the 256
  probabilities sum to 1 (Ho et al. 2020, eq. 13). Uses the exact normal CDF (log_ndtr).
  """
  x, mean = jnp.asarray(x, jnp.float32), jnp.asarray(mean, jnp.float32)
  inv_scale = jnp.exp(-jnp.asarray(log_scale, jnp.float32))
  upper = (x - mean + 1.0 / 255.0) * inv_scale
  lower = (x - mean - 1.0 / 255.0) * inv_scale
  return jnp.where(x < -0.999, log_ndtr(upper),
                   jnp.where(x > 0.999, log_ndtr(-lower), _log_ndtr_diff(upper, lower)))


class VLBTerms(NamedTuple):
  """The variational bound per example, in bits per dimension.

  Attributes:
    prior_bpd: [B], L_T.
    terms_bpd: [B, T]; [:, 0] the decoder term L_0, [:, t] for t >= 1 the KL term at level t.
    total_bpd: [B], prior + sum of terms: an upper bound on -log2 p(x_0) / D.
  """

  prior_bpd: jax.Array
  terms_bpd: jax.Array
  total_bpd: jax.Array


def prior_kl(schedule: Schedule, x0: jax.Array) -> jax.Array:
  """L_T = KL(q(x_T | x_0) || N(0, I)) summed over non-batch axes, nats [B] (x_T: the last level, T-1)."""
  # normal_kl(sqrt(abar) x0, log(1 - abar), 0, 0) regrouped as 0.5 (abar x0^2 + [-abar - log(1 - abar)]):
  # the bracket is O(abar^2) >= 0 and would drown in float32 rounding of (1 - abar) - 1.
  abar_T = schedule.alphas_cumprod[-1].astype(jnp.float32)
  variance_term = jnp.maximum(-abar_T - jnp.log1p(-abar_T), 0.0)
  kl = 0.5 * (abar_T * jnp.square(x0.astype(jnp.float32)) + variance_term)
  return jnp.sum(kl, axis=tuple(range(1, x0.ndim)))


def vlb_terms(model_fn: Callable[[jax.Array, jax.Array], jax.Array], schedule: Schedule, x0: jax.Array,
              rng: jax.Array, *, prediction_type: str = "epsilon", decoder: str = "discretized",
              clip_denoised: bool = False, timesteps_per_chunk: int = 8) -> VLBTerms:
  """Evaluates every term of the variational bound for a batch, one Monte-Carlo draw of x_t per t.

  Args:
    model_fn: (x_t [N, ...] float32, t [N] float32 on the DDPM index scale) -> model output; it is
      called on batches of N = timesteps_per_chunk * B.
    schedule: the noise schedule (T levels).
    x0: data [B, ...]; for decoder="discretized" 8-bit values scaled to [-1, 1].
    rng: PRNG key; level t uses eps drawn with jax.random.fold_in(rng, t). Or one key per example
      ([B] keys): example b's eps at level t is drawn from fold_in(rng[b], t), so its terms do not
      depend on the rest of the batch (results are invariant to batch splits and sharding).
    prediction_type: what model_fn predicts (PREDICTION_TYPES).
    decoder: "discretized" (pixels, bits/dim of the discrete image) or "gaussian" (continuous
      data such as latents, bits/dim of a density; see the module docstring).
    clip_denoised: clip x0_hat to [-1, 1] before forming the reverse mean (pixel data only).
    timesteps_per_chunk: levels evaluated per model call; `lax.map` runs the ceil(T / chunk) calls
      in sequence, so memory is that of one model call on timesteps_per_chunk * B examples.
  Returns:
    VLBTerms in bits/dim (D = number of elements per example; nats/dim = bits/dim * ln 2).
  """
  check_prediction_type(prediction_type)
  if decoder not in DECODERS:
    raise ValueError(f"Unknown decoder {decoder!r}; valid choices: {', '.join(DECODERS)}.")
  if not isinstance(timesteps_per_chunk, (int, np.integer)) or timesteps_per_chunk < 1:
    raise ValueError(f"timesteps_per_chunk must be an integer >= 1, got {timesteps_per_chunk!r}.")
  x0 = jnp.asarray(x0, jnp.float32)
  if x0.ndim < 2:
    raise ValueError(f"x0 must have shape [B, ...] with at least one data axis, got {list(x0.shape)}.")
  T, B, D = schedule.num_timesteps, x0.shape[0], int(np.prod(x0.shape[1:]))
  data_axes = tuple(range(1, x0.ndim))
  coef_x0, coef_xt = posterior_mean_coefs(schedule)
  log_var = posterior_log_variance_clipped(schedule)
  abar0 = schedule.alphas_cumprod[0].astype(jnp.float32)
  decoder_log_var = log_var[0] if decoder == "discretized" else jnp.log(one_minus_alphas_cumprod(schedule)[0] / abar0)

  rng = jnp.asarray(rng)
  per_example = rng.ndim == (1 if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else 2)  # raw keys: [2]
  if per_example and rng.shape[0] != B:
    raise ValueError(f"rng holds {rng.shape[0]} keys for a batch of {B}: pass one key, or one per example.")

  def level_noise(t):
    if per_example:
      return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), x0.shape[1:], jnp.float32))(rng)
    return jax.random.normal(jax.random.fold_in(rng, t), x0.shape, jnp.float32)

  def chunk_terms(ts):  # ts: int32 [C] -> nats [C, B]
    C = ts.shape[0]
    noise = jax.vmap(level_noise)(ts)
    t_flat = jnp.repeat(ts, B)
    x0_rep = jnp.broadcast_to(x0, (C,) + x0.shape).reshape((C * B,) + x0.shape[1:])
    x_t = q_sample(schedule, x0_rep, t_flat, noise.reshape(x0_rep.shape))
    out = jnp.asarray(model_fn(x_t, t_flat.astype(jnp.float32))).astype(jnp.float32)
    alpha, sigma = alpha_sigma(schedule, t_flat)
    x0_hat, _ = model_output_to_x0_eps(prediction_type, out, x_t, append_dims(alpha, x_t.ndim),
                                       append_dims(sigma, x_t.ndim))
    if clip_denoised:
      x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
    c0, ct, lv = (append_dims(table[t_flat], x_t.ndim) for table in (coef_x0, coef_xt, log_var))
    kl = jnp.sum(normal_kl(c0 * x0_rep + ct * x_t, lv, c0 * x0_hat + ct * x_t, lv), axis=data_axes)
    if decoder == "discretized":
      log_lik = discretized_gaussian_log_likelihood(x0_rep, x0_hat, 0.5 * decoder_log_var)
    else:
      log_lik = gaussian_log_likelihood(x0_rep, x0_hat, decoder_log_var)
    nll = -jnp.sum(log_lik, axis=data_axes)
    return jnp.where(t_flat == 0, nll, kl).reshape(C, B)

  C = int(timesteps_per_chunk)
  num_chunks = -(-T // C)
  ts = jnp.minimum(jnp.arange(num_chunks * C, dtype=jnp.int32), T - 1).reshape(num_chunks, C)  # pad, then drop
  terms = jax.lax.map(chunk_terms, ts).reshape(num_chunks * C, B)[:T].T
  to_bpd = 1.0 / (D * math.log(2.0))
  prior = prior_kl(schedule, x0) * to_bpd
  terms = terms * to_bpd
  return VLBTerms(prior_bpd=prior, terms_bpd=terms, total_bpd=prior + jnp.sum(terms, axis=1))
