"""Noise schedules against diffusers' DDPMScheduler, float64 recomputations and their edge cases."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale

import jax.numpy as jnp
from ldm_jax import schedules
from ldm_jax.schedules import SCHEDULE_NAMES, get_schedule, rescale_zero_terminal_snr

DIFFUSERS_NAME = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2",
                  "sigmoid": "sigmoid"}


def _diffusers(name, T, **kw):
  s = get_schedule(name, T)
  if name != "cosine":  # Pass our endpoints: diffusers' defaults are those of "linear".
    betas = np.asarray(s.betas, np.float64)
    kw = {"beta_start": float(betas[0]) if name != "sigmoid" else schedules._DEFAULT_BETAS[name][0],
          "beta_end": schedules._DEFAULT_BETAS[name][1], **kw}
  if name == "scaled_linear":
    kw["beta_start"] = schedules._DEFAULT_BETAS[name][0]
  return DDPMScheduler(num_train_timesteps=T, beta_schedule=DIFFUSERS_NAME[name], **kw)


def test_every_schedule_name_has_a_reference():
  assert set(DIFFUSERS_NAME) == set(SCHEDULE_NAMES)


@pytest.mark.parametrize("T", [1000, 37])
@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_alphas_cumprod_match_diffusers(name, T):
  s = get_schedule(name, T)
  ref = _diffusers(name, T)
  assert s.betas.shape == s.alphas_cumprod.shape == (T,)
  np.testing.assert_allclose(s.betas, ref.betas.numpy(), rtol=1e-4)
  np.testing.assert_allclose(s.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-4)


def test_beta_overrides_match_diffusers():
  s = get_schedule("linear", 200, beta_start=1e-3, beta_end=0.05)
  ref = DDPMScheduler(num_train_timesteps=200, beta_start=1e-3, beta_end=0.05, beta_schedule="linear")
  np.testing.assert_allclose(s.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=1e-4)


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_rescale_zero_terminal_snr_matches_diffusers(name):
  s = rescale_zero_terminal_snr(get_schedule(name, 1000))
  ref = _diffusers(name, 1000, rescale_betas_zero_snr=True)
  # All but the terminal step agree; diffusers has alpha-bar_{T-1} = 0 exactly (beta = 1), we raise
  # it to min(2^-24, alpha-bar_{T-2} / 2) (documented in schedules.py) so that eps-prediction keeps
  # a finite x0 and every beta stays below 1.
  np.testing.assert_allclose(s.alphas_cumprod[:-1], ref.alphas_cumprod.numpy()[:-1], rtol=1e-4, atol=1e-10)
  # diffusers' float32 betas (1 - a_t / a_{t-1} in float32) carry ~1e-7 absolute error, 1e-3 relative
  # at beta ~ 1e-4; its rescaling function run in float64 is the tighter reference.
  np.testing.assert_allclose(s.betas[:-1], ref.betas.numpy()[:-1], rtol=1e-4, atol=5e-7)
  betas64 = diffusers_rescale(torch.tensor(np.asarray(get_schedule(name, 1000).betas, np.float64))).numpy()
  np.testing.assert_allclose(s.betas[:-1], betas64[:-1], rtol=1e-4)
  assert float(ref.alphas_cumprod[-1]) == 0.0
  a = np.asarray(s.alphas_cumprod, np.float64)
  np.testing.assert_allclose(a[-1], min(schedules.ZERO_SNR_ALPHA_BAR, a[-2] / 2), rtol=1e-6)
  assert np.all(np.diff(a) < 0) and np.all((np.asarray(s.betas) > 0) & (np.asarray(s.betas) < 1))
  assert float(schedules.snr_table(s)[-1]) < 1e-7
  np.testing.assert_allclose(s.alphas_cumprod[0], get_schedule(name, 1000).alphas_cumprod[0], rtol=1e-6)


def test_tables_stay_float32():
  built = [get_schedule(n, 50) for n in SCHEDULE_NAMES]
  built += [rescale_zero_terminal_snr(built[0]), schedules.from_betas(np.full(10, 0.02)),
            schedules.from_log_snr(np.linspace(5.0, -5.0, 10))]
  for s in built:
    for table in (s.betas, s.alphas_cumprod, schedules.snr_table(s), schedules.one_minus_alphas_cumprod(s),
                  schedules.sigmas(s), schedules.log_snr(s, jnp.array([0.5, 3.0]))):
      assert table.dtype == jnp.float32


def test_one_minus_alphas_cumprod_is_accurate_at_small_t():
  s = get_schedule("linear", 1000)
  ref = -np.expm1(np.cumsum(np.log1p(-np.asarray(s.betas, np.float64))))
  np.testing.assert_allclose(schedules.one_minus_alphas_cumprod(s), ref, rtol=2e-6)
  # The naive float32 1 - alpha-bar is off by ~1e-4 relative at t = 0: the reason for the helper.
  assert abs((1.0 - np.float32(s.alphas_cumprod[0])) / ref[0] - 1.0) > 1e-5


def test_from_log_snr_has_the_requested_log_snr():
  lam = np.linspace(10.0, -10.0, 100)
  s = schedules.from_log_snr(lam)
  np.testing.assert_allclose(np.log(schedules.snr_table(s)), lam, atol=2e-4)


@pytest.mark.parametrize("bad", ["cosin", "Linear", "", "squaredcos_cap_v2"])
def test_unknown_name_raises_listing_choices(bad):
  with pytest.raises(ValueError) as err:
    get_schedule(bad)
  assert repr(bad) in str(err.value)
  assert all(name in str(err.value) for name in SCHEDULE_NAMES)


@pytest.mark.parametrize("T", [0, -3, 2.5, "10"])
def test_bad_num_timesteps_raises(T):
  with pytest.raises(ValueError, match=">= 1") as err:
    get_schedule("linear", T)
  assert repr(T) in str(err.value)


@pytest.mark.parametrize("kw", [dict(beta_start=0.1, beta_end=0.05), dict(beta_end=1.5), dict(beta_start=0.0)])
def test_bad_betas_raise(kw):
  with pytest.raises(ValueError, match="beta_start"):
    get_schedule("linear", 10, **kw)


def test_other_bad_arguments_raise():
  with pytest.raises(ValueError, match="cosine"):
    get_schedule("cosine", 10, beta_start=1e-4)
  with pytest.raises(ValueError, match="max_beta"):
    get_schedule("cosine", 10, max_beta=1.5)
  with pytest.raises(ValueError, match="decreasing"):
    schedules.from_log_snr([1.0, 2.0])
  with pytest.raises(ValueError, match=r"\(0, 1\]"):
    schedules.from_betas([0.1, 0.0])
  with pytest.raises(ValueError, match=r"betas: 1 value is NaN, 1 value lies outside \(0.0, 1.0\] "
                                       r"\(min 1.5, max 1.5\); expected finite values in \(0, 1\]"):
    schedules.from_betas([0.1, np.nan, 1.5])
  with pytest.raises(ValueError, match=r"betas: 1 value is \+inf"):
    schedules.from_betas([0.1, np.inf])
  with pytest.raises(TypeError, match="betas must be a 1-D array of numbers"):
    schedules.from_betas(["a"])
  assert float(schedules.from_betas([0.5, 1.0]).alphas_cumprod[-1]) == 0.0  # zero terminal SNR
  with pytest.raises(ValueError, match="num_timesteps >= 2, got 1"):
    rescale_zero_terminal_snr(get_schedule("linear", 1))
