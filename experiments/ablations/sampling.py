"""Class-conditional samples of a trained MNIST LDM for the ablations: every digit, per_class
times, from one seed; and the loading of an LDM run's pipeline.

`load_image_ldm` loads and checks the image LDM of a training-free row (the --ldm flag of ablations
8 and 9). `sample_classes` is `LatentDiffusionPipeline.sample` (classifier-free guidance at any w).
`sample_conditional` is the unguided case (w = 1) at half the model evaluations: it runs the
conditional model alone through `samplers.sample`, which the pipeline's guided program cannot do
without a second compiled program, and it takes the timestep grid as an argument. It starts from the
pipeline's own initial noise and decodes with the pipeline.
"""

import json
import os
import time

import jax
import numpy as np


def load_pipeline(ldm_workdir, use_ema=True, **kwargs):
  """LatentDiffusionPipeline.from_workdir of an LDM run (EMA weights by default)."""
  from ldm_jax.pipeline import LatentDiffusionPipeline  # pylint: disable=import-outside-toplevel
  return LatentDiffusionPipeline.from_workdir(ldm_workdir, use_ema=use_ema, **kwargs)


def load_image_ldm(workdir, image_shape, *, rows, need="needs"):
  """(pipeline (EMA weights), its export config's "diffusion" dict) of the --ldm run, which must
  be a finished class-conditional or unconditional LDM of images of image_shape (H, W, C); else a
  ValueError naming the flag. rows, need: the caller's rows in the errors' words ("the SDEdit row",
  "needs"; "the RePaint rows", "need")."""
  config_path = os.path.join(workdir, "export", "config.json")
  if not os.path.isdir(workdir):
    raise ValueError(f"--ldm={workdir!r} does not exist; give the workdir of a trained "
                     "class-conditional LDM run (python -m experiments.mnist_end_to_end), or "
                     f"--ldm= to skip {rows}.")
  if not os.path.exists(config_path):
    raise ValueError(f"--ldm={workdir!r} has no export/config.json: it is not a finished LDM run "
                     f"(train it first, or give --ldm= to skip {rows}).")
  with open(config_path, encoding="utf-8") as f:
    diffusion = json.load(f)["diffusion"]
  kind = diffusion["conditioning"]
  if kind not in ("class", "none"):
    raise ValueError(f"--ldm={workdir!r} is a {kind!r}-conditioned run; {rows} {need} a "
                     "class-conditional or unconditional image LDM (conditioning 'class' or "
                     "'none').")
  pipe = load_pipeline(workdir, use_ema=True, max_batch=500)
  if tuple(pipe.image_shape) != tuple(image_shape):
    raise ValueError(f"--ldm={workdir!r} makes {pipe.image_shape} images; {rows} {need} "
                     f"{tuple(image_shape)} (the MNIST originals).")
  return pipe, diffusion


def class_labels(per_class, num_classes=10):
  """int32 [num_classes per_class]: each label per_class times, in order."""
  return np.repeat(np.arange(num_classes), per_class).astype(np.int32)


def sample_classes(pipe, seed, per_class, **sample_kw):
  """(uint8 images [10 per_class, H, W, C], labels, seconds) from pipe.sample, one call for all
  labels (so the compiled program is reused). sample_kw: method, num_steps, guidance_scale, eta."""
  labels = class_labels(per_class)
  t0 = time.time()
  images = pipe.sample(jax.random.key(seed), labels.shape[0], labels=labels, **sample_kw)
  return images, labels, time.time() - t0


def sample_conditional(pipe, seed, per_class, *, method, num_steps, eta=0.0, spacing="leading"):
  """Like `sample_classes` with guidance w = 1, but calls the conditional model once per step (the
  pipeline's guided program also evaluates the unconditional half, which w = 1 discards) and takes
  the timestep grid `spacing`. Same initial noise as `pipe.sample(key(seed), ...)`; the step noise
  of stochastic methods comes from `samplers.sample`'s batch key, not the pipeline's per-sample
  keys. One jitted program per (method, num_steps, spacing). Returns (uint8 images, labels,
  seconds)."""
  from ldm_jax import samplers  # pylint: disable=import-outside-toplevel
  labels = class_labels(per_class)
  rng = jax.random.key(seed)
  t0 = time.time()
  noise = pipe.initial_noise(rng, labels.shape[0])

  def run(params, x_T, y):
    model_fn = lambda x, t: pipe.unet.apply({"params": params}, x, t, y=y)
    return samplers.sample(model_fn, pipe.schedule, x_T, rng, method=method, num_steps=num_steps,
                           eta=float(eta), prediction_type=pipe.prediction_type,
                           timestep_spacing=spacing)

  z = jax.jit(run)(pipe.unet_params, noise, labels)
  images = pipe.decode(np.asarray(z))
  return images, labels, time.time() - t0
