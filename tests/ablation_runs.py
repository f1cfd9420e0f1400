"""What the ablation-script tests share: the tiny runs (a 30-step digit classifier, the tiny
autoencoder and the tiny class LDM on it; `experiments.ablations.training`, scale "tiny"), a
script's flags on them, one run of a script's main, and readers of its markdown report."""

import os

from experiments.ablations import digit_judge
from experiments.ablations import training
from ldm_jax.metrics import classifier

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_runs(root):
  """{"root", "classifier", "ae", "ldm"}: the three runs trained (or reused) under `root`."""
  x, y = digit_judge.split(digit_judge.TRAIN)
  clf = str(root / "classifier.msgpack")
  classifier.save_params(clf, classifier.train_classifier(x[:2000], y[:2000], steps=30, seed=0))
  ae = str(root / "ae")
  training.autoencoder_run(ae, "tiny")
  ldm = str(root / "ldm")
  training.ldm_run(ldm, ae, "tiny")
  return {"root": root, "classifier": clf, "ae": ae, "ldm": ldm}


def script_argv(tiny, work, *extra):
  """A script's flags with tiny_runs' classifier and autoencoder; its runs under root / work, its
  report in root / "results"."""
  return ["--scale=tiny", f"--out={tiny['root'] / 'results'}", f"--workdir={tiny['root'] / work}",
          f"--classifier={tiny['classifier']}", f"--ae={tiny['ae']}", *extra]


def run_script(script, tiny, work, *extra):
  """(script.main's result, its report's markdown) of script.main(script_argv(...)); asserts that
  the figure <out>/<script.NAME>.png is a PNG."""
  results = script.main(script_argv(tiny, work, *extra))
  out = tiny["root"] / "results"
  with open(out / f"{script.NAME}.png", "rb") as f:
    assert f.read(8) == PNG_MAGIC
  return results, (out / f"{script.NAME}.md").read_text(encoding="utf-8")


def table(md):
  """{first cell: [other cells]} of the markdown table body."""
  lines = [l for l in md.splitlines() if l.startswith("| ")][1:]
  return {c[0]: c[1:] for c in ([p.strip() for p in l.split("|")[1:-1]] for l in lines)}


def cell(text):
  """seeds.summarize-like dict of a "mean ± sd" table cell."""
  mean, sd = (float(v) for v in text.split("±"))
  return {"mean": mean, "sd": sd}


def mtimes(root):
  """{path: modification time} of every file under root (unchanged: nothing was written)."""
  return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
          for d, _, files in os.walk(root) for f in files}
