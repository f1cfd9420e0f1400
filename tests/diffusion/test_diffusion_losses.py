"""Training-loss weightings against float64 numpy, and the "vlb" weighting against the exact KL."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from ldm_jax.diffusion import PREDICTION_TYPES, WEIGHTINGS, loss_from_output, loss_weight, q_sample, training_loss
from ldm_jax.schedules import get_schedule, rescale_zero_terminal_snr

GAMMA = 5.0
SCHEDULES = {"linear": get_schedule("linear", 1000), "cosine": get_schedule("cosine", 1000),
             "zero_snr": rescale_zero_terminal_snr(get_schedule("scaled_linear", 1000))}
T_VALUES = np.array([0, 1, 2, 50, 300, 700, 998, 999], np.int32)


def tables64(s):
  """Float64 per-t quantities from the paper's definitions (recomputed from the float32 betas)."""
  betas = np.asarray(s.betas, np.float64)
  abar = np.cumprod(1.0 - betas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  snr = abar / (1.0 - abar)
  beta_tilde = betas * (1.0 - abar_prev) / (1.0 - abar)
  sigma2 = np.concatenate([[beta_tilde[1]], beta_tilde[1:]])  # clipped at t = 0 (decoder variance)
  return betas, abar, abar_prev, snr, sigma2


def weight64(s, t, prediction_type, weighting):
  """Weight on the target-MSE, written per target from Ho et al. / Hang et al. directly."""
  betas, abar, abar_prev, snr, sigma2 = (v[t] for v in tables64(s))
  T = s.num_timesteps
  if weighting == "simple":
    return np.ones_like(snr)
  # Weight on the eps-MSE first.
  if weighting == "snr":
    w_eps = np.ones_like(snr)
  elif weighting == "min_snr":
    w_eps = np.minimum(snr, GAMMA) / snr
  else:  # Ho et al. 2020, eq. 12 coefficient with sigma_t^2 = beta-tilde_t, times T.
    w_eps = T * betas**2 / (2.0 * sigma2 * (1.0 - betas) * (1.0 - abar))
  # ||x0_hat - x0||^2 = ||eps_hat - eps||^2 / SNR; ||v_hat - v||^2 = ||eps_hat - eps||^2 / alpha-bar.
  return {"epsilon": w_eps, "sample": w_eps * snr, "v_prediction": w_eps * abar}[prediction_type]


def batch(s, seed=0):
  rs = np.random.RandomState(seed)
  x0, noise, out = (rs.randn(len(T_VALUES), 4, 4, 2) for _ in range(3))
  return x0, noise, out


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_each_weighting_matches_float64(name, weighting):
  s = SCHEDULES[name]
  x0, noise, out = batch(s)
  abar = tables64(s)[1][T_VALUES][:, None, None, None]
  for prediction_type in PREDICTION_TYPES:
    target = {"epsilon": noise, "sample": x0,
              "v_prediction": np.sqrt(abar) * noise - np.sqrt(1 - abar) * x0}[prediction_type]
    expected = weight64(s, T_VALUES, prediction_type, weighting) * np.mean((out - target) ** 2, axis=(1, 2, 3))
    loss = loss_from_output(s, jnp.asarray(out, jnp.float32), jnp.asarray(x0, jnp.float32),
                            jnp.asarray(noise, jnp.float32), jnp.asarray(T_VALUES), prediction_type=prediction_type,
                            weighting=weighting, min_snr_gamma=GAMMA)
    assert loss.shape == (len(T_VALUES),) and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, expected, rtol=2e-4, err_msg=f"{prediction_type}")


@pytest.mark.parametrize("weighting", ["snr", "min_snr", "vlb"])
def test_non_simple_weightings_do_not_depend_on_the_prediction_type(weighting):
  # The same x0_hat expressed as an eps, x0 or v output gives the same loss (a weight on the x0-MSE).
  s = SCHEDULES["cosine"]
  t = jnp.array([1, 10, 200, 600, 900], jnp.int32)
  x0 = jax.random.normal(jax.random.key(0), (5, 8))
  noise = jax.random.normal(jax.random.key(1), (5, 8))
  x0_hat = x0 + 0.3 * jax.random.normal(jax.random.key(2), (5, 8))
  x_t = q_sample(s, x0, t, noise)
  a = jnp.sqrt(s.alphas_cumprod[t])[:, None]
  sig = jnp.sqrt(1 - s.alphas_cumprod[t])[:, None]
  outputs = {"sample": x0_hat, "epsilon": (x_t - a * x0_hat) / sig, "v_prediction": (a * x_t - x0_hat) / sig}
  losses = [loss_from_output(s, outputs[p], x0, noise, t, prediction_type=p, weighting=weighting) for p in outputs]
  np.testing.assert_allclose(losses[1], losses[0], rtol=2e-3)
  np.testing.assert_allclose(losses[2], losses[0], rtol=2e-3)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_vlb_weighting_equals_the_exact_gaussian_kl(prediction_type):
  """T * KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) / D, all in float64 from the posterior means directly."""
  s = SCHEDULES["linear"]
  T = s.num_timesteps
  betas, abar, abar_prev, _, sigma2 = tables64(s)
  t = np.array([1, 2, 10, 100, 500, 900, 999])
  rs = np.random.RandomState(3)
  x0, noise, out = (rs.randn(len(t), 6) for _ in range(3))
  a, sg = np.sqrt(abar[t])[:, None], np.sqrt(1 - abar[t])[:, None]
  x_t = a * x0 + sg * noise
  x0_hat = {"epsilon": (x_t - sg * out) / a, "sample": out, "v_prediction": a * x_t - sg * out}[prediction_type]

  def posterior_mean(x0_):  # Ho et al. 2020, eq. 7
    b, ap = betas[t][:, None], abar_prev[t][:, None]
    return (np.sqrt(ap) * b * x0_ + np.sqrt(1 - b) * (1 - ap) * x_t) / (1 - abar[t])[:, None]

  var = sigma2[t][:, None]  # both Gaussians have variance beta-tilde_t
  kl = np.sum(0.5 * (posterior_mean(x0) - posterior_mean(x0_hat)) ** 2 / var, axis=1)
  loss = loss_from_output(s, jnp.asarray(out, jnp.float32), jnp.asarray(x0, jnp.float32),
                          jnp.asarray(noise, jnp.float32), jnp.asarray(t, jnp.int32),
                          prediction_type=prediction_type, weighting="vlb")
  np.testing.assert_allclose(np.asarray(loss) * x0.shape[1] / T, kl, rtol=1e-3)


