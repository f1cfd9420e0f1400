"""The README's main job: MNIST autoencoder -> class-conditional MNIST LDM -> per-class samples.

  python -m experiments.mnist_end_to_end [--workdir=workdirs/mnist] [--ae_steps=N --ldm_steps=N]

Steps (all on the embedded offline MNIST, so it runs on a fresh machine with no network):
  1. a digit classifier (ldm_jax.metrics.classifier) trained on the train split, checked on the
     held-out split: it is the judge of step 4;
  2. the KL autoencoder (experiments/configs/mnist_autoencoder.py), PSNR / SSIM on held-out;
  3. the class-conditional LDM (experiments/configs/mnist_ldm.py) in its latent space;
  4. samples of every class with classifier-free guidance, a PNG grid (one row per class), and
     the classifier's accuracy on them (the target is >= 95%).
Each stage resumes from its checkpoints if the script is interrupted and started again. Results go
to <workdir>/results.json and <workdir>/report.md (with the commit and the load average); the
committed report is refreshed deliberately with --report=experiments/results/mnist_end_to_end.md.

Started as several processes (the README's launch guide: coordinator in the environment, or a
SLURM / Open MPI / TPU cluster), the two training stages run on all of them (`ldm_jax.launch`);
the classifier, sampling and report are process 0's, on its own first device.
"""

import json
import os
import time

from absl import app, flags, logging
import jax
import numpy as np
from PIL import Image

from experiments import provenance
from experiments.configs import mnist_autoencoder, mnist_ldm
from ldm_jax import data as data_lib
from ldm_jax import launch
from ldm_jax.metrics import classifier
from ldm_jax.pipeline import LatentDiffusionPipeline, image_grid
from ldm_jax.stages import run

flags.DEFINE_string("workdir", "workdirs/mnist", "Directory of the three runs.")
flags.DEFINE_integer("ae_steps", 0, "Autoencoder steps (0: the config's).")
flags.DEFINE_integer("ldm_steps", 0, "LDM steps (0: the config's).")
flags.DEFINE_integer("classifier_steps", 600, "Digit classifier steps.")
flags.DEFINE_integer("samples_per_class", 100, "Samples per class for the accuracy.")
flags.DEFINE_string("report", "", "Markdown report path ('': <workdir>/report.md). Pass "
                    "experiments/results/mnist_end_to_end.md to refresh the committed one.")
FLAGS = flags.FLAGS


def _split(name):
  it = data_lib.create_iterator({"name": "mnist_embedded", "split": name, "image_size": 32, "channels": 1},
                                global_batch_size=1000, seed=0, num_epochs=1, drop_remainder=False,
                                num_devices=1, process_index=0, process_count=1)
  batches = list(it)
  it.close()
  return (np.concatenate([b["image"] for b in batches]), np.concatenate([b["label"] for b in batches]))


def _classifier(workdir):
  path = os.path.join(workdir, "classifier.msgpack")
  test_x, test_y = _split("test")
  if os.path.exists(path):
    params = classifier.load_params(path)
  else:
    train_x, train_y = _split("train")
    params = classifier.train_classifier(train_x, train_y, steps=FLAGS.classifier_steps, seed=0)
    if jax.process_index() == 0:
      classifier.save_params(path, params)
  return params, classifier.accuracy(params, classifier.preprocess(test_x), test_y)


