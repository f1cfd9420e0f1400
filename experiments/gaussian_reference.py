"""Closed-form references for Gaussian data x0 ~ N(mu, S): the exact denoiser and the exact
variational bound. The sampler and likelihood tests and `experiments/scripts/gaussian_*.py` all use
these (one copy).

  exact_denoiser(schedule, mu, cov, prediction_type)   the network output of the exact model
  exact_x0_model(schedule, mu, cov)                    E[x0 | x_t] for per-sample integer t
  gaussian_data(dim, seed)                             mu and a full S (eigenvalues 0.05 .. 1)
  analytic_bound(schedule, mu, cov)                    E[bound] and h(x0) in nats/dim (float64)
  sampler_moments(method, num_steps, schedule, mu, cov, ...)  mean and covariance of a sampler's output

E[x0 | x_t] = mu + a S (a^2 S + s^2 I)^-1 (x_t - a mu) for x_t = a x0 + s eps.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import samplers, schedules
from ldm_jax.diffusion.parameterization import target_from_x0_eps, x0_to_eps

DETERMINISTIC = ("ddim", "dpmpp_2m", "euler", "heun")


def exact_denoiser(schedule, mu, cov, prediction_type="v_prediction"):
  """model_fn(x_t [B, D], t float32 [B]) -> the exact network output for data N(mu, cov) (the
  samplers call it with one t for the whole batch)."""
  mu, cov = jnp.asarray(mu, jnp.float32), jnp.asarray(cov, jnp.float32)
  eye = jnp.eye(mu.shape[0])

  def model_fn(x_t, t):
    a, s = schedules.alpha_sigma(schedule, t[0])
    gain = a * cov @ jnp.linalg.inv(a**2 * cov + s**2 * eye)
    x0 = mu + (x_t - a * mu) @ gain.T
    return target_from_x0_eps(prediction_type, x0, x0_to_eps(x_t, x0, a, s), a, s)

  return model_fn


def exact_x0_model(schedule, mu, cov):
  """model_fn(x_t, t) -> E[x0 | x_t] (prediction_type "sample") for x0 ~ N(mu, cov), per-sample
  integer timesteps t [B], computed in S's eigenbasis."""
  eig, q = np.linalg.eigh(cov)
  mu, eig, q = (jnp.asarray(v, jnp.float32) for v in (mu, eig, q))

  def model_fn(x_t, t):
    abar = schedule.alphas_cumprod[jnp.round(t).astype(jnp.int32)][:, None]
    a = jnp.sqrt(abar)
    return mu + ((x_t - a * mu) @ q * (a * eig / (abar * eig + 1.0 - abar))) @ q.T

  return model_fn


def gaussian_data(dim=4, seed=0):
  """mu [D] and a full covariance S [D, D] with eigenvalues from 0.05 to 1."""
  rs = np.random.RandomState(seed)
  q, _ = np.linalg.qr(rs.randn(dim, dim))
  return rs.uniform(-0.5, 0.5, dim), (q * np.geomspace(0.05, 1.0, dim)) @ q.T


def analytic_bound(schedule, mu, cov):
  """E[bound] and h(x0) in nats/dim (float64) of the exact model with the "gaussian" decoder:
  every term's expectation is a trace of Cov[x0 | x_t]."""
  betas = np.asarray(schedule.betas, np.float64)
  abar = np.cumprod(1.0 - betas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  eig = np.linalg.eigvalsh(cov)
  dim = len(mu)
  post_trace = np.sum(1.0 / (1.0 / eig[None, :] + (abar / (1.0 - abar))[:, None]), axis=1)
  c0 = betas * np.sqrt(abar_prev) / (1.0 - abar)
  var = betas * (1.0 - abar_prev) / (1.0 - abar)
  kl_terms = c0[1:] ** 2 * post_trace[1:] / (2.0 * var[1:])
  v0 = (1.0 - abar[0]) / abar[0]  # the "gaussian" decoder's variance 1 / SNR_0
  decoder = 0.5 * dim * np.log(2 * np.pi * v0) + post_trace[0] / (2.0 * v0)
  prior = 0.5 * np.sum((1 - abar[-1]) + abar[-1] * (mu**2 + np.diag(cov)) - 1.0 - np.log(1 - abar[-1]))
  entropy = 0.5 * (dim * np.log(2 * np.pi * np.e) + np.linalg.slogdet(cov)[1])
  return (np.sum(kl_terms) + decoder + prior) / dim, entropy / dim


def sampler_moments(method, num_steps, schedule, mu, cov, *, samples, rng, x_rng,
                    prediction_type="v_prediction", timestep_spacing="trailing",
                    compiler_options=None, **kw):
  """(mean [D], covariance [D, D]) float64 of `method`'s output driven by the exact model: exact
  for the deterministic samplers (an affine map of x_T: 0 and the unit vectors are pushed
  through), else over `samples` draws of x_T ~ N(0, I) from x_rng (rng: the sampler's key).
  compiler_options: `jax.jit`'s, for the sampling program."""
  D = len(mu)
  deterministic = method in DETERMINISTIC and kw.get("eta", 0.0) == 0.0
  x_T = (jnp.concatenate([jnp.zeros((1, D)), jnp.eye(D)]) if deterministic
         else jax.random.normal(x_rng, (samples, D)))
  model_fn = exact_denoiser(schedule, mu, cov, prediction_type)
  run = jax.jit(lambda x, key: samplers.sample(
      model_fn, schedule, x, key, method=method, num_steps=num_steps,
      prediction_type=prediction_type, timestep_spacing=timestep_spacing, **kw),
      compiler_options=compiler_options)
  x0 = np.asarray(run(x_T, rng), np.float64)
  if deterministic:
    A = (x0[1:] - x0[0]).T
    return x0[0], A @ A.T
  return x0.mean(0), np.cov(x0.T)