def test_vlb_weighting_at_t0_is_the_decoder_quadratic_term():
  s = SCHEDULES["linear"]
  _, _, _, _, sigma2 = tables64(s)
  rs = np.random.RandomState(4)
  x0, x0_hat, noise = (rs.randn(2, 5) for _ in range(3))
  loss = loss_from_output(s, jnp.asarray(x0_hat, jnp.float32), jnp.asarray(x0, jnp.float32),
                          jnp.asarray(noise, jnp.float32), jnp.array([0, 0]), prediction_type="sample", weighting="vlb")
  expected = 1000 * np.mean((x0 - x0_hat) ** 2 / (2 * sigma2[0]), axis=1)
  np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_min_snr_clips_only_where_snr_exceeds_gamma():
  s = SCHEDULES["linear"]
  w = np.asarray(loss_weight(s, jnp.arange(1000), prediction_type="epsilon", weighting="min_snr", min_snr_gamma=GAMMA))
  snr = tables64(s)[3]
  np.testing.assert_allclose(w[snr <= GAMMA], 1.0, rtol=1e-5)
  assert np.all(w[snr > GAMMA] < 1.0) and np.all(w > 0)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_training_loss_wiring_with_an_oracle(prediction_type):
  """An oracle that knows x0 predicts the exact target, so the loss vanishes; a zero model does not."""
  s = SCHEDULES["cosine"]
  x0 = jax.random.normal(jax.random.key(0), (16, 4, 4, 2))
  seen = {}

  def oracle(x_t, t):
    seen["t"] = t
    abar = s.alphas_cumprod[t.astype(jnp.int32)][:, None, None, None]
    a, sg = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
    eps = (x_t - a * x0) / sg
    return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - sg * x0}[prediction_type]

  loss_fn = jax.jit(lambda x, r: training_loss(oracle, s, x, r, prediction_type=prediction_type))
  loss = loss_fn(x0, jax.random.key(1))
  assert loss.shape == (16,) and loss.dtype == jnp.float32
  assert seen["t"].dtype == jnp.float32 and seen["t"].shape == (16,)
  assert float(jnp.max(loss)) < 1e-4
  zero = training_loss(lambda x_t, t: jnp.zeros_like(x_t, jnp.bfloat16), s, x0, jax.random.key(1),
                       prediction_type=prediction_type)
  assert zero.dtype == jnp.float32 and float(jnp.mean(zero)) > 0.1


def test_training_loss_samples_t_uniformly_in_range():
  s = get_schedule("linear", 10)
  ts = []
  training_loss(lambda x_t, t: ts.append(t) or x_t, s, jnp.zeros((20000, 1)), jax.random.key(0))
  counts = np.bincount(np.asarray(ts[0]).astype(int), minlength=10)
  assert counts.shape == (10,) and counts.min() > 1800  # 2000 expected each, sd 42


def test_bad_names_raise_listing_choices():
  s = SCHEDULES["linear"]
  args = (s, jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.array([0, 1]))
  with pytest.raises(ValueError, match="'lvlb'.*simple, snr, min_snr, vlb"):
    loss_from_output(*args, weighting="lvlb")
  with pytest.raises(ValueError, match="'eps'.*epsilon, sample, v_prediction"):
    loss_from_output(*args, prediction_type="eps")
  with pytest.raises(ValueError, match="min_snr_gamma"):
    loss_from_output(*args, weighting="min_snr", min_snr_gamma=0.0)
  with pytest.raises(ValueError, match=r"\[0, 999\]"):
    loss_from_output(*args[:-1], jnp.array([0, 1000]))
  with pytest.raises(ValueError, match="'foo'"):
    training_loss(lambda x, t: x, s, jnp.zeros((2, 3)), jax.random.key(0), weighting="foo")


@pytest.mark.parametrize("weighting", ["simple", "min_snr"])
def test_l1_loss_type_matches_float64(weighting):
  # LDM's loss_type "l1" (LSUN-Churches): weight(t) * mean |output - target|.
  s = SCHEDULES["linear"]
  x0, noise, out = batch(s, seed=3)
  expected = weight64(s, T_VALUES, "epsilon", weighting) * np.mean(np.abs(out - noise), axis=(1, 2, 3))
  loss = loss_from_output(s, jnp.asarray(out, jnp.float32), jnp.asarray(x0, jnp.float32),
                          jnp.asarray(noise, jnp.float32), jnp.asarray(T_VALUES), weighting=weighting,
                          min_snr_gamma=GAMMA, loss_type="l1")
  np.testing.assert_allclose(loss, expected, rtol=2e-4)
  with pytest.raises(ValueError, match="'l3'.*l2, l1"):
    loss_from_output(s, jnp.asarray(out), jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(T_VALUES),
                     loss_type="l3")
