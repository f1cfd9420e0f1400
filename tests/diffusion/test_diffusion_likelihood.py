"""Variational bound: decoder likelihoods, KLs, consistency with the "vlb" loss, and Gaussian data.

For x0 ~ N(mu, S) the exact denoiser E[x0 | x_t] is known in closed form, so the bound of that
model must approach the differential entropy h(x0) = 0.5 log det(2 pi e S) as T grows.
"""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats

import jax
import jax.numpy as jnp
from ldm_jax.diffusion import (discretized_gaussian_log_likelihood, loss_from_output, normal_kl, prior_kl,
                               q_sample, vlb_terms)
from ldm_jax.schedules import from_log_snr, get_schedule
from experiments.gaussian_reference import analytic_bound, exact_x0_model, gaussian_data


def log_snr_linear(T):
  return from_log_snr(np.linspace(10.0, -10.0, T))


def test_analytic_bound_approaches_the_entropy_as_T_grows():
  mu, cov = gaussian_data()
  entropy = scipy.stats.multivariate_normal(mu, cov).entropy() / len(mu)
  gaps = {}
  for T in (100, 1000, 4000):
    bound, h = analytic_bound(log_snr_linear(T), mu, cov)
    np.testing.assert_allclose(h, entropy, rtol=1e-12)
    gaps[T] = bound - h
  # Uniform log-SNR steps of size 20 / T: the discretisation gap is O(1 / T) (~35 / T nats/dim here).
  assert gaps[100] > gaps[1000] > gaps[4000] > 0
  assert gaps[1000] < 0.05 and gaps[4000] < 0.015
  assert 3.0 < gaps[1000] / gaps[4000] < 5.0
  # The named schedules double the noise variance in their first steps for every T (sigma_t^2 ~ t):
  # their gap stays O(0.1) nats/dim (documented in likelihood.py / the script); it still shrinks.
  cosine_gaps = [analytic_bound(get_schedule("cosine", T), mu, cov)[0] - entropy for T in (1000, 4000)]
  assert cosine_gaps[0] > cosine_gaps[1] > 0.1


def test_monte_carlo_bound_of_the_exact_model_matches_the_analytic_bound():
  mu, cov = gaussian_data()
  s = log_snr_linear(1000)
  batch = 4096
  data_rng, vlb_rng = jax.random.split(jax.random.key(0))
  x0 = jax.random.multivariate_normal(data_rng, jnp.asarray(mu, jnp.float32), jnp.asarray(cov, jnp.float32), (batch,))
  fn = jax.jit(lambda x, r: vlb_terms(exact_x0_model(s, mu, cov), s, x, r, prediction_type="sample",
                                      decoder="gaussian", timesteps_per_chunk=100))
  out = fn(x0, vlb_rng)
  assert out.terms_bpd.shape == (batch, 1000) and out.prior_bpd.shape == out.total_bpd.shape == (batch,)
  total = np.asarray(out.total_bpd, np.float64) * math.log(2.0)  # nats/dim
  mc, se = total.mean(), total.std() / math.sqrt(batch)
  bound, entropy = analytic_bound(s, mu, cov)
  # Examples are i.i.d. (own x0, own noise), so 4 standard errors (se ~ 0.008 nats/dim) bound the MC error.
  assert abs(mc - bound) < 4 * se, (mc, bound, se)
  assert mc - entropy < 0.05 + 4 * se
  assert np.all(np.asarray(out.terms_bpd[:, 1:]) >= 0)  # KLs


