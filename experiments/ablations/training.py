"""Short training runs of the ablations: train, resume or reuse a stage in a workdir, and the
autoencoder and class-conditional LDM runs of each scale that the training ablations share."""

import json
import os
import time

import jax
import numpy as np

from experiments import provenance
from experiments.ablations import config_overrides
from experiments.ablations import digit_judge

# Per scale: autoencoder steps and peak learning rate (ae_lr: at cpu scale 3.3x the config's
# 4.5e-4, measured: KL f4 c3 at 600 steps 26.6 dB held-out PSNR vs 23.9 dB), LDM steps and batch,
# samples per class and sampler steps for evaluation (N = 10 per_class), held-out images of the
# likelihood evaluation, the LDM's EMA decay and whether the training ablations evaluate its EMA
# weights, and how often an LDM run checkpoints (so a run interrupted in one session resumes in the
# next; 0: at the end only). cpu: the budget of issue 18 (EMA weights, N = 1,000; the
# class-conditional baseline should reach >= 90% class accuracy at w = 2, which every report
# checks: seed_cells.budget_check).
TRAIN_SCALES = {
    "tiny": dict(ae_steps=2, ae_lr=4.5e-4, ldm_steps=2, batch=8, per_class=2, sample_steps=3,
                 lr=1e-3, bpd_images=4, ema_decay=0.99, use_ema=True, save_every=0),
    "cpu": dict(ae_steps=600, ae_lr=1.5e-3, ldm_steps=2000, batch=64, per_class=100,
                sample_steps=20, lr=1e-3, bpd_images=100, ema_decay=0.999, use_ema=True,
                save_every=500),
}
BUDGET_W, BUDGET_ACC = 2.0, 0.90  # the budget criterion: baseline class accuracy at guidance w


def git_commit():
  """The checkout's short commit, with "+dirty" for local changes to tracked files
  (experiments/provenance.py)."""
  return provenance.git_commit()


def train_run(get_config, workdir, overrides):
  """Trains (or resumes, or reuses) a stage in `workdir` with `run.train`; returns its summary
  (eval.json, which also records "train_seconds" and the git "commit" of the code that trained it)
  plus "seconds" (the wall time of its training, over every stretch of a resumed run: this call's
  plus the earlier ones, a killed one up to its last checkpoint (STRETCH), or the one recorded by
  a reused run; None if a run recorded none) and "reused"."""
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
  # A run resumed from a shorter one (eval.json below the steps): its wall time adds to the earlier
  # stretches' (unknown if they recorded none), and so does a stretch killed before its end.
  earlier = summary.get("train_seconds") if os.path.exists(eval_path) else 0.0
  earlier = _add_killed_stretch(workdir, earlier)
  t0 = time.time()
  _write_json(os.path.join(workdir, STRETCH), {"start": t0, "earlier": earlier})
  summary = run.train(config, workdir)
  seconds = None if earlier is None else earlier + time.time() - t0
  summary = {**summary, "train_seconds": seconds, "commit": git_commit()}
  _write_json(eval_path, summary)
  if jax.process_index() == 0:
    os.remove(os.path.join(workdir, STRETCH))
  return {**summary, "seconds": summary["train_seconds"], "reused": False}


STRETCH = "train_stretch.json"  # {"start": time, "earlier": seconds}: a stretch under way


def _write_json(path, obj):
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=1, default=float)


def _add_killed_stretch(workdir, earlier):
  """`earlier` plus the seconds of a stretch that was killed before it ended (its STRETCH file is
  still there): from its start to its last checkpoint, the work the resumed run keeps (0 when it
  saved none). A killed stretch's own `earlier` wins: it already counted the stretches before it."""
  path = os.path.join(workdir, STRETCH)
  if not os.path.exists(path):
    return earlier
  with open(path, encoding="utf-8") as f:
    killed = json.load(f)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  saved = [e.stat().st_mtime for e in os.scandir(ckpt_dir)] if os.path.isdir(ckpt_dir) else []
  if killed["earlier"] is None:
    return None
  return killed["earlier"] + max(0.0, max(saved, default=killed["start"]) - killed["start"])


def autoencoder_dir(workdir, scale, kind, f, c, seed):
  """Where the ablations keep the autoencoder (kind, f, c) of a scale trained with `seed`: shared
  by all scripts (the f = 4 one of --seed is what ablations 3, 5 and 7 train on, ablation 1 reuses
  ablation 2's; ablation 2 with --seeds trains one per seed)."""
  return os.path.join(workdir, "autoencoders", scale, f"seed{seed}", f"{kind}_f{f}_c{c}")