def main(_):
  if not FLAGS["verbosity"].present:  # as the CLI: library INFO lines (orbax, jax) only with --verbosity=0
    logging.set_verbosity(logging.WARNING)
  launch.start()  # one simulated device per core, or jax.distributed for a multi-process run
  t0 = time.time()
  os.makedirs(FLAGS.workdir, exist_ok=True)
  clf, clf_acc = _classifier(FLAGS.workdir)
  print(f"digit classifier held-out accuracy: {clf_acc:.4f}", flush=True)
  t_clf = time.time()

  ae_config = mnist_autoencoder.get_config()
  if FLAGS.ae_steps:
    ae_config.train.num_steps = FLAGS.ae_steps
  ae_dir = os.path.join(FLAGS.workdir, "autoencoder")
  ae_summary = run.train(ae_config, ae_dir)
  print(f"autoencoder: {ae_summary}", flush=True)
  t_ae = time.time()

  ldm_config = mnist_ldm.get_config()
  ldm_config.first_stage.workdir = ae_dir
  if FLAGS.ldm_steps:
    ldm_config.train.num_steps = FLAGS.ldm_steps
  ldm_dir = os.path.join(FLAGS.workdir, "ldm")
  ldm_summary = run.train(ldm_config, ldm_dir)
  t_ldm = time.time()
  if jax.process_index() != 0:
    return

  pipe = LatentDiffusionPipeline.from_workdir(ldm_dir, shard=jax.process_count() == 1)
  s = ldm_config.sample
  n = FLAGS.samples_per_class
  labels = np.repeat(np.arange(10), n).astype(np.int32)
  images = np.concatenate([
      pipe.sample(jax.random.key(1000 + c), n, labels=labels[c * n:(c + 1) * n], method=s.method,
                  num_steps=s.num_steps, guidance_scale=s.guidance_scale) for c in range(10)])
  acc = classifier.accuracy(clf, classifier.preprocess(images), labels)
  per_class = [float(np.mean(np.argmax(np.asarray(classifier.logits(
      clf, classifier.preprocess(images[labels == c]))), -1) == c)) for c in range(10)]
  t_end = time.time()
  grid = image_grid(np.concatenate([images[labels == c][:10] for c in range(10)]), rows=10)
  grid_path = os.path.join(FLAGS.workdir, "samples_per_class.png")
  Image.fromarray(grid[..., 0]).save(grid_path)

  results = {
      "classifier_heldout_accuracy": clf_acc,
      "autoencoder": {k: ae_summary[k] for k in ("psnr", "ssim", "num_images", "steps")},
      "ldm": {"steps": ldm_summary["steps"], "latent_scale_factor": ldm_summary["latent_scale_factor"],
              "final_loss": ldm_summary["final_metrics"].get("loss")},
      "sampling": {"method": s.method, "num_steps": s.num_steps, "guidance_scale": s.guidance_scale,
                   "num_samples": int(images.shape[0])},
      "sample_class_accuracy": acc, "per_class_accuracy": per_class,
      "seconds": {"classifier": t_clf - t0, "autoencoder": t_ae - t_clf, "ldm": t_ldm - t_ae,
                  "sampling_and_eval": t_end - t_ldm, "total": t_end - t0},
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "grid": grid_path,
      "commit": provenance.git_commit(),
      "load_average": [round(x, 2) for x in os.getloadavg()],
  }
  with open(os.path.join(FLAGS.workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  print(json.dumps(results, indent=1))
  _report(results, FLAGS.report or os.path.join(FLAGS.workdir, "report.md"))


def _report(r, path):
  sec = r["seconds"]
  lines = [
      "# MNIST end to end (README main command)", "",
      "Embedded MNIST (train split 8,328 images, held-out 1,672), this 2-core CPU, "
      f"{r['devices']}; commit {r['commit']}, load average at the end "
      f"{'/'.join(f'{x:.2f}' for x in r['load_average'])}.", "",
      "| quantity | value |", "|---|---|",
      f"| digit classifier, held-out accuracy | {r['classifier_heldout_accuracy']:.4f} |",
      f"| autoencoder PSNR (held-out, dB) | {r['autoencoder']['psnr']:.2f} |",
      f"| autoencoder SSIM (held-out) | {r['autoencoder']['ssim']:.4f} |",
      f"| LDM latent scale factor | {r['ldm']['latent_scale_factor']:.4f} |",
      f"| class accuracy of {r['sampling']['num_samples']} guided samples "
      f"({r['sampling']['method']}, {r['sampling']['num_steps']} steps, w={r['sampling']['guidance_scale']}) "
      f"| {r['sample_class_accuracy']:.4f} |",
      f"| per-class accuracy | {', '.join(f'{a:.2f}' for a in r['per_class_accuracy'])} |",
      f"| wall time: classifier / autoencoder / LDM / sampling (s) | {sec['classifier']:.0f} / "
      f"{sec['autoencoder']:.0f} / {sec['ldm']:.0f} / {sec['sampling_and_eval']:.0f} |",
      f"| total wall time (s) | {sec['total']:.0f} |", "",
  ]
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
