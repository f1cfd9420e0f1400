"""Timestep grids: diffusers' spacing semantics and the explicit range / distinctness checks for every num_steps."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

from ldm_jax import samplers, schedules
from ldm_jax.samplers import timesteps as ts

T = 1000
SCHEDULE = schedules.get_schedule("scaled_linear", T)
SPACINGS = ("leading", "trailing", "linspace")
GRIDS = [("ddim", False), ("ddpm", False), ("dpmpp_2m", False), ("dpmpp_2m", True), ("euler", False),
         ("euler", True), ("euler_ancestral", False), ("heun", False), ("heun", True)]


def _diffusers(method, karras, spacing, steps_offset):
  kw = dict(num_train_timesteps=T, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
            timestep_spacing=spacing, steps_offset=steps_offset)
  if method in ("ddim", "ddpm"):
    return (DDIMScheduler if method == "ddim" else DDPMScheduler)(**kw)
  cls = {"dpmpp_2m": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler, "euler_ancestral": EulerDiscreteScheduler,
         "heun": HeunDiscreteScheduler}[method]
  sch = cls(use_karras_sigmas=karras, **kw)
  sch.alphas_cumprod = torch.from_numpy(np.asarray(SCHEDULE.alphas_cumprod))
  return sch


@pytest.mark.parametrize("method,karras", GRIDS)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_every_num_steps_gives_a_valid_grid_or_a_value_error(method, karras, spacing):
  """For S = 1..T: exactly S timesteps in [0, T-1] (distinct, and strictly decreasing noise levels), else ValueError."""
  failures = []
  for steps_offset in ((0, 1) if spacing == "leading" else (0,)):  # diffusers ignores the offset otherwise
    for n in range(1, T + 1):
      try:
        tables = samplers.make_tables(SCHEDULE, method=method, num_steps=n, timestep_spacing=spacing,
                                      steps_offset=steps_offset, karras_sigmas=karras)
      except ValueError as e:
        assert str(n) in str(e) and spacing in str(e)
        failures.append((steps_offset, n))
        continue
      t = np.asarray(tables.xs["t"])
      assert t.shape == (n,) and t.min() >= 0 and t.max() <= T - 1, (n, t.min(), t.max())
      alpha = np.asarray(tables.xs["alpha"])
      assert np.all(np.diff(alpha) > 0), n  # noise levels strictly decrease along the grid
      if not (method == "dpmpp_2m" and karras):  # rounded Karras model timesteps may repeat (as in diffusers)
        assert len(np.unique(t)) == n, n
  # With steps_offset = 0 only DPM-Solver's n + 1 point grids are impossible, and only at S = T.
  impossible = [n for off, n in failures if off == 0]
  expected = [T] if method == "dpmpp_2m" and not karras and spacing != "trailing" else []
  assert impossible == expected, impossible[:10]
  if spacing == "leading" and not (method == "dpmpp_2m" and karras):  # steps_offset = 1 pushes S = T past T-1
    assert (1, T) in failures


@pytest.mark.parametrize("method,karras", GRIDS)
@pytest.mark.parametrize("spacing,steps_offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_grids_match_diffusers(method, karras, spacing, steps_offset):
  for n in list(range(1, T, 61)) + [T - 1]:
    sch = _diffusers(method, karras, spacing, steps_offset)
    try:
      sch.set_timesteps(n)
    except ValueError:
      continue
    try:
      tables = samplers.make_tables(SCHEDULE, method=method, num_steps=n, timestep_spacing=spacing,
                                    steps_offset=steps_offset, karras_sigmas=karras)
    except ValueError:
      continue  # our explicit check refused a grid diffusers accepts (out of range / repeated timesteps)
    t_ref = sch.timesteps.numpy().astype(np.float64)
    if method == "heun":
      t_ref = t_ref[[0] + list(range(1, len(t_ref), 2))]
    if len(t_ref) == n + 1:  # diffusers' trailing arange bug: a spurious last timestep -1
      assert spacing == "trailing" and t_ref[-1] == -1, t_ref[-3:]
    t_ref = t_ref[:n]
    np.testing.assert_allclose(tables.xs["t"], t_ref, rtol=1e-6, atol=1e-4, err_msg=f"n={n}")
    if method not in ("ddim", "ddpm"):
      sig = tables.xs["sigma"] / tables.xs["alpha"]
      s_ref = sch.sigmas.numpy()[:-1]
      if method == "heun":
        s_ref = s_ref[[0] + list(range(1, len(s_ref), 2))]
      np.testing.assert_allclose(sig, s_ref[:n], rtol=1e-5, err_msg=f"n={n}")


def test_leading_offset_past_the_end_names_the_values():
  with pytest.raises(ValueError, match=r"\[1000\].*outside \[0, 999\]"):
    samplers.make_tables(SCHEDULE, method="ddim", num_steps=1000, timestep_spacing="leading", steps_offset=1)


def test_karras_levels_and_sigma_to_t_invert_the_table():
  table = ts.ve_sigmas(SCHEDULE.alphas_cumprod)
  k = ts.karras_levels(table[0], table[-1], 10)
  assert k[0] == pytest.approx(table[-1]) and k[-1] == pytest.approx(table[0]) and np.all(np.diff(k) < 0)
  np.testing.assert_allclose(ts.sigma_to_t(table[[0, 17, 999]], table), [0, 17, 999], atol=1e-6)
