"""Short training runs of the ablations: train, resume or reuse a stage in a workdir, and the
autoencoder and class-conditional LDM runs of each scale that the training ablations share."""

import json
import os
import time

import jax
import numpy as np

from experiments.ablations import config_overrides
from experiments.ablations import digit_judge

# Per scale: autoencoder / LDM steps and batch, samples per class and sampler steps for evaluation,
# held-out images of the likelihood evaluation.
TRAIN_SCALES = {
    "tiny": dict(ae_steps=2, ldm_steps=2, batch=8, per_class=2, sample_steps=3, lr=1e-3,
                 bpd_images=4),
    "cpu": dict(ae_steps=600, ldm_steps=1200, batch=64, per_class=50, sample_steps=20, lr=1e-3,
                bpd_images=100),
}


def train_run(get_config, workdir, overrides):
  """Trains (or resumes, or reuses) a stage in `workdir` with `run.train`; returns its summary
  (eval.json) plus "seconds" (the wall time of its training: this call's, or the one recorded by a
  reused run, None if it recorded none) and "reused"."""
  from ldm_jax.stages import run  # pylint: disable=import-outside-toplevel
  config = config_overrides.apply_overrides(get_config(), overrides)
  eval_path = os.path.join(workdir, "eval.json")
  if os.path.exists(eval_path):
    with open(eval_path, encoding="utf-8") as f:
      summary = json.load(f)
    if summary.get("steps", 0) > config.train.num_steps:
      raise ValueError(f"{workdir} is already trained to {summary['steps']} steps, past the "
                       f"{config.train.num_steps} asked for; remove it (or point --workdir "
                       "elsewhere) to train it again.")
    if summary.get("steps") == config.train.num_steps:  # reused: the wall time of its training
      # (None for runs trained before eval.json recorded it; reports print "n/a")
      return {**summary, "seconds": summary.get("train_seconds"), "reused": True}
  t0 = time.time()
  summary = run.train(config, workdir)
  seconds = time.time() - t0
  if jax.process_index() == 0:
    with open(eval_path, "w", encoding="utf-8") as f:
      json.dump({**summary, "train_seconds": seconds}, f, indent=1, default=float)
  return {**summary, "seconds": seconds, "reused": False}


def autoencoder_dir(workdir, scale, kind, f, c):
  """Where the ablations keep the autoencoder (kind, f, c) of a scale: shared by all scripts (the
  f = 4 one is what ablations 3, 5 and 7 train on, ablation 1 reuses ablation 2's)."""
  return os.path.join(workdir, "autoencoders", scale, f"{kind}_f{f}_c{c}")


def autoencoder_run(workdir, scale, *, f=4, z_channels=3, kind="KL", seed=0, extra=None):
  """Trains (or reuses) a KL / VQ autoencoder with factor f and z_channels in workdir."""
  from experiments.configs import mnist_autoencoder  # pylint: disable=import-outside-toplevel
  sc = TRAIN_SCALES[scale]
  levels = int(round(np.log2(f))) + 1
  width = (8,) if scale == "tiny" else (16, 32, 64, 64, 64)
  o = {**config_overrides.tiny_autoencoder_overrides(f, z_channels),
       "model.block_out_channels": tuple(width[min(i, len(width) - 1)] for i in range(levels)),
       **config_overrides.run_overrides(sc["ae_steps"], sc["batch"], seed)}
  if scale == "cpu":
    o.update({"model.norm_groups": 8, "loss.disc_start": 10 ** 9})
  if kind == "VQ":
    o.update({"model.preset": "VQModel", "+model.num_embeddings": 256 if scale == "cpu" else 16})
  elif kind != "KL":
    raise ValueError(f"Unknown autoencoder kind {kind!r}; valid choices: KL, VQ.")
  o.update(extra or {})
  return train_run(mnist_autoencoder.get_config, workdir, o)


def ldm_run(workdir, ae_workdir, scale, *, seed=0, steps=None, decay_steps=None, extra=None):
  """Trains (or resumes / reuses) a class-conditional LDM on ae_workdir's latents in workdir."""
  from experiments.configs import mnist_ldm  # pylint: disable=import-outside-toplevel
  sc = TRAIN_SCALES[scale]
  o = {**config_overrides.unet_overrides(scale),
       **config_overrides.run_overrides(steps or sc["ldm_steps"], sc["batch"], seed, sc["lr"],
                                        decay_steps),
       "first_stage.workdir": os.path.abspath(ae_workdir), "train.ema_decay": 0.99}
  o.update(extra or {})
  return train_run(mnist_ldm.get_config, workdir, o)


def latent_ablation_setup(args, name):
  """The setup of an ablation that trains LDMs on one autoencoder's latents (3, 5, 7; flags
  `cli.LATENT_ABLATION_FLAGS`): returns (scale dict, the root of its runs, judge, classifier path,
  autoencoder workdir). Without --ae, the shared KL f = 4, c = 3 autoencoder of the scale is
  trained (or reused)."""
  sc = TRAIN_SCALES[args.scale]
  root = os.path.join(args.workdir, name, args.scale)
  judge, clf_path = digit_judge.load_judge(args.classifier, args.workdir)
  ae_dir = args.ae or autoencoder_dir(args.workdir, args.scale, "KL", 4, 3)
  if not args.ae:
    autoencoder_run(ae_dir, args.scale, seed=args.seed)
  return sc, root, judge, clf_path, ae_dir
