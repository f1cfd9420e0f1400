"""sample(): validation before compilation, one compiled scan, float32 arithmetic, zero-SNR, guidance,
img2img starts and inpainting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax import samplers, schedules

METHODS = ("ddpm", "ddim", "dpmpp_2m", "euler", "euler_ancestral", "heun")
SCHEDULE = schedules.get_schedule("scaled_linear", 100, beta_start=0.001, beta_end=0.1)
X_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
RNG = jax.random.key(1, impl="rbg")  # any key type works (fold_in / normal); rbg compiles faster on CPU


def model_fn(x, t):
  u = t[:, None, None, None] / 100.0
  return 0.3 * jnp.tanh(x) * jnp.cos(u) + 0.1 * x * u


def mixing_model_fn(x, t):
  """Like model_fn plus a spatial mean, so that every pixel depends on the whole image."""
  return model_fn(x, t) + 0.2 * jnp.mean(x, axis=(1, 2), keepdims=True)


def never_called(x, t):
  raise AssertionError("model_fn traced before the arguments were validated")


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="plms"), r"'plms'.*ddpm, ddim, dpmpp_2m, euler, euler_ancestral, heun"),
    (dict(num_steps=0), r"num_steps.*>= 1.*0"),
    (dict(num_steps=2.5), r"num_steps.*2.5"),
    (dict(timestep_spacing="uniform"), r"'uniform'.*leading, trailing, linspace"),
    (dict(prediction_type="x0"), r"'x0'.*epsilon, sample, v_prediction"),
    (dict(method="ddim", karras_sigmas=True), r"karras_sigmas.*'ddim'.*euler"),
    (dict(method="euler", eta=0.5), r"eta=0.5.*'ddim'"),
    (dict(method="ddpm", variance_type="learned"), r"'learned'.*fixed_small, fixed_large"),
    (dict(method="ddim", variance_type="fixed_large"), r"fixed_large.*'ddpm'"),
    (dict(start_step=10), r"start_step.*\[0, 9\].*10"),
    (dict(num_steps=101), r"101"),
    (dict(eta=float("nan")), r"eta must be a finite number >= 0, got nan"),
    (dict(eta=-0.5), r"eta must be a finite number >= 0, got -0.5"),
    (dict(known=(np.full((2, 4, 4, 3), np.nan, np.float32), np.ones((2, 4, 4, 1)))),
     r"known\[0\] \(x0_known\): 96 values are NaN"),
    (dict(known=(np.zeros((2, 4, 4, 3), np.float32), np.full((2, 4, 4, 1), 2.0))),
     r"known\[1\] \(known_mask\): 32 values lie outside \[0, 1\]"),
])
def test_bad_arguments_raise_before_tracing(kwargs, match):
  kw = dict(method="ddim", num_steps=10) | kwargs
  with pytest.raises(ValueError, match=match):
    samplers.sample(never_called, SCHEDULE, X_T, RNG, **kw)


@pytest.mark.parametrize("x_T,match", [(jnp.zeros((4,)), r"shape \(4,\)"), (jnp.zeros((2, 3), jnp.int32), "int32"),
                                       (np.zeros((0, 3), np.float32), r"\(0, 3\)"),
                                       (np.full((2, 3), np.inf, np.float32), r"x_T: 6 values are \+inf")])
def test_bad_x_T_raises(x_T, match):
  with pytest.raises(ValueError, match=match):
    samplers.sample(never_called, SCHEDULE, x_T, RNG, method="euler", num_steps=5)


@pytest.mark.parametrize("method", METHODS)
def test_one_compiled_scan_and_one_trace_of_the_model(method):
  traces = []

  def counting_model(x, t):
    traces.append(1)
    return model_fn(x, t)

  fn = jax.jit(lambda x, rng: samplers.sample(counting_model, SCHEDULE, x, rng, method=method, num_steps=7))
  text = fn.lower(X_T, RNG).as_text()
  assert "while" in text  # the loop is a single scan, not 7 unrolled steps
  assert len(traces) == (2 if method == "heun" else 1)
  assert text.count("tanh") == len(traces)  # the model body appears once per trace, not once per step


def test_guidance_scale_is_traced_and_batches_cond_and_uncond():
  calls = []

  def cond_model(x, t, label):
    calls.append(x.shape[0])
    return model_fn(x, t) + 0.1 * label[:, None, None, None].astype(jnp.float32)

  cond, null = jnp.array([1, 2]), jnp.array([0, 0])

  @jax.jit
  def run(w):
    guided = samplers.classifier_free_guidance(cond_model, cond, null, w)
    return samplers.sample(guided, SCHEDULE, X_T, RNG, method="dpmpp_2m", num_steps=5)

  out = [run(jnp.float32(w)) for w in (0.0, 1.0, 7.5)]
  assert calls == [4]  # traced once, for all three guidance scales; one call on 2B rows
  only = lambda c: samplers.sample(lambda x, t: cond_model(x, t, c), SCHEDULE, X_T, RNG, method="dpmpp_2m", num_steps=5)
  np.testing.assert_allclose(out[0], only(null), atol=1e-5)
  np.testing.assert_allclose(out[1], only(cond), atol=1e-5)
  assert not np.allclose(out[2], out[1], atol=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_model_keeps_float32_sampler_arithmetic(method):
  """A bf16 network output is used in float32: identical to a float32 model returning the same rounded values."""
  bf16 = lambda x, t: model_fn(x, t).astype(jnp.bfloat16)
  rounded = lambda x, t: model_fn(x, t).astype(jnp.bfloat16).astype(jnp.float32)
  a = samplers.sample(bf16, SCHEDULE, X_T, RNG, method=method, num_steps=6)
  b = samplers.sample(rounded, SCHEDULE, X_T, RNG, method=method, num_steps=6)
  assert a.dtype == jnp.float32
  np.testing.assert_array_equal(a, b)


def test_bfloat16_x_T_is_promoted_to_float32():
  c = samplers.sample(model_fn, SCHEDULE, X_T.astype(jnp.bfloat16).astype(jnp.float32), RNG, method="euler", num_steps=6)
  d = samplers.sample(model_fn, SCHEDULE, X_T.astype(jnp.bfloat16), RNG, method="euler", num_steps=6)
  assert d.dtype == jnp.float32
  np.testing.assert_array_equal(c, d)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_zero_terminal_snr_with_epsilon_is_finite(spacing):
  zsnr = schedules.rescale_zero_terminal_snr(schedules.get_schedule("scaled_linear", 1000))
  for method in METHODS:
    for n in ((1, 20) if spacing == "trailing" else (20,)):
      x0 = samplers.sample(model_fn, zsnr, X_T, RNG, method=method, num_steps=n, timestep_spacing=spacing,
                           prediction_type="epsilon")
      assert np.all(np.isfinite(x0)), (method, n)


@pytest.mark.parametrize("method", ["ddim", "euler", "heun", "ddpm"])
def test_start_step_resumes_the_trajectory(method):
  """Starting at grid step k from the trajectory's own x_t[k] reproduces the full run (img2img mechanics)."""
  x0, traj = samplers.sample(model_fn, SCHEDULE, X_T, RNG, method=method, num_steps=8, return_trajectory=True)
  assert traj["x_t"].shape == (8,) + X_T.shape and traj["x0_pred"].shape == (8,) + X_T.shape
  x0_resumed = samplers.sample(model_fn, SCHEDULE, traj["x_t"][3], RNG, method=method, num_steps=8, start_step=3)
  np.testing.assert_allclose(x0_resumed, x0, atol=2e-5)
  t, alpha, sigma = samplers.noise_level(SCHEDULE, 3, method=method, num_steps=8)
  assert t == pytest.approx(float(traj["t"][3])) and alpha**2 + sigma**2 == pytest.approx(1.0, abs=1e-5)


