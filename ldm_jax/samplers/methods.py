"""The sampling methods: per-step tables, step function and carry of each (one file per method)."""

from typing import Callable, NamedTuple

from ldm_jax.samplers import ddim, ddpm, dpm_solver, euler, heun


class Method(NamedTuple):
  tables: Callable
  step: Callable
  init_carry: Callable
  stochastic: bool  # draws z ~ N(0, I) at every step
  sigma_space: bool  # supports karras_sigmas


METHODS = {
    "ddpm": Method(ddpm.tables, ddpm.step, ddpm.init_carry, True, False),
    "ddim": Method(ddim.tables, ddim.step, ddim.init_carry, True, False),
    "dpmpp_2m": Method(dpm_solver.tables, dpm_solver.step, dpm_solver.init_carry, False, True),
    "euler": Method(euler.tables, euler.step, euler.init_carry, False, True),
    "euler_ancestral": Method(euler.tables, euler.step_ancestral, euler.init_carry, True, True),
    "heun": Method(heun.tables, heun.step, heun.init_carry, False, True),
}
