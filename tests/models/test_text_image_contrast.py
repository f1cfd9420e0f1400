"""Tests for ldm_jax.models.text_image_contrast: CLIP's loss against a float64 reference, and the
towers' logits against the definition (cosines of the mean-pooled context and the flattened image
features, times the clipped learned temperature)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.models.bert_text import BERTEmbedder
from ldm_jax.models.text_image_contrast import (MAX_LOGIT_SCALE, ImageTower, TextImageContrast,
                                                contrastive_loss, images_to_unit_range)


def _reference_loss(logits):
  x = np.asarray(logits, np.float64)
  log_softmax = lambda z: z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) \
      - z.max(1, keepdims=True)
  rows, cols = log_softmax(x), log_softmax(x.T)
  return -0.5 * (np.diag(rows).mean() + np.diag(cols).mean())


def test_contrastive_loss_matches_float64_reference():
  logits = jax.random.normal(jax.random.key(0), (7, 7)) * 5
  np.testing.assert_allclose(float(contrastive_loss(logits)), _reference_loss(logits), rtol=1e-5)
  # asymmetric logits: both directions count (row-only cross-entropy differs)
  skew = logits.at[0, 1].add(20.0)
  assert abs(float(contrastive_loss(skew)) - _reference_loss(skew)) < 1e-4
  # perfect separation -> loss near 0; all equal -> log B
  assert float(contrastive_loss(100.0 * jnp.eye(5))) < 1e-6
  np.testing.assert_allclose(float(contrastive_loss(jnp.zeros((6, 6)))), np.log(6), rtol=1e-6)
  with pytest.raises(ValueError, match=r"square logits.*\(3, 4\)"):
    contrastive_loss(jnp.zeros((3, 4)))


def _model_and_params():
  enc = BERTEmbedder(vocab_size=20, max_length=6, width=16, layers=1, heads=2, head_dim=8,
                     mlp_dim=32)
  model = TextImageContrast(text_encoder=enc, embed_dim=8, image_channels=(4, 8))
  ids = jax.random.randint(jax.random.key(1), (3, 6), 0, 20)
  images = jax.random.randint(jax.random.key(2), (5, 16, 32, 1), 0, 256).astype(jnp.uint8)
  params = model.init(jax.random.key(0), ids, images_to_unit_range(images))["params"]
  return enc, model, params, ids, images


def test_logits_are_scaled_cosines_of_the_two_towers():
  enc, model, params, ids, images = _model_and_params()
  logits = np.asarray(model.apply({"params": params}, ids, images_to_unit_range(images)))
  assert logits.shape == (3, 5)
  # text: the encoder alone (its params are the same tree), mean over positions, linear map
  ctx = np.asarray(enc.apply({"params": params["text_encoder"]}, ids), np.float64)
  t = ctx.mean(1) @ np.asarray(params["text_proj"]["kernel"], np.float64)
  x = np.asarray(ImageTower(8, (4, 8)).apply({"params": params["image_tower"]},
                                             np.asarray(images, np.float32) / 127.5 - 1),
                 np.float64)
  t /= np.linalg.norm(t, axis=1, keepdims=True)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  np.testing.assert_allclose(logits, np.exp(float(params["logit_scale"])) * t @ x.T, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(float(params["logit_scale"]), np.log(1 / 0.07), rtol=1e-6)
  # the temperature is clipped at CLIP's 100
  hot = {**params, "logit_scale": jnp.asarray(10.0)}
  np.testing.assert_allclose(np.asarray(model.apply({"params": hot}, ids,
                                                    images_to_unit_range(images))),
                             MAX_LOGIT_SCALE * t @ x.T, rtol=1e-4, atol=1e-3)


def test_image_tower_keeps_where_strokes_are():
  # the flattened feature map: a stroke on the left and the same stroke on the right differ
  tower = ImageTower(8, (4, 8))
  left = np.full((1, 16, 32, 1), -1.0, np.float32)
  left[0, 4:12, 4:8] = 1.0
  right = np.roll(left, 16, axis=2)
  params = tower.init(jax.random.key(0), left)["params"]
  a, b = (np.asarray(tower.apply({"params": params}, z)) for z in (left, right))
  assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()
  assert images_to_unit_range(np.array([0, 255], np.uint8)).tolist() == [-1.0, 1.0]
