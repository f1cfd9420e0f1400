"""The tiny runs the ablation-script tests share: a 30-step digit classifier, the tiny autoencoder
and the tiny class LDM on it (`experiments.ablations.training`, scale "tiny")."""

from experiments.ablations import digit_judge
from experiments.ablations import training
from ldm_jax.metrics import classifier


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
