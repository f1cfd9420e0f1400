"""Shared kit of the ablation scripts: MNIST splits, the digit-classifier judge, sample-quality
scores beside their real-vs-real floor, short training runs, and the markdown/plot writers.

Sample quality (PAPERS.md sec. 8, "shared evaluation kit"):
  * class accuracy: the in-project digit classifier's accuracy on samples drawn for a label;
  * FD: Frechet distance between the classifier's 128-d penultimate features of the samples and of
    the held-out split (only comparable within this project, not to Inception FID);
  * precision / recall (Kynkaanniemi et al. 2019, k = 3) against the held-out features;
  * diversity: mean pairwise feature distance within each requested class, averaged over classes.
The floor is the same scores for N real train-split images (a seeded subset, N = the sample count)
against the held-out split: no generator can be expected to beat it at that N.
"""

import argparse
import json
import os
import time

import jax
import numpy as np

from ldm_jax import data as data_lib
from ldm_jax.metrics import classifier
from ldm_jax.metrics import frechet
from ldm_jax.metrics import precision_recall as pr_lib

SCALES = ("tiny", "cpu")
HELD_OUT, TRAIN = "test", "train"
_SPLITS = {}


def parse_args(argv, description, **extra):
  """Common flags (--scale, --out, --workdir, --seed, --classifier) plus `extra`:
  name -> (default, help)."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--scale", default="cpu", choices=SCALES, help="tiny: seconds (tests); cpu: minutes.")
  p.add_argument("--out", default="experiments/results", help="Where <name>.md and <name>.png go.")
  p.add_argument("--workdir", default="workdirs/ablations", help="Scratch dir of trained runs.")
  p.add_argument("--seed", type=int, default=0, help="Seed of sampling and training.")
  p.add_argument("--classifier", default="", help="Digit classifier msgpack (trained if missing).")
  for name, (default, help_) in extra.items():
    p.add_argument(f"--{name}", default=default, type=type(default), help=help_)
  return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Data and the judge.


def split(name):
  """(uint8 images [N, 32, 32, 1], int32 labels [N]) of a split of the embedded MNIST."""
  if name not in _SPLITS:
    it = data_lib.create_iterator(
        {"name": "mnist_embedded", "split": name, "image_size": 32, "channels": 1},
        global_batch_size=1000, seed=0, num_epochs=1, drop_remainder=False, num_devices=1,
        process_index=0, process_count=1)
    batches = list(it)
    it.close()
    _SPLITS[name] = (np.concatenate([b["image"] for b in batches]),
                     np.concatenate([b["label"] for b in batches]).astype(np.int32))
  return _SPLITS[name]


class Judge:
  """The classifier and the held-out features every score is measured against."""

  def __init__(self, params):
    self.params = params
    x, self.real_labels = split(HELD_OUT)
    self.real_features = self.features(x)
    self.real_stats = frechet.stats_from_features(self.real_features)
    self._floors = {}

  def features(self, images_uint8):
    return classifier.batched_features(self.params, classifier.preprocess(images_uint8))

  def predict(self, images_uint8):
    x = classifier.preprocess(images_uint8)
    return np.concatenate([np.argmax(np.asarray(classifier.logits(self.params, x[i:i + 1000])), -1)
                           for i in range(0, x.shape[0], 1000)])

  def scores(self, images_uint8, labels):
    """{"acc", "fd", "precision", "recall", "diversity"} of images [N, 32, 32, 1] drawn for labels [N]."""
    labels = np.asarray(labels)
    feats = self.features(images_uint8)
    fd = frechet.frechet_distance_from_stats(frechet.stats_from_features(feats), self.real_stats)
    k = min(pr_lib.DEFAULT_K, feats.shape[0] - 1)
    precision, recall = pr_lib.precision_recall(self.real_features, feats, k=k)
    return {"acc": float(np.mean(self.predict(images_uint8) == labels)), "fd": fd,
            "precision": precision, "recall": recall, "diversity": diversity(feats, labels)}

  def floor(self, n, seed=0):
    """`scores` of n real train-split images (a seeded, class-balanced-in-expectation subset)."""
    if n not in self._floors:
      x, y = split(TRAIN)
      idx = np.random.default_rng(seed).choice(x.shape[0], size=min(n, x.shape[0]), replace=False)
      self._floors[n] = self.scores(x[idx], y[idx])
    return self._floors[n]


def diversity(features, labels):
  """Mean pairwise Euclidean feature distance within each class, averaged over classes."""
  per_class = []
  for c in np.unique(labels):
    f = np.asarray(features[labels == c], np.float64)
    if f.shape[0] < 2:
      continue
    d = np.sqrt(np.maximum(((f[:, None, :] - f[None, :, :]) ** 2).sum(-1), 0.0))
    per_class.append(d.sum() / (f.shape[0] * (f.shape[0] - 1)))
  return float(np.mean(per_class)) if per_class else float("nan")


def load_judge(path, workdir, steps=600):
  """Judge from the classifier at `path`; if empty or missing, one trained (and saved under workdir)."""
  if not path:
    path = os.path.join(workdir, "classifier.msgpack")
  if os.path.exists(path):
    return Judge(classifier.load_params(path)), path
  x, y = split(TRAIN)
  params = classifier.train_classifier(x, y, steps=steps, seed=0)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  classifier.save_params(path, params)
  return Judge(params), path


# ---------------------------------------------------------------------------------------------
# Sampling.


def load_pipeline(ldm_workdir, use_ema=True, **kwargs):
  """LatentDiffusionPipeline.from_workdir of an LDM run (EMA weights by default)."""
  from ldm_jax.pipeline import LatentDiffusionPipeline  # pylint: disable=import-outside-toplevel
  return LatentDiffusionPipeline.from_workdir(ldm_workdir, use_ema=use_ema, **kwargs)


def class_labels(per_class, num_classes=10):
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
  the timestep grid `spacing`. Same initial noise as `pipe.sample(key(seed), ...)`; one jitted
  program per (method, num_steps, spacing). Returns (uint8 images, labels, seconds)."""
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