def test_bound_is_the_same_for_every_prediction_type():
  """eps / v outputs of the exact model give the same bound as its x0 output (same noise per t)."""
  mu, cov = gaussian_data()
  s = get_schedule("cosine", 50)
  x0_model = exact_x0_model(s, mu, cov)

  def as_output(prediction_type):
    def model_fn(x_t, t):
      abar = s.alphas_cumprod[jnp.round(t).astype(jnp.int32)][:, None]
      a, sg = jnp.sqrt(abar), jnp.sqrt(1 - abar)
      x0_hat = x0_model(x_t, t)
      eps = (x_t - a * x0_hat) / sg
      return {"sample": x0_hat, "epsilon": eps, "v_prediction": a * eps - sg * x0_hat}[prediction_type]
    return model_fn

  x0 = jnp.asarray(np.random.RandomState(0).multivariate_normal(mu, cov, 64), jnp.float32)
  totals = jax.jit(lambda x: {p: vlb_terms(as_output(p), s, x, jax.random.key(1), prediction_type=p, decoder="gaussian",
                                            timesteps_per_chunk=50).terms_bpd
                              for p in ("sample", "epsilon", "v_prediction")})(x0)  # one compilation
  # Up to float32 conversion error amplified by 1 / alpha at the noisiest steps (tiny weight there).
  np.testing.assert_allclose(totals["epsilon"][:, :45], totals["sample"][:, :45], rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(totals["v_prediction"], totals["sample"], rtol=1e-3, atol=1e-4)


def test_kl_terms_equal_the_vlb_loss_and_chunking_does_not_matter():
  """terms[:, t] * D ln 2 = loss("vlb") * D / T with the same eps (fold_in(rng, t)); chunk size irrelevant."""
  s = get_schedule("linear", 20)
  x0 = jax.random.uniform(jax.random.key(0), (3, 2, 2, 1), minval=-1, maxval=1)
  model_fn = lambda x_t, t: 0.5 * x_t + 0.01 * t[:, None, None, None]  # any eps-prediction model
  rng = jax.random.key(5)
  ts = (1, 7, 19)

  @jax.jit
  def run(x):
    a = vlb_terms(model_fn, s, x, rng, timesteps_per_chunk=1)
    b = vlb_terms(model_fn, s, x, rng, timesteps_per_chunk=7)  # 20 = 2 * 7 + 6: padded last chunk
    losses = []
    for t in ts:
      noise = jax.random.normal(jax.random.fold_in(rng, t), x.shape)
      tt = jnp.full((3,), t, jnp.int32)
      out = model_fn(q_sample(s, x, tt, noise), tt.astype(jnp.float32))
      losses.append(loss_from_output(s, out, x, noise, tt, weighting="vlb"))  # T * KL / D nats
    return a, b, losses

  a, b, losses = run(x0)
  np.testing.assert_allclose(b.terms_bpd, a.terms_bpd, rtol=1e-6)
  np.testing.assert_allclose(b.total_bpd, a.total_bpd, rtol=1e-6)
  for t, loss in zip(ts, losses):
    np.testing.assert_allclose(a.terms_bpd[:, t] * math.log(2.0), loss / 20, rtol=1e-4)


def test_discretized_bits_per_dim_on_8bit_data_is_finite_and_nonnegative():
  mu, cov = gaussian_data()
  mu, cov = 0.3 * mu, 0.09 * cov  # mostly inside [-1, 1]
  rs = np.random.RandomState(0)
  pixels = np.clip(np.round((rs.multivariate_normal(mu, cov, 256) + 1) * 127.5), 0, 255)
  x0 = jnp.asarray(pixels / 127.5 - 1.0, jnp.float32)
  s = get_schedule("cosine", 100)
  out = jax.jit(lambda x, r: vlb_terms(exact_x0_model(s, mu, cov), s, x, r, prediction_type="sample",
                                       clip_denoised=True, timesteps_per_chunk=25))(x0, jax.random.key(0))
  for v in out:
    assert np.all(np.isfinite(v)) and np.all(np.asarray(v) >= 0)
  # A sensible model codes these pixels in well under 8 bits (uniform coding); the entropy of the
  # quantised data is ~ h / ln 2 + log2(127.5) ~ 6.2 bits/dim, so the bound lies between.
  assert 5.5 < float(jnp.mean(out.total_bpd)) < 8.0


@pytest.mark.parametrize("mean, log_scale", [(0.0, np.log(0.01)), (0.3, np.log(0.2)), (-1.2, np.log(1.0)),
                                             (0.999, np.log(0.002)), (0.5, np.log(50.0))])
def test_discretized_likelihood_is_a_normalised_exact_distribution(mean, log_scale):
  x = np.arange(256) / 127.5 - 1.0
  ll = np.asarray(discretized_gaussian_log_likelihood(jnp.asarray(x, jnp.float32), mean, log_scale), np.float64)
  np.testing.assert_allclose(np.sum(np.exp(ll)), 1.0, rtol=1e-4)
  # Reference: bin masses of N(mean, scale^2) in float64 with scipy, outer bins extended to +-inf.
  edges = np.concatenate([[-np.inf], (x[:-1] + x[1:]) / 2, [np.inf]])
  z = (edges - mean) / np.exp(log_scale)
  with np.errstate(divide="ignore"):  # log(0) only in the branch np.where discards
    ref = np.where(z[:-1] > 0, np.log(scipy.special.ndtr(-z[:-1]) - scipy.special.ndtr(-z[1:])),
                   np.log(scipy.special.ndtr(z[1:]) - scipy.special.ndtr(z[:-1])))
  mask = ref > -60  # float64 differences of CDFs are exact enough there
  np.testing.assert_allclose(ll[mask], ref[mask], rtol=1e-4, atol=1e-4)
  assert np.all(np.isfinite(ll))


def test_normal_kl_and_prior_kl_against_numerical_integration():
  m1, v1, m2, v2 = 0.3, 0.5, -0.2, 1.7
  p, q = scipy.stats.norm(m1, np.sqrt(v1)), scipy.stats.norm(m2, np.sqrt(v2))
  ref = scipy.integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -20, 20)[0]
  np.testing.assert_allclose(float(normal_kl(m1, np.log(v1), m2, np.log(v2))), ref, rtol=1e-5)
  s = get_schedule("linear", 1000)
  x0 = jnp.array([[0.5, -1.0, 0.0]])
  abar = float(np.prod(1.0 - np.asarray(s.betas, np.float64)))
  ref = sum(0.5 * ((1 - abar) + abar * v**2 - 1 - np.log(1 - abar)) for v in (0.5, -1.0, 0.0))
  np.testing.assert_allclose(prior_kl(s, x0), [ref], rtol=1e-4)
  x0 = jnp.array([[3.0, -2.0]])  # a large prior term with a short schedule (alpha-bar_T = 0.6)
  s, abar = get_schedule("linear", 50), float(np.prod(1.0 - np.asarray(get_schedule("linear", 50).betas, np.float64)))
  ref = sum(0.5 * ((1 - abar) + abar * v**2 - 1 - np.log(1 - abar)) for v in (3.0, -2.0))
  np.testing.assert_allclose(prior_kl(s, x0), [ref], rtol=1e-4)


