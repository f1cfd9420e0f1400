"""Scores of a trained LDM run of the training ablations: the judge's sample-quality scores of its
class samples, and the variational bound on its latents' likelihood."""

import jax
import numpy as np

from experiments.ablations import digit_judge
from experiments.ablations import sampling
from experiments.ablations import training


def evaluate_ldm(judge, ldm_workdir, scale, *, seed=0, method="ddim", num_steps=None,
                 guidance_scale=1.0, per_class=None, use_ema=False):
  """Scores of per_class samples per digit of an LDM run (its EMA weights if use_ema, else the
  raw ones), plus "sample_seconds" and "images"."""
  sc = training.TRAIN_SCALES[scale]
  pipe = sampling.load_pipeline(ldm_workdir, use_ema=use_ema, max_batch=500)
  images, labels, secs = sampling.sample_classes(pipe, seed, per_class or sc["per_class"],
                                                 method=method,
                                                 num_steps=num_steps or sc["sample_steps"],
                                                 guidance_scale=guidance_scale)
  return {**judge.scores(images, labels), "sample_seconds": secs, "images": images}


def latent_bits_per_dim(ldm_workdir, num_images, *, seed=0, timesteps_per_chunk=10, use_ema=False):
  """Mean variational bound (bits per latent dimension, `LatentDiffusionPipeline.
  latent_bits_per_dim`) of an LDM run (EMA weights if use_ema, else raw) on the first num_images
  held-out images and their labels, and its standard error over the images."""
  x, y = digit_judge.split(digit_judge.HELD_OUT)
  pipe = sampling.load_pipeline(ldm_workdir, use_ema=use_ema, max_batch=min(num_images, 100))
  bpd = pipe.latent_bits_per_dim(jax.random.key(seed), x[:num_images], y[:num_images],
                                 timesteps_per_chunk=timesteps_per_chunk).total_bpd
  return float(np.mean(bpd)), float(np.std(bpd) / np.sqrt(len(bpd)))