# ---------------------------------------------------------------------------------------------
# Short training runs.


def apply_overrides(config, overrides):
  """Sets dotted keys ("train.num_steps") of a locked ml_collections config: misspelt keys fail,
  except keys marked new with a leading "+" ("+model.num_embeddings"), which are added."""
  for key, value in overrides.items():
    new = key.startswith("+")
    node = config
    *path, last = key.lstrip("+").split(".")
    for part in path:
      node = getattr(node, part)
    if new:
      with node.unlocked():
        setattr(node, last, value)
      continue
    if not hasattr(node, last):
      raise ValueError(f"Unknown config key {key!r}.")
    setattr(node, last, value)
  return config


def train_run(get_config, workdir, overrides):
  """Trains (or resumes, or reuses) a stage in `workdir` with `run.train`; returns its summary
  (eval.json) plus "seconds" (wall time of this call) and "config" (the overrides)."""
  from ldm_jax.stages import run  # pylint: disable=import-outside-toplevel
  config = apply_overrides(get_config(), overrides)
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


def tiny_autoencoder_overrides(f=4, z_channels=3):
  """A very small KL autoencoder with downsampling factor f (a power of 2), no GAN, no attention."""
  levels = int(np.log2(f)) + 1
  return {"model.block_out_channels": (8,) * levels, "model.layers_per_block": 1,
          "model.z_channels": z_channels, "model.norm_groups": 4, "model.mid_attention": False,
          "disc.base_channels": 8, "disc.num_layers": 1, "loss.disc_start": 10 ** 9}


def tiny_unet_overrides():
  """A one-level UNet without attention (compiles fastest; for tests)."""
  return {"model.block_out_channels": (16,), "model.layers_per_block": 1,
          "model.down_block_types": ("DownBlock2D",), "model.up_block_types": ("UpBlock2D",),
          "model.mid_block_type": None, "model.norm_num_groups": 8, "model.attention_head_dim": 8}


