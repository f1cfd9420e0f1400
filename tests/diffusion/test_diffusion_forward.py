"""q_sample against diffusers' add_noise, its variance identity, dtype policy and timestep checks."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

import jax
import jax.numpy as jnp
from ldm_jax.diffusion import check_timesteps, q_sample
from ldm_jax.schedules import get_schedule, rescale_zero_terminal_snr


@pytest.mark.parametrize("name, ref_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2"),
                                            ("scaled_linear", "scaled_linear")])
def test_q_sample_matches_diffusers_add_noise(name, ref_name):
  s = get_schedule(name, 1000)
  kw = dict(beta_start=0.00085, beta_end=0.012) if name == "scaled_linear" else {}
  ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=ref_name, **kw)
  rs = np.random.RandomState(0)
  x0 = rs.randn(6, 8, 8, 3).astype(np.float32)  # NHWC; add_noise broadcasts over any trailing axes.
  noise = rs.randn(*x0.shape).astype(np.float32)
  t = np.array([0, 1, 250, 500, 998, 999], np.int32)
  expected = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t).long()).numpy()
  out = q_sample(s, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
  assert out.shape == x0.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("schedule", [get_schedule("linear", 1000), get_schedule("cosine", 1000),
                                      rescale_zero_terminal_snr(get_schedule("scaled_linear", 1000))])
def test_q_sample_preserves_unit_variance(schedule):
  # x0 = +-1 (Rademacher: unit variance, far from Gaussian), N = 2^20 values per t. For
  # x_t = a x0 + s eps, Var(x_t) = a^2 + s^2 = 1 and the sample variance has standard error
  # sqrt((E x_t^4 - 1) / N) with E x_t^4 = a^4 + 6 a^2 s^2 + 3 s^4 <= 3, i.e. <= 1.4e-3. We allow
  # 6 standard errors (a false failure has probability ~2e-9; the seed is fixed anyway), while a
  # wrong coefficient (e.g. alpha-bar instead of its square root) moves the variance by >= 0.05.
  t_values = np.array([0, 10, 250, 500, 999])
  n = 2**20
  x_rng, eps_rng = jax.random.split(jax.random.key(1))
  x0 = jnp.where(jax.random.bernoulli(x_rng, 0.5, (len(t_values), n)), 1.0, -1.0)
  noise = jax.random.normal(eps_rng, x0.shape)
  x_t = q_sample(schedule, x0, jnp.asarray(t_values, jnp.int32), noise)
  a2 = np.asarray(schedule.alphas_cumprod, np.float64)[t_values]
  s2 = 1.0 - a2
  se = np.sqrt((a2**2 + 6 * a2 * s2 + 3 * s2**2 - 1.0) / n)
  var = np.asarray(jnp.var(x_t, axis=1), np.float64)
  assert np.all(np.abs(var - 1.0) < 6 * se + 1e-6), (var, se)
  assert np.all(np.abs(np.asarray(jnp.mean(x_t, axis=1))) < 6 / np.sqrt(n))


def test_q_sample_dtype_policy_bfloat16():
  s = get_schedule("scaled_linear", 1000)
  x0 = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
  noise = jax.random.normal(jax.random.key(1), x0.shape)
  t = jnp.array([0, 10, 500, 999], jnp.int32)
  out16 = q_sample(s, x0.astype(jnp.bfloat16), t, noise.astype(jnp.bfloat16))
  assert out16.dtype == jnp.bfloat16
  assert s.betas.dtype == s.alphas_cumprod.dtype == jnp.float32  # the tables are never cast down
  out32 = q_sample(s, x0.astype(jnp.bfloat16).astype(jnp.float32), t, noise.astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(out16.astype(jnp.float32), out32, rtol=1e-2, atol=1e-2)  # one bf16 rounding
  assert q_sample(s, x0.astype(jnp.bfloat16), t, noise).dtype == jnp.float32  # result_type(bf16, f32)


def test_q_sample_under_jit_matches_eager():
  s = get_schedule("linear", 100)
  x0 = jax.random.normal(jax.random.key(0), (3, 5))
  noise = jax.random.normal(jax.random.key(1), (3, 5))
  t = jnp.array([0, 50, 99], jnp.int32)
  np.testing.assert_allclose(jax.jit(q_sample)(s, x0, t, noise), q_sample(s, x0, t, noise), rtol=1e-6)


@pytest.mark.parametrize("bad_t, match", [
    ([0, 100], r"\[0, 99\].*\[100\]"),
    ([-1, 3], r"\[0, 99\].*\[-1\]"),
    ([0.0, 1.0], "integer"),
    ([[0, 1]], r"shape \[2\]"),
    ([0, 1, 2], r"shape \[2\]"),
])
def test_bad_timesteps_raise(bad_t, match):
  s = get_schedule("linear", 100)
  x0 = jnp.zeros((2, 4))
  with pytest.raises(ValueError, match=match):
    q_sample(s, x0, np.asarray(bad_t), x0)


def test_traced_timesteps_are_not_range_checked():
  # Documented: under jit only dtype and shape are checked (JAX would clamp t = 100 to 99).
  jax.jit(lambda t: check_timesteps(t, 100, 2))(jnp.array([0, 100], jnp.int32))
  with pytest.raises(ValueError, match="integer"):
    jax.jit(lambda t: check_timesteps(t, 100, 2))(jnp.array([0.0, 1.0]))


def test_shape_mismatch_raises():
  s = get_schedule("linear", 100)
  with pytest.raises(ValueError, match=r"\[2, 4\] and \[2, 5\]"):
    q_sample(s, jnp.zeros((2, 4)), jnp.array([0, 1]), jnp.zeros((2, 5)))
