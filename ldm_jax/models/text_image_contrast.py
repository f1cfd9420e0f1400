"""A CLIP-style pair of towers that pretrains a prompt encoder on captioned images.

Stable Diffusion conditions its UNet on a frozen text encoder that was trained contrastively on
image-caption pairs (CLIP, Radford et al. 2021); LDM's txt2img instead trains its encoder jointly
with the UNet. ``TextImageContrast`` is the first route at small scale:

  text tower   the prompt encoder tau (any ldm_jax text encoder: context [B, L, D]) -> the mean
               over the L positions (the encoder attends to its padding too, so every position
               carries the caption) -> a linear map to embed_dim;
  image tower  3x3 stride-2 convolutions with GELU over the image in [-1, 1] -> the flattened
               feature map (so where a stroke is stays in the vector) -> a linear map to embed_dim;
  both L2-normalised; logits[i, j] = exp(t) <text_i, image_j>, a learned temperature t
  (initialised at log(1 / 0.07) and clipped at log 100, as CLIP).

``contrastive_loss(logits)`` is CLIP's symmetric cross-entropy over the batch: each caption's
image among the batch's images and each image's caption among the batch's captions. Captions
that name the same content as another in the batch are negatives all the same (CLIP's choice).
Once trained, the ``text_encoder`` params alone condition the UNet (``ldm_jax.text.
save_prompt_encoder`` writes them as a diffusers folder for ``text.pretrained``).
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

INIT_TEMPERATURE = 0.07
MAX_LOGIT_SCALE = 100.0


class ImageTower(nn.Module):
  """Images [B, H, W, C] in [-1, 1] -> embeddings [B, embed_dim] (not normalised)."""
  embed_dim: int
  channels: Sequence[int] = (32, 64, 128)

  @nn.compact
  def __call__(self, x):
    for i, c in enumerate(self.channels):
      x = nn.gelu(nn.Conv(c, (3, 3), strides=2, name=f"conv_{i}")(x))
    return nn.Dense(self.embed_dim, use_bias=False, name="proj")(x.reshape(x.shape[0], -1))


def _normalize(x):
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class TextImageContrast(nn.Module):
  """``apply({"params": p}, ids [B, L], images [B', H, W, C]) -> logits [B, B']`` (module docstring).

  The encoder's params are p["text_encoder"]: the same tree as the encoder on its own.
  """
  text_encoder: nn.Module
  embed_dim: int = 64
  image_channels: Sequence[int] = (32, 64, 128)

  def setup(self):
    self.text_proj = nn.Dense(self.embed_dim, use_bias=False)
    self.image_tower = ImageTower(self.embed_dim, tuple(self.image_channels))
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(
        np.log(1.0 / INIT_TEMPERATURE)), ())

  def embed_text(self, ids):
    return _normalize(self.text_proj(self.text_encoder(ids).mean(axis=1)))

  def embed_images(self, images):
    return _normalize(self.image_tower(images))

  def __call__(self, ids, images):
    scale = jnp.minimum(jnp.exp(self.logit_scale), MAX_LOGIT_SCALE)
    return scale * self.embed_text(ids) @ self.embed_images(images).T


def contrastive_loss(logits):
  """CLIP's loss for logits [B, B] whose diagonal pairs belong together: the mean of the
  caption -> image and image -> caption cross-entropies."""
  if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
    raise ValueError(f"contrastive_loss needs square logits [B, B], got shape {logits.shape}.")
  targets = jnp.arange(logits.shape[0])
  ce = optax.softmax_cross_entropy_with_integer_labels
  return 0.5 * (ce(logits, targets).mean() + ce(logits.T, targets).mean())


def images_to_unit_range(images):
  """uint8 images -> float32 in [-1, 1] (floats are taken as already in [-1, 1])."""
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  return images.astype(jnp.float32)
