r"""Command line of ldm_jax: train a stage, or sample a grid from a trained model.

  # train (the stage is config.stage; any key can be overridden):
  python -m ldm_jax.main --config=experiments/configs/mnist_autoencoder.py --workdir=workdirs/mnist_ae
  ldm-jax train --config=experiments/configs/mnist_autoencoder.py --workdir=workdirs/mnist_ae  # the same
  python -m ldm_jax.main --config=experiments/configs/mnist_ldm.py --workdir=workdirs/mnist_ldm \
      --config.first_stage.workdir=workdirs/mnist_ae
  # sample a PNG grid (one row per label):
  python -m ldm_jax.main sample --workdir=workdirs/mnist_ldm --out=samples.png \
      --labels=0,1,2,3,4,5,6,7,8,9 --per_label=8 --method=dpmpp_2m --num_steps=25 --guidance_scale=2
  # a text-conditioned run (experiments/configs/mnist_text.py): one row per prompt
  python -m ldm_jax.main sample --workdir=workdirs/mnist_text/ldm --prompts="3 left of 7;seven right of two"
  # your own images (README "Train on your own images"), and the resolved config without running:
  python -m ldm_jax.main --config=experiments/configs/mnist_autoencoder.py --workdir=workdirs/ae \
      --config.data.source=folder --config.data.data_dir=my_images --config.data.channels=3 \
      --config.model.in_channels=3 --config.model.out_channels=3 --print_config

Configs (every key has a one-line comment there; override any with --config.KEY=VALUE):
  experiments/configs/mnist_autoencoder.py   the first stage (KL autoencoder + PatchGAN)
  experiments/configs/mnist_ldm.py           the latent diffusion model on a trained first stage
  experiments/configs/paper_autoencoder.py:VARIANT, paper_ldm.py:VARIANT   the paper's models

Multi-process runs (TPU pods, SLURM / Open MPI clusters, or N processes started by hand): run the
same command in every process; `jax.distributed` is initialised from the config's `distributed`
section, LDM_JAX_* / JAX_* environment variables or the detected cluster before any device is
touched (`ldm_jax.launch`; README "Launching on pods and clusters"). On a CPU-only host a single
process simulates one XLA device per core (data parallelism over the cores), unless XLA_FLAGS
already says otherwise.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ldm_jax import cli_flags
from ldm_jax import launch

COMMANDS = ("train", "sample")

config_flags.DEFINE_config_file(
    "config", None, "train: experiment config file, experiments/configs/NAME.py[:VARIANT]; "
    "override any key with --config.KEY=VALUE.", lock_config=True)
flags.DEFINE_bool("print_config", False, "train: print the resolved config (the file and its "
                  "overrides) and exit without training or writing anything.")
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, export.")
flags.DEFINE_string("out", "samples.png", "sample: output PNG path.")
flags.DEFINE_string("labels", "", "sample: comma-separated class labels (one grid row each; "
                    "default: every class of a class-conditional model).")
flags.DEFINE_string("prompts", "", "sample: ';'-separated prompts of a text-conditioned model (one "
                    "grid row each; default: the run config's sample.prompts).")
flags.DEFINE_integer("per_label", 8, "sample: samples per label or prompt (or in total if "
                     "unconditional).")
flags.DEFINE_string("method", None, "sample: sampler method (default: the run config's sample.method).")
flags.DEFINE_integer("num_steps", None, "sample: sampler steps (default: the run config's).")
flags.DEFINE_float("guidance_scale", None, "sample: classifier-free guidance scale (default: the run config's).")
flags.DEFINE_integer("seed", 0, "sample: random seed.")
FLAGS = flags.FLAGS


def _train():
  if FLAGS.config is not None and FLAGS.print_config:
    print(FLAGS.config)
    return
  from ldm_jax.stages import run  # pylint: disable=import-outside-toplevel
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError("train needs --config=<experiments/configs/NAME.py> and --workdir=<dir>.")
  launch.start(FLAGS.config.get("distributed"))
  summary = run.train(FLAGS.config, FLAGS.workdir)
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    print({k: v for k, v in summary.items() if k != "final_metrics"})


def _sample():
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  import tqdm  # pylint: disable=import-outside-toplevel
  from ldm_jax.pipeline import LatentDiffusionPipeline, image_grid  # pylint: disable=import-outside-toplevel
  from ldm_jax.text.prompts import split_prompts  # pylint: disable=import-outside-toplevel
  if FLAGS.workdir is None:
    raise app.UsageError("sample needs --workdir=<latent diffusion run>.")
  launch.start()
  prompts = split_prompts(FLAGS.prompts)
  labels = _labels(FLAGS.labels)
  if prompts and labels:
    raise ValueError("give --labels (a class-conditional model) or --prompts (a text model), "
                     "not both.")
  pipe = LatentDiffusionPipeline.from_workdir(FLAGS.workdir)
  if pipe.inpainting_model:
    raise ValueError(f"{FLAGS.workdir} is a trained inpainting model (diffusion.conditioning="
                     f"'concat', {pipe.concat_degradation!r} masks): the sample command does not "
                     "run it; in Python: LatentDiffusionPipeline.from_workdir(...).inpaint(rng, "
                     f"images, mask) with uint8 images [N, {', '.join(map(str, pipe.image_shape))}] "
                     "and a binary mask (1 = fill).")
  if pipe.segmentation_model:
    raise ValueError(f"{FLAGS.workdir} is a trained semantic synthesis model (diffusion."
                     f"conditioning='concat', {pipe.concat_degradation!r} maps): the sample command "
                     "does not run it; in Python: LatentDiffusionPipeline.from_workdir(...)."
                     f"synthesize(rng, segmentation) with int class maps [N, "
                     f"{', '.join(map(str, pipe.image_shape[:2]))}].")
  if pipe.conditioning == "concat":
    raise ValueError(f"{FLAGS.workdir} is a super-resolution model (diffusion.conditioning="
                     f"'concat', {pipe.concat_degradation!r} inputs): the sample command does not "
                     "run it; in Python: LatentDiffusionPipeline.from_workdir(...).upscale(rng, "
                     f"low_res_images) with uint8 [N, {', '.join(map(str, pipe.low_res_shape))}].")
  if prompts and not pipe.text_conditioned:
    raise ValueError(f"--prompts={FLAGS.prompts!r}: {FLAGS.workdir} is not a text-conditioned "
                     f"model ({'give --labels' if pipe.num_classes else 'unconditional'}).")
  if pipe.text_conditioned:
    if labels:
      raise ValueError(f"--labels={FLAGS.labels!r}: {FLAGS.workdir} is a text-conditioned model; "
                       "give --prompts='3 left of 7;...' (';'-separated).")
    prompts = prompts or _run_prompts(FLAGS.workdir)
    if not prompts:
      raise ValueError("--prompts is empty and the run's config has no sample.prompts: give "
                       "--prompts='...;...' (';'-separated).")
  rows = []
  if prompts:  # one row per prompt
    conditions = [dict(prompts=p) for p in prompts]
  elif labels or pipe.num_classes:  # a row per class (default: every class)
    conditions = [dict(labels=[y] * FLAGS.per_label) for y in labels or range(pipe.num_classes)]
  else:  # one unconditional row
    conditions = [{}]
  for i, cond in enumerate(tqdm.tqdm(conditions, unit="row")):
    rows.append(pipe.sample(jax.random.key(FLAGS.seed + i), FLAGS.per_label, **cond,
                            method=FLAGS.method, num_steps=FLAGS.num_steps,
                            guidance_scale=FLAGS.guidance_scale))
  grid = image_grid(np.concatenate(rows), rows=len(rows))
  Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid).save(FLAGS.out)
  print(f"wrote {FLAGS.out} ({grid.shape[1]}x{grid.shape[0]})")


def _labels(text):
  try:
    return [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise ValueError(f"--labels={text!r}: expected comma-separated integers, e.g. 0,1,2.") from None


def _run_prompts(workdir):
  """The run config's sample.prompts (config.json only: the params are loaded already)."""
  import json  # pylint: disable=import-outside-toplevel
  from ldm_jax.text.prompts import split_prompts  # pylint: disable=import-outside-toplevel
  from ldm_jax.stages import export  # pylint: disable=import-outside-toplevel
  with open(os.path.join(workdir, export.EXPORT_DIR, "config.json"), encoding="utf-8") as f:
    section = json.load(f).get("sample") or {}
  return split_prompts(section.get("prompts", ""))


