"""A jitted latent diffusion pipeline for notebooks and the CLI: load once, sample many times.

  from ldm_jax.pipeline import LatentDiffusionPipeline, image_grid
  pipe = LatentDiffusionPipeline.from_workdir("workdirs/mnist/ldm")
  grid = image_grid(pipe.sample(jax.random.key(0), 16, labels=3, guidance_scale=2.0), rows=2)

  sd = LatentDiffusionPipeline.from_pretrained("stable-diffusion-v1-5")   # a diffusers folder
  images = sd.sample(jax.random.key(0), 4, prompts="a photo of a cat", negative_prompts="blurry")

Files: latent_diffusion.py (the class), programs.py (jitted programs around `samplers.driver.run`
with a traced start step, inpainting and RePaint), conditioning.py (labels / context / concat map and guidance),
prompts.py (prompt validation and the text encoder program), checks.py (input validation),
loading.py (workdir and diffusers folders), low_res.py and noise_augmentation.py (upscale's
low-res input rule and the SD x4 upscaler's noised low-res conditioning), saving.py (diffusers
folders out), single_file.py (original SD 1.x / 2.x checkpoints),
scheduler_config.py (a diffusers scheduler config as timestep grid and default method),
images.py (conversions, masks, grids), persistent_cache.py, random_init.py (untrained
parameters for demos and tests).
"""

from ldm_jax.images import image_grid, to_float, to_uint8
from ldm_jax.pipeline.latent_diffusion import LatentDiffusionPipeline, slerp, start_for_noise
from ldm_jax.pipeline.persistent_cache import enable_persistent_cache
from ldm_jax.pipeline.random_init import random_params

__all__ = ["LatentDiffusionPipeline", "image_grid", "to_uint8", "to_float", "enable_persistent_cache",
           "slerp", "start_for_noise", "random_params"]