def test_bad_arguments_raise():
  s = get_schedule("linear", 10)
  x0 = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="'bernoulli'.*discretized, gaussian"):
    vlb_terms(lambda x, t: x, s, x0, jax.random.key(0), decoder="bernoulli")
  with pytest.raises(ValueError, match="timesteps_per_chunk.*0"):
    vlb_terms(lambda x, t: x, s, x0, jax.random.key(0), timesteps_per_chunk=0)
  with pytest.raises(ValueError, match=r"\[2\]"):
    vlb_terms(lambda x, t: x, s, jnp.zeros(2), jax.random.key(0))


def test_per_example_keys_make_terms_independent_of_the_batch():
  """With one key per example, example b's terms depend only on (x0[b], rng[b]): a sub-batch gives
  the same numbers."""
  s = get_schedule("linear", 12)
  x0 = jax.random.uniform(jax.random.key(0), (5, 2, 2, 1), minval=-1, maxval=1)
  model_fn = lambda x_t, t: 0.3 * x_t - 0.02 * t[:, None, None, None]
  keys = jax.random.split(jax.random.key(3), 5)
  run = jax.jit(lambda x, k: vlb_terms(model_fn, s, x, k, timesteps_per_chunk=5))
  full, part = run(x0, keys), run(x0[1:3], keys[1:3])
  np.testing.assert_allclose(np.asarray(part.terms_bpd), np.asarray(full.terms_bpd)[1:3], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(part.total_bpd), np.asarray(full.total_bpd)[1:3], rtol=1e-6)
  # different keys give different Monte-Carlo draws, so the terms differ between examples' keys
  swapped = run(x0[1:3], keys[2:4])
  assert not np.allclose(np.asarray(swapped.terms_bpd), np.asarray(part.terms_bpd))
  # raw uint32 keys [B, 2] are per-example keys too (a raw single key [2] is not)
  raw = run(x0, jax.random.key_data(keys))
  np.testing.assert_allclose(np.asarray(raw.total_bpd), np.asarray(full.total_bpd), rtol=1e-6)
  with pytest.raises(ValueError, match="holds 2 keys for a batch of 5"):
    vlb_terms(model_fn, s, x0, keys[:2])