def main(argv):
  command = argv[1] if len(argv) > 1 else "train"
  if command not in COMMANDS or len(argv) > 2:
    raise app.UsageError(f"Unknown command {' '.join(argv[1:])!r}; valid commands: {', '.join(COMMANDS)}.")
  if not FLAGS["verbosity"].present:  # library INFO lines (orbax, jax) only with --verbosity=0
    logging.set_verbosity(logging.WARNING)
  try:
    _train() if command == "train" else _sample()
  except ValueError as e:  # the project's checks of configs and inputs: one line, no traceback
    sys.exit(f"ldm_jax.main {command}: error: {e}")


def console_main():
  """The `ldm-jax` console script (pyproject.toml): the command line of `python -m ldm_jax.main`.

  `python -m` puts the working directory first on sys.path, and config files import their base
  configs from it (`from experiments.configs import mnist_ldm`); the script does the same.
  """
  sys.path.insert(0, os.getcwd())
  sys.modules["__main__"].__doc__ = __doc__  # absl's --help prints __main__'s docstring
  for flag in FLAGS.get_key_flags_for_module(__name__):  # and the flags of sys.argv[0]
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main, flags_parser=cli_flags.parse)


if __name__ == "__main__":
  app.run(main, flags_parser=cli_flags.parse)
