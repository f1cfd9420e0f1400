"""Noise augmentation of `upscale`'s low-res conditioning (the SD x4 upscaler; Ho et al. 2022,
"Cascaded Diffusion Models", sec. 4.1 conditioning augmentation): c = q_sample(low-res schedule,
x_low, s, eps), the UNet told the level s as its class label.

diffusers' StableDiffusionUpscalePipeline: `low_res_scheduler.add_noise(image, noise, s)` (a
DDPMScheduler's alpha-bar_s, Ho et al. 2020 eq. 4) on the low-res image in [-1, 1] at the latent
resolution, `class_labels=s` for every row of the UNet's batch (both guidance branches read the same
noised image and level), s an int in [0, max_noise_level] (default 20). Here eps of image b comes
from fold_in(fold_in(rng, b), LOW_RES_NOISE) of the rng passed to `upscale`
(`LatentDiffusionPipeline.low_res_noise` returns it), so it does not depend on batching.
"""

from typing import NamedTuple

import jax
import numpy as np

from ldm_jax import diffusion
from ldm_jax.diffusion import concat
from ldm_jax.pipeline.programs import sample_keys
from ldm_jax.samplers import driver
from ldm_jax.schedules import Schedule

LOW_RES_NOISE = 6  # fold_in purpose of eps (programs' 0 and 4-5, the driver's 1-3)
DEFAULT_LEVEL = 20  # StableDiffusionUpscalePipeline.__call__'s noise_level
MAX_LEVEL = 350  # StableDiffusionUpscalePipeline.__init__'s max_noise_level


class NoiseAugmentation(NamedTuple):
  """schedule: the low-res noise schedule (diffusers' low_res_scheduler); max_level: the largest
  noise level s allowed (max_noise_level); default_level: s where `upscale` is given None."""

  schedule: Schedule
  max_level: int = MAX_LEVEL
  default_level: int = DEFAULT_LEVEL


def check(aug: NoiseAugmentation, num_class_embeds) -> NoiseAugmentation:
  """The pipeline's noise_augmentation, checked against the UNet's class table (s is its label)."""
  levels = aug.schedule.num_timesteps
  if num_class_embeds is None or not 0 <= aug.default_level <= aug.max_level < min(
      num_class_embeds, levels):
    raise ValueError(f"noise_augmentation needs 0 <= default_level ({aug.default_level}) <= "
                     f"max_level ({aug.max_level}) < the UNet's num_class_embeds "
                     f"({num_class_embeds}) and the low-res schedule's {levels} steps.")
  return aug


def levels(value, n, aug: NoiseAugmentation) -> np.ndarray:
  """The noise level s of each of n images -> int32 [n]: an int (or int [n]) in
  [0, aug.max_level]; None takes aug.default_level."""
  value = aug.default_level if value is None else value
  s = np.asarray(value)
  if s.shape not in ((), (n,)) or not np.issubdtype(s.dtype, np.integer):
    raise ValueError(f"noise_level must be an int (or ints of shape [{n}]) in [0, "
                     f"{aug.max_level}] (max_noise_level: the low-res noise level s, the UNet's "
                     f"class label), got {s.dtype} {s.shape}: {value!r:.60}.")
  s = np.broadcast_to(s, (n,))
  bad = s[(s < 0) | (s > aug.max_level)]
  if bad.size:
    raise ValueError(f"noise_level must lie in [0, {aug.max_level}] (max_noise_level), got "
                     f"{sorted(set(bad.tolist()))}.")
  return s.astype(np.int32)


def noise(rng, index, shape):
  """eps [B, *shape] of images `index` [B]: N(0, I) from fold_in(fold_in(rng, b), LOW_RES_NOISE)."""
  return driver.per_sample_normal(sample_keys(rng, index), tuple(shape), LOW_RES_NOISE)


def noise_program(shape, on_trace):
  """fn(rng, index [B]) -> eps [B, *shape], the noise `noised_map_program` adds."""
  def fn(rng, index):
    on_trace("low_res_noise")
    return noise(rng, index, shape)
  return jax.jit(fn)


def noised_map_program(latent_hw, schedule, on_trace):
  """fn(low_res float [B, h, w, C] in [-1, 1], rng, index [B], s int32 [B]) -> c [B, h, w, C]:
  q_sample(schedule, x_low on the latent grid, s, eps) (diffusers' low_res_scheduler.add_noise).
  s is traced, so other noise levels do not recompile."""
  def fn(low_res, rng, index, s):
    on_trace("noised_concat_map")
    x = concat.to_latent_grid(low_res, tuple(latent_hw))
    return diffusion.q_sample(schedule, x, s, noise(rng, index, x.shape[1:]))
  return jax.jit(fn)