def run_overrides(steps, batch, seed=0, lr=None, decay_steps=None):
  """Length, batch, seed and learning-rate schedule of a short run (cosine decay over decay_steps,
  default `steps`: give the final step count when a run is resumed in stages)."""
  decay_steps = decay_steps or steps
  o = {"train.num_steps": steps, "train.global_batch_size": batch, "train.save_every": max(steps, 1),
       "train.log_every": max(1, min(50, steps)), "optim.decay_steps": max(decay_steps, 1),
       "optim.warmup_steps": min(100, max(decay_steps // 10, 0)), "seed": seed,
       "train.image_every": 0}  # no preview grids: the scripts evaluate with their own samples
  if lr is not None:
    o["optim.learning_rate"] = lr
  return o


# ---------------------------------------------------------------------------------------------
# Reports.


def fmt(v, digits=3):
  if v is None:
    return "n/a"
  if isinstance(v, (float, np.floating)):
    return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
  return str(v)


def write_report(out_dir, name, *, title, claim, setup, header, rows, verdict, notes=()):
  """Writes <out_dir>/<name>.md: the claim tested, the setup (seeds, wall time), the table, whether
  this reproduction agrees, and notes. rows: lists of cells (floats are formatted)."""
  os.makedirs(out_dir, exist_ok=True)
  lines = [f"# {title}", "", f"**Paper claim tested.** {claim}", "", "**Setup.**", ""]
  lines += [f"- {s}" for s in setup]
  lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
  lines += ["", f"**Does this reproduction agree?** {verdict}", ""]
  if notes:
    lines += ["**Notes.**", ""] + [f"- {n}" for n in notes] + [""]
  path = os.path.join(out_dir, f"{name}.md")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return path


def figure(ncols=1, width=5.0, height=3.6):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
  return plt, fig, list(axes[0])


def save_figure(plt, fig, out_dir, name):
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"{name}.png")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def floor_line(floor, n):
  return (f"Real-vs-real floor (N = {n} train-split images vs the held-out split): "
          f"acc {floor['acc']:.3f}, FD {floor['fd']:.3f}, precision {floor['precision']:.3f}, "
          f"recall {floor['recall']:.3f}, diversity {floor['diversity']:.3f}.")


def devices_line():
  return f"{jax.device_count()} x {jax.devices()[0].device_kind} ({os.cpu_count()} CPU cores)"


# ---------------------------------------------------------------------------------------------
# The runs the training ablations share.

# Per scale: autoencoder / LDM steps and batch, samples per class and sampler steps for evaluation,
# held-out images of the likelihood evaluation.
TRAIN_SCALES = {
    "tiny": dict(ae_steps=2, ldm_steps=2, batch=8, per_class=2, sample_steps=3, lr=1e-3,
                 bpd_images=4),
    "cpu": dict(ae_steps=600, ldm_steps=1200, batch=64, per_class=50, sample_steps=20, lr=1e-3,
                bpd_images=100),
}


def unet_overrides(scale):
  """The LDM's UNet per scale: tiny as `tiny_unet_overrides`; cpu: (32, 64), attention only in
  the mid block."""
  o = tiny_unet_overrides()
  if scale == "cpu":
    o.update({"model.block_out_channels": (32, 64), "model.norm_num_groups": 16,
              "model.down_block_types": ("DownBlock2D", "DownBlock2D"),
              "model.up_block_types": ("UpBlock2D", "UpBlock2D"), "model.mid_block_type": "UNetMidBlock2D"})
  return o


# The flags of the ablations that train LDMs on one autoencoder's latents (3, 5, 7).
LATENT_ABLATION_FLAGS = {
    "ae": ("", "Autoencoder workdir (default: the shared KL f4 c3 one, trained if missing)."),
    "variants": ("", "Comma-separated variant indices (default: all)."),
}


def latent_ablation_setup(args, name):
  """The setup of an ablation that trains LDMs on one autoencoder's latents (3, 5, 7): returns
  (scale dict, the root of its runs, judge, classifier path, autoencoder workdir). Without --ae,
  the shared KL f = 4, c = 3 autoencoder of the scale is trained (or reused)."""
  sc = TRAIN_SCALES[args.scale]
  root = os.path.join(args.workdir, name, args.scale)
  judge, clf_path = load_judge(args.classifier, args.workdir)
  ae_dir = args.ae or autoencoder_dir(args.workdir, args.scale, "KL", 4, 3)
  if not args.ae:
    autoencoder_run(ae_dir, args.scale, seed=args.seed)
  return sc, root, judge, clf_path, ae_dir


def pick_variants(spec, variants, always=()):
  """The variants whose indices are listed in `spec` ("0,2"; all when empty) plus those in
  `always`, in index order. variants: tuples whose first item is the label."""
  if not spec:
    return list(variants)
  valid = "; ".join(f"{i}: {v[0]}" for i, v in enumerate(variants))
  try:
    chosen = {int(i) for i in spec.split(",")}
  except ValueError:
    raise ValueError(f"--variants={spec!r} is not a comma-separated list of indices; valid "
                     f"indices: {valid}.") from None
  bad = sorted(i for i in chosen if not 0 <= i < len(variants))
  if bad:
    raise ValueError(f"--variants={spec!r}: no variant {bad}; valid indices: {valid}.")
  return [variants[i] for i in sorted(chosen | set(always))]


def int_list(spec, flag):
  """Positive ints of a comma-separated flag value ("300,600"), increasing."""
  try:
    values = tuple(int(v) for v in spec.split(","))
  except ValueError:
    raise ValueError(f"--{flag}={spec!r} is not a comma-separated list of integers.") from None
  if any(v <= 0 for v in values) or list(values) != sorted(set(values)):
    raise ValueError(f"--{flag}={spec!r}: the values must be positive and increasing.")
  return values


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
  o = {**tiny_autoencoder_overrides(f, z_channels),
       "model.block_out_channels": tuple(width[min(i, len(width) - 1)] for i in range(levels)),
       **run_overrides(sc["ae_steps"], sc["batch"], seed)}
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
  o = {**unet_overrides(scale), **run_overrides(steps or sc["ldm_steps"], sc["batch"], seed, sc["lr"],
                                                decay_steps),
       "first_stage.workdir": os.path.abspath(ae_workdir), "train.ema_decay": 0.99}
  o.update(extra or {})
  return train_run(mnist_ldm.get_config, workdir, o)


def latent_bits_per_dim(ldm_workdir, num_images, *, seed=0, timesteps_per_chunk=10):
  """Mean variational bound (bits per latent dimension, `LatentDiffusionPipeline.
  latent_bits_per_dim`) of an LDM run (raw weights) on the first num_images held-out images and
  their labels, and its standard error over the images."""
  x, y = split(HELD_OUT)
  pipe = load_pipeline(ldm_workdir, use_ema=False, max_batch=min(num_images, 100))
  bpd = pipe.latent_bits_per_dim(jax.random.key(seed), x[:num_images], y[:num_images],
                                 timesteps_per_chunk=timesteps_per_chunk).total_bpd
  return float(np.mean(bpd)), float(np.std(bpd) / np.sqrt(len(bpd)))


def evaluate_ldm(judge, ldm_workdir, scale, *, seed=0, method="ddim", num_steps=None,
                 guidance_scale=1.0, per_class=None):
  """Scores of per_class samples per digit of an LDM run (raw, not EMA, weights: short runs),
  plus "sample_seconds" and "images"."""
  sc = TRAIN_SCALES[scale]
  pipe = load_pipeline(ldm_workdir, use_ema=False, max_batch=500)
  images, labels, secs = sample_classes(pipe, seed, per_class or sc["per_class"], method=method,
                                        num_steps=num_steps or sc["sample_steps"],
                                        guidance_scale=guidance_scale)
  return {**judge.scores(images, labels), "sample_seconds": secs, "images": images}
