"""The MNIST digit classifier: real training to >= 98% held-out accuracy, features, save/load."""

import jax
import numpy as np
import pytest

from ldm_jax.metrics import classifier, frechet

HELD_OUT_FRACTION = 0.2


def _stratified_split(labels, seed=0):
  """bool [N]: a held-out mask with HELD_OUT_FRACTION of every class."""
  rng = np.random.default_rng(seed)
  held = np.zeros(len(labels), bool)
  for c in range(classifier.NUM_CLASSES):
    idx = np.flatnonzero(labels == c)
    held[rng.permutation(idx)[:int(len(idx) * HELD_OUT_FRACTION)]] = True
  return held


@pytest.fixture(scope="session")
def trained(mnist):
  """(params, held-out images in [-1, 1] [N, 32, 32, 1], held-out labels)."""
  images, labels = mnist
  held = _stratified_split(labels)
  params = classifier.train_classifier(images[~held], labels[~held], steps=600, seed=0)
  return params, classifier.preprocess(images[held]), labels[held]


def test_held_out_accuracy(trained):
  params, x, y = trained
  acc = classifier.accuracy(params, x, y)
  print(f"digit classifier held-out accuracy: {acc:.4f} on {len(y)} images")
  assert acc >= 0.98, f"held-out accuracy {acc:.4f} < 0.98"


def test_features_feed_the_linear_head(trained):
  params, x, _ = trained
  f = classifier.features(params, x[:16])
  assert f.shape == (16, 128) and float(f.min()) >= 0.0  # ReLU features
  expected = np.asarray(f) @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(classifier.logits(params, x[:16]), expected, rtol=1e-5, atol=1e-5)


def test_feature_frechet_distance_separates_real_from_noise(trained):
  params, x, _ = trained
  half = len(x) // 2
  stats = lambda imgs: frechet.stats_from_features(classifier.batched_features(params, imgs))
  real_vs_real = frechet.frechet_distance_from_stats(stats(x[:half]), stats(x[half:]))
  noise = np.random.default_rng(0).uniform(-1, 1, x[:half].shape).astype(np.float32)
  real_vs_noise = frechet.frechet_distance_from_stats(stats(x[:half]), stats(noise))
  assert real_vs_real < 0.05 * real_vs_noise


def test_save_load_round_trip(trained, tmp_path):
  params, x, _ = trained
  path = tmp_path / "digits.msgpack"
  classifier.save_params(path, params)
  loaded = classifier.load_params(path)
  np.testing.assert_array_equal(classifier.logits(loaded, x[:8]), classifier.logits(params, x[:8]))
  classifier.save_params(path, {"dense": params["dense"]})
  with pytest.raises(ValueError, match="DigitClassifier params"):
    classifier.load_params(path)


def test_preprocess_pads_28_to_32_with_minus_one():
  img = np.full((2, 28, 28), 255, np.uint8)
  x = classifier.preprocess(img)
  assert x.shape == (2, 32, 32, 1) and x.dtype == np.float32
  assert np.all(x[:, 2:30, 2:30] == 1.0)
  assert np.all(x[:, :2] == -1.0) and np.all(x[:, :, 30:] == -1.0)
  with pytest.raises(ValueError, match="uint8"):
    classifier.preprocess(img.astype(np.float32))
  with pytest.raises(ValueError, match=r"\[B, 32, 32, 1\]"):
    classifier.logits(classifier.init_params(0), jax.numpy.zeros((1, 28, 28, 1)))
