"""Every sampler's full trajectory against the diffusers scheduler loop (torch, CPU), same model, same noise."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler)
from diffusers.schedulers import scheduling_ddim, scheduling_ddpm, scheduling_euler_ancestral_discrete

from ldm_jax import samplers, schedules

SHAPE = (2, 4, 4, 3)
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "sample", "v_prediction")
RTOL = 1e-4
# The samplers only call fold_in / normal on the key, so any key implementation works; "rbg" keys
# compile about 4x faster than threefry on XLA:CPU. The full-T cases use the default threefry key.
RBG = "rbg"


def model_jax(x, t, T):
  """A fixed nonlinear 'network' of (x_t, t); the same formula as model_torch."""
  u = t[:, None, None, None] / T
  return 0.3 * jnp.tanh(x) * jnp.cos(u * math.pi / 2) + 0.1 * x * u + 0.05 * jnp.sin(3.0 * x + u)


def model_torch(x, t, T):
  u = float(t) / T
  return 0.3 * torch.tanh(x) * math.cos(u * math.pi / 2) + 0.1 * x * u + 0.05 * torch.sin(3.0 * x + u)


def _scheduler(method, schedule, spacing, prediction_type, steps_offset, karras, variance_type, set_alpha_to_one):
  T = schedule.num_timesteps
  kw = dict(num_train_timesteps=T, trained_betas=np.asarray(schedule.betas, np.float64),
            prediction_type=prediction_type, timestep_spacing=spacing, steps_offset=steps_offset)
  if method == "ddim":
    sch = DDIMScheduler(clip_sample=False, set_alpha_to_one=set_alpha_to_one, **kw)
  elif method == "ddpm":
    sch = DDPMScheduler(clip_sample=False, variance_type=variance_type, **kw)
  elif method == "dpmpp_2m":
    sch = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=karras, **kw)
  elif method == "euler":
    sch = EulerDiscreteScheduler(use_karras_sigmas=karras, **kw)
  elif method == "euler_ancestral":
    sch = EulerAncestralDiscreteScheduler(**kw)
  else:
    sch = HeunDiscreteScheduler(use_karras_sigmas=karras, **kw)
  # Use exactly our float32 alpha-bar table (diffusers' own cumprod differs in the last bits).
  sch.alphas_cumprod = torch.from_numpy(np.asarray(schedule.alphas_cumprod))
  return sch


def diffusers_loop(method, schedule, x_T, noise, num_steps, *, spacing, prediction_type, steps_offset=0,
                   karras=False, eta=0.0, variance_type="fixed_small", set_alpha_to_one=True):
  """Runs the diffusers loop; returns (x_0, model inputs of the S first-order evaluations) as numpy."""
  T = schedule.num_timesteps
  # diffusers' EulerAncestralDiscreteScheduler has no "sample" mode: drive its "epsilon" mode with the
  # x0-model's output converted to eps = (x_VE - x0) / sigma (the same model, another parameterisation).
  x0_as_eps = method == "euler_ancestral" and prediction_type == "sample"
  sch = _scheduler(method, schedule, spacing, "epsilon" if x0_as_eps else prediction_type, steps_offset, karras,
                   variance_type, set_alpha_to_one)
  sch.set_timesteps(num_steps)
  step_index = [0]

  def fake_randn(shape, *args, **kwargs):  # our noise of the current step, fold_in(rng, i)
    return torch.from_numpy(noise[step_index[0]]).reshape(shape)

  patches = [(mod, mod.randn_tensor) for mod in (scheduling_ddim, scheduling_ddpm, scheduling_euler_ancestral_discrete)]
  for mod, _ in patches:
    mod.randn_tensor = fake_randn
  try:
    x = torch.from_numpy(np.asarray(x_T)) * sch.init_noise_sigma
    inputs = []
    for k, t in enumerate(sch.timesteps):
      first_order = method != "heun" or k % 2 == 0
      step_index[0] = k // 2 if method == "heun" else k
      x_in = sch.scale_model_input(x, t)
      if first_order:
        inputs.append(x_in.numpy().copy())
      out = model_torch(x_in, t, T)
      if x0_as_eps:
        out = (x - out) / sch.sigmas[k]
      kw = dict(eta=eta) if method == "ddim" else {}
      x = sch.step(out, t, x, **kw).prev_sample
  finally:
    for mod, fn in patches:
      mod.randn_tensor = fn
  return x.numpy(), np.stack(inputs)


@functools.lru_cache(maxsize=None)
def jax_sampler(method, num_steps, spacing, prediction_type, steps_offset, karras, variance_type,
                set_alpha_to_one, T, traced_eta):
  schedule = SCHEDULES[T]
  fn = lambda x_T, rng, eta: samplers.sample(
      lambda x, t: model_jax(x, t, T), schedule, x_T, rng, method=method, num_steps=num_steps,
      eta=eta if traced_eta else 0.0, prediction_type=prediction_type, timestep_spacing=spacing,
      steps_offset=steps_offset, karras_sigmas=karras, variance_type=variance_type,
      set_alpha_to_one=set_alpha_to_one, return_trajectory=True)
  return jax.jit(fn)


SCHEDULES = {100: schedules.get_schedule("scaled_linear", 100, beta_start=0.001, beta_end=0.1),
             1000: schedules.get_schedule("scaled_linear", 1000)}


def rel_err(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def check(method, num_steps, *, spacing="leading", prediction_type="epsilon", steps_offset=0, karras=False,
          eta=0.0, variance_type="fixed_small", set_alpha_to_one=True, T=100, impl=RBG):
  schedule = SCHEDULES[T]
  rng = jax.random.key(3, impl=impl)
  x_T = jax.random.normal(jax.random.key(0), SHAPE, jnp.float32)
  noise = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(rng, i), SHAPE, jnp.float32))
                    for i in range(num_steps)])
  fn = jax_sampler(method, num_steps, spacing, prediction_type, steps_offset, karras, variance_type,
                   set_alpha_to_one, T, eta != 0.0)
  x0, traj = fn(x_T, rng, jnp.float32(eta))
  ref_x0, ref_inputs = diffusers_loop(method, schedule, x_T, noise, num_steps, spacing=spacing,
                                      prediction_type=prediction_type, steps_offset=steps_offset, karras=karras,
                                      eta=eta, variance_type=variance_type, set_alpha_to_one=set_alpha_to_one)
  assert traj["x_t"].shape == (num_steps,) + SHAPE
  assert rel_err(traj["x_t"], ref_inputs) < RTOL, (rel_err(traj["x_t"], ref_inputs))
  assert rel_err(x0, ref_x0) < RTOL, rel_err(x0, ref_x0)


METHOD_CASES = [("ddim", {"eta": 0.7}), ("ddpm", {}), ("dpmpp_2m", {}), ("euler", {}), ("euler", {"karras": True}),
                ("euler_ancestral", {}), ("heun", {})]


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("method,kw", METHOD_CASES, ids=[f"{m}-{'-'.join(map(str, k.values()))}" for m, k in METHOD_CASES])
def test_matches_diffusers(method, kw, spacing, prediction_type):
  check(method, 9, spacing=spacing, prediction_type=prediction_type, **kw)


@pytest.mark.parametrize("method,kw", [
    ("ddim", {"steps_offset": 1}), ("ddim", {"set_alpha_to_one": False, "eta": 1.0}),
    ("ddpm", {"variance_type": "fixed_large", "spacing": "trailing"}),
    ("ddpm", {"steps_offset": 1}), ("dpmpp_2m", {"steps_offset": 1}), ("dpmpp_2m", {"karras": True}),
    ("euler", {"steps_offset": 1, "karras": True}), ("euler_ancestral", {"steps_offset": 1}),
    ("heun", {"karras": True}), ("heun", {"steps_offset": 1, "prediction_type": "v_prediction"})])
@pytest.mark.parametrize("num_steps", [1, 2, 16])
def test_matches_diffusers_options_and_step_counts(method, kw, num_steps):
  check(method, num_steps, **kw)


@pytest.mark.parametrize("method,kw", [
    ("ddim", {"steps_offset": 1, "spacing": "leading"}), ("ddpm", {"spacing": "trailing"}),
    ("dpmpp_2m", {"spacing": "linspace", "karras": True}), ("euler", {"spacing": "linspace", "karras": True}),
    ("euler_ancestral", {"spacing": "trailing", "prediction_type": "v_prediction"}),
    ("heun", {"spacing": "linspace"})])
def test_matches_diffusers_full_T(method, kw):
  check(method, 25, T=1000, impl=None, **kw)


@pytest.mark.parametrize("start_step", [1, 3])
def test_dpmpp_2m_img2img_start_matches_diffusers_begin_index(start_step):
  """Starting mid-grid (img2img), the first executed DPM-Solver++ step is first order, as in diffusers."""
  schedule = schedules.get_schedule("linear", 100)
  sch = _scheduler("dpmpp_2m", schedule, "leading", "epsilon", 0, False, "fixed_small", True)
  sch.set_timesteps(8)
  sch.set_begin_index(start_step)
  x_start = np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
  x = torch.from_numpy(x_start)
  for t in sch.timesteps[start_step:]:
    x = sch.step(model_torch(x, t, 100), t, x).prev_sample
  ours = samplers.sample(functools.partial(model_jax, T=100), schedule, jnp.asarray(x_start), jax.random.key(0),
                         method="dpmpp_2m", num_steps=8, start_step=start_step)
  np.testing.assert_allclose(np.asarray(ours), x.numpy(), rtol=RTOL, atol=RTOL * np.abs(x.numpy()).max())
