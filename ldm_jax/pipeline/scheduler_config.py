"""A diffusers scheduler_config.json as the pipeline's sampler settings: the timestep grid that
every method uses, and the method the folder's scheduler class stands for.

diffusers keeps the grid options in the scheduler config and carries them over when another
scheduler is built from it (`DPMSolverMultistepScheduler.from_config(ddim.config)`), so they are
read once here and applied to whichever `method` a call picks:

  timestep_spacing  "leading" / "trailing" / "linspace"; missing (older folders, e.g. SD 1.5's
                    PNDMScheduler config): None, each method's own class default, as diffusers'
                    from_config gives (DDIM / DDPM "leading", DPM-Solver / Euler / Heun "linspace");
  steps_offset      added to "leading" grids (SD: 1);
  set_alpha_to_one  DDIM's final alpha-bar (1, or alpha-bar of t = 0; SD: false);
  use_karras_sigmas Karras et al. noise levels (sigma-space methods: DPM-Solver++, Euler, Heun);
  variance_type     DDPM's posterior variance ("fixed_small" / "fixed_large").

The schedule and prediction_type are read by `loading.schedule_from_diffusers`. Options that
would change the update in ways the samplers do not implement (x0 clipping, dynamic thresholding,
other DPM-Solver variants) raise a ValueError naming them; pass `scheduler_config={...}` to
`from_pretrained` to override a folder's value.
"""

from ldm_jax import samplers

# diffusers scheduler class -> the method of this project that follows it.
SCHEDULER_METHODS = {
    "DDIMScheduler": "ddim", "DDPMScheduler": "ddpm", "DPMSolverMultistepScheduler": "dpmpp_2m",
    "EulerDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler_ancestral",
    "HeunDiscreteScheduler": "heun",
}
# method -> the default timestep_spacing of its diffusers class.
DEFAULT_SPACINGS = {"ddim": "leading", "ddpm": "leading", "dpmpp_2m": "linspace",
                    "euler": "linspace", "euler_ancestral": "linspace", "heun": "linspace"}
GRID_KEYS = ("timestep_spacing", "steps_offset", "set_alpha_to_one", "karras_sigmas",
             "variance_type")
# option -> the values the samplers implement (a missing option takes diffusers' default, which is
# one of these for every class above except DDPM/DDIM clip_sample; a folder saved by diffusers
# always writes it).
_SUPPORTED = {
    "clip_sample": (False,), "thresholding": (False,),
    "algorithm_type": ("dpmsolver++",), "solver_order": (2,), "euler_at_final": (False,),
    "final_sigmas_type": ("zero",), "use_lu_lambdas": (False,), "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,), "variance_type": ("fixed_small", "fixed_large", None),
}


def check_supported(config: dict) -> None:
  """ValueError naming every option of a scheduler config that the samplers do not implement."""
  bad = {k: config[k] for k, ok in _SUPPORTED.items() if k in config and config[k] not in ok}
  if bad:
    listed = "; ".join(f"{k}={v!r} (supported: {', '.join(map(repr, _SUPPORTED[k]))})"
                       for k, v in bad.items())
    raise ValueError(f"scheduler config options not implemented by ldm_jax's samplers: {listed}. "
                     "Override them with from_pretrained(..., scheduler_config={...}).")


def default_method(config: dict, fallback: str = "dpmpp_2m") -> str:
  """The method of the config's scheduler class (`SCHEDULER_METHODS`), else `fallback` (e.g. for
  PNDMScheduler or LMSDiscreteScheduler, which have no counterpart here)."""
  return SCHEDULER_METHODS.get(config.get("_class_name"), fallback)


def grid_from_diffusers(config: dict) -> dict:
  """The grid keywords of `samplers.make_tables` (see the module docstring) from a scheduler config."""
  check_supported(config)
  grid = dict(timestep_spacing=config.get("timestep_spacing"),
              steps_offset=int(config.get("steps_offset", 0)),
              set_alpha_to_one=bool(config.get("set_alpha_to_one", True)),
              karras_sigmas=bool(config.get("use_karras_sigmas", False)),
              variance_type=config.get("variance_type") or "fixed_small")
  return check_grid(grid)


def check_grid(grid) -> dict:
  """A grid dict with only GRID_KEYS (their values are checked by `samplers.make_tables`)."""
  grid = dict(grid or {})
  unknown = sorted(set(grid) - set(GRID_KEYS))
  if unknown:
    raise ValueError(f"Unknown sampler_grid keys {unknown}; valid keys: {', '.join(GRID_KEYS)}.")
  return grid


def grid_for(grid: dict, method: str) -> dict:
  """The grid keywords that apply to `method`: Karras levels only for sigma-space methods, the
  variance type only for DDPM (the others reject them), a missing spacing the method's default."""
  out = dict(grid)
  if out.get("timestep_spacing", "") is None:
    out["timestep_spacing"] = DEFAULT_SPACINGS[method]
  if not samplers.METHODS[method].sigma_space:
    out.pop("karras_sigmas", None)
  if method != "ddpm":
    out.pop("variance_type", None)
  return out