def test_start_step_for_strength():
  assert [samplers.start_step_for_strength(50, s) for s in (1.0, 0.8, 0.5, 0.0)] == [0, 10, 25, 50]
  with pytest.raises(ValueError, match="1.5"):
    samplers.start_step_for_strength(50, 1.5)


@pytest.mark.parametrize("method", ["ddim", "euler_ancestral", "heun"])
def test_inpainting_keeps_the_known_region(method):
  x0_known = jnp.full(X_T.shape, 0.25)
  mask = jnp.zeros(X_T.shape).at[:, :2].set(1.0)
  x0 = samplers.sample(mixing_model_fn, SCHEDULE, X_T, RNG, method=method, num_steps=6, known=(x0_known, mask))
  free = samplers.sample(mixing_model_fn, SCHEDULE, X_T, RNG, method=method, num_steps=6)
  np.testing.assert_allclose(x0[:, :2], 0.25, atol=1e-5)  # known region: exactly x0 at the end
  assert not np.allclose(x0[:, 2:], free[:, 2:], atol=1e-4)  # the unknown region sees the known one
  empty = samplers.sample(mixing_model_fn, SCHEDULE, X_T, RNG, method=method, num_steps=6, known=(x0_known, 0.0 * mask))
  np.testing.assert_allclose(empty, free, atol=1e-6)


def test_guidance_scale_must_be_finite_when_concrete():
  cond = lambda x, t, c: x
  with pytest.raises(ValueError, match=r"guidance_scale: 1 value is NaN; expected finite"):
    samplers.classifier_free_guidance(cond, jnp.zeros((2,)), jnp.zeros((2,)), jnp.array([1.0, jnp.nan]))


@pytest.mark.parametrize("step", [5, -1, 2.0, None])
def test_noise_level_step_out_of_the_grid_raises(step):
  with pytest.raises(ValueError, match=r"step must be an integer in \[0, 4\]"):
    samplers.noise_level(SCHEDULE, step, method="ddim", num_steps=5)
