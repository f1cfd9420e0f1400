"""The digit-classifier judge of the ablations: MNIST splits, sample-quality scores of generated
digits, and the real-vs-real floor they are read against.

Sample quality (PAPERS.md sec. 8, "shared evaluation kit"):
  * class accuracy: the in-project digit classifier's accuracy on samples drawn for a label;
  * FD: Frechet distance between the classifier's 128-d penultimate features of the samples and of
    the held-out split (only comparable within this project, not to Inception FID);
  * precision / recall (Kynkaanniemi et al. 2019, k = 3) against the held-out features;
  * diversity: mean pairwise feature distance within each requested class, averaged over classes.
The floor is the same scores for N real train-split images (a seeded subset, N = the sample count)
against the held-out split: no generator can be expected to beat it at that N.
"""

import os

import numpy as np

from ldm_jax import data as data_lib
from ldm_jax.metrics import classifier
from ldm_jax.metrics import frechet
from ldm_jax.metrics import precision_recall as pr_lib

HELD_OUT, TRAIN = "test", "train"
_SPLITS = {}  # split name -> (images, labels), read once per process


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