def autoencoder_run(workdir, scale, *, f=4, z_channels=3, kind="KL", seed=0, steps=None,
                    extra=None):
  """Trains (or reuses) a KL / VQ autoencoder with factor f and z_channels in workdir, for the
  scale's ae_steps (or `steps`) at its peak learning rate ae_lr (cosine decay over the run)."""
  from experiments.configs import mnist_autoencoder  # pylint: disable=import-outside-toplevel
  sc = TRAIN_SCALES[scale]
  levels = int(round(np.log2(f))) + 1
  width = (8,) if scale == "tiny" else (16, 32, 64, 64, 64)
  o = {**config_overrides.tiny_autoencoder_overrides(f, z_channels),
       "model.block_out_channels": tuple(width[min(i, len(width) - 1)] for i in range(levels)),
       **config_overrides.run_overrides(steps or sc["ae_steps"], sc["batch"], seed, lr=sc["ae_lr"])}
  if scale == "cpu":
    o.update({"model.norm_groups": 8, "loss.disc_start": 10 ** 9})
  if kind == "VQ":
    o.update({"model.preset": "VQModel", "+model.num_embeddings": 256 if scale == "cpu" else 16})
  elif kind != "KL":
    raise ValueError(f"Unknown autoencoder kind {kind!r}; valid choices: KL, VQ.")
  o.update(extra or {})
  return train_run(mnist_autoencoder.get_config, workdir, o)


def ldm_run(workdir, ae_workdir, scale, *, seed=0, steps=None, decay_steps=None, extra=None,
            get_config=None):
  """Trains (or resumes / reuses) an LDM on ae_workdir's latents in workdir: the scale's UNet,
  run length and EMA on the config of `get_config` (default: mnist_ldm's, class-conditional;
  e.g. mnist_semantic's for semantic synthesis)."""
  from experiments.configs import mnist_ldm  # pylint: disable=import-outside-toplevel
  sc = TRAIN_SCALES[scale]
  o = {**config_overrides.unet_overrides(scale),
       **config_overrides.run_overrides(steps or sc["ldm_steps"], sc["batch"], seed, sc["lr"],
                                        decay_steps),
       "first_stage.workdir": os.path.abspath(ae_workdir), "train.ema_decay": sc["ema_decay"]}
  if sc["save_every"]:
    o["train.save_every"] = min(sc["save_every"], o["train.num_steps"])
  o.update(extra or {})
  return train_run(get_config or mnist_ldm.get_config, workdir, o)


def check_first_stage(workdir, ae_dir, what="LDM"):
  """A finished LDM run in workdir must have been trained on ae_dir: the ablations' run dirs are
  keyed by scale and seed (and tag), not by --ae, and a reused run on another autoencoder would be
  scored silently. what: the run's kind, for the error message ("LDM-SR", "inpainting LDM")."""
  path = os.path.join(workdir, "export", "config.json")
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    trained_on = json.load(f)["first_stage"]["workdir"]
  if os.path.realpath(trained_on) != os.path.realpath(ae_dir):
    raise ValueError(f"{workdir} was trained on the autoencoder {trained_on!r}, not on "
                     f"{os.path.abspath(ae_dir)!r} (--ae); remove it, or point --workdir "
                     f"elsewhere, to train an {what} on this one.")


def latent_ablation_setup(args, name):
  """The setup of an ablation that trains LDMs on one autoencoder's latents (3, 5, 7; flags
  `cli.LATENT_ABLATION_FLAGS`): returns (scale dict, the root of its runs, judge, classifier path,
  autoencoder workdir). Without --ae, the shared KL f = 4, c = 3 autoencoder of the scale is
  trained (or reused)."""
  sc = TRAIN_SCALES[args.scale]
  root = os.path.join(args.workdir, name, args.scale)
  judge, clf_path = digit_judge.load_judge(args.classifier, args.workdir)
  ae_dir = args.ae or autoencoder_dir(args.workdir, args.scale, "KL", 4, 3, args.seed)
  if not args.ae:
    autoencoder_run(ae_dir, args.scale, seed=args.seed)
  return sc, root, judge, clf_path, ae_dir
