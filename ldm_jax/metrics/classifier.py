"""A small CNN digit classifier for 32x32x1 MNIST: class accuracy of samples and Frechet features.

The network sees images in [-1, 1], shape [B, 32, 32, 1] (MNIST's 28x28 zero-padded by 2 pixels,
so the border is -1), the same range and shape as the project's generated samples. `features` is
the 128-d penultimate (ReLU) layer, used for the Frechet distance and precision/recall of MNIST
samples; `logits` adds the linear head. Params are a plain pytree, saved and loaded as msgpack
(flax.serialization).

Architecture: three 3x3 stride-2 conv + ReLU stages (32, 64, 64 channels) down to 4x4x64, then
Dense(128) + ReLU (features) and Dense(10) (logits); ~1.9 M multiply-adds per image. Strided
convolutions rather than conv + max-pool: XLA's CPU max-pool gradient is slow, and this net trains
~5x faster per step for the same accuracy. 600 Adam steps of 128 on 8,000 MNIST test-split images
reach ~98.4% on the other 2,000 in ~40 s of CPU time.
"""

import functools

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

IMAGE_SHAPE = (32, 32, 1)
NUM_CLASSES = 10


class DigitClassifier(nn.Module):
  """CNN on x [B, 32, 32, 1] in [-1, 1]: `features` [B, feature_dim]; `__call__`: logits [B, 10]."""

  channels: tuple[int, ...] = (32, 64, 64)
  feature_dim: int = 128
  num_classes: int = NUM_CLASSES

  def setup(self):
    self.convs = [nn.Conv(c, (3, 3), strides=(2, 2), padding="SAME", name=f"conv_{i}")
                  for i, c in enumerate(self.channels)]
    self.dense = nn.Dense(self.feature_dim, name="dense")
    self.head = nn.Dense(self.num_classes, name="head")

  def features(self, x):
    for conv in self.convs:
      x = nn.relu(conv(x))
    return nn.relu(self.dense(x.reshape(x.shape[0], -1)))

  def __call__(self, x):
    return self.head(self.features(x))


def _check_images(x):
  if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
    raise ValueError(f"images must have shape [B, 32, 32, 1] (values in [-1, 1]), got {x.shape}")


def preprocess(images_uint8) -> np.ndarray:
  """uint8 [N, 28, 28], [N, 28, 28, 1] or [N, 32, 32, 1] -> float32 [N, 32, 32, 1] in [-1, 1].

  28x28 images are zero-padded by 2 pixels on each side (value -1 after scaling).
  """
  x = np.asarray(images_uint8)
  if x.dtype != np.uint8:
    raise ValueError(f"images must be uint8 in [0, 255], got dtype {x.dtype}")
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[1:] not in ((28, 28, 1), (32, 32, 1)):
    raise ValueError(f"images must have shape [N, 28, 28(, 1)] or [N, 32, 32, 1], got {x.shape}")
  if x.shape[1] == 28:
    x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  return x.astype(np.float32) / 127.5 - 1.0


def init_params(seed: int = 0):
  """Randomly initialised params of `DigitClassifier()`."""
  dummy = jnp.zeros((1,) + IMAGE_SHAPE, jnp.float32)
  return DigitClassifier().init(jax.random.key(seed), dummy)["params"]


@jax.jit
def features(params, x: jax.Array) -> jax.Array:
  """Penultimate-layer features [B, 128] of images x [B, 32, 32, 1] in [-1, 1]."""
  _check_images(x)
  return DigitClassifier().apply({"params": params}, x, method=DigitClassifier.features)


@jax.jit
def logits(params, x: jax.Array) -> jax.Array:
  """Class logits [B, 10] of images x [B, 32, 32, 1] in [-1, 1]."""
  _check_images(x)
  return DigitClassifier().apply({"params": params}, x)


def _in_batches(fn, params, x, batch_size):
  return np.concatenate([np.asarray(fn(params, jnp.asarray(x[i:i + batch_size])))
                         for i in range(0, x.shape[0], batch_size)])


def batched_features(params, x, batch_size: int = 1000) -> np.ndarray:
  """`features` of x [N, 32, 32, 1] in [-1, 1], `batch_size` images at a time, as numpy."""
  return _in_batches(features, params, x, batch_size)


def accuracy(params, x, labels, batch_size: int = 1000) -> float:
  """Fraction of images x [N, 32, 32, 1] in [-1, 1] classified as labels [N]."""
  pred = np.argmax(_in_batches(logits, params, x, batch_size), axis=-1)
  return float(np.mean(pred == np.asarray(labels)))


def _random_shift(rng, x, max_shift):
  """Translates each image of x [B, H, W, 1] by up to max_shift pixels, filling with -1."""
  b, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)), constant_values=-1.0)
  offsets = jax.random.randint(rng, (b, 2), 0, 2 * max_shift + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def _optimizer(learning_rate, steps):
  return optax.adam(optax.cosine_decay_schedule(learning_rate, steps))


@functools.partial(jax.jit, donate_argnums=(0, 1),
                   static_argnames=("steps", "batch_size", "learning_rate", "max_shift"))
def _train_step(params, opt_state, x, y, rng, *, steps, batch_size, learning_rate, max_shift):
  """One Adam step on a minibatch of x [N, 32, 32, 1], y [N] drawn with replacement."""
  idx_rng, shift_rng = jax.random.split(rng)
  idx = jax.random.randint(idx_rng, (batch_size,), 0, x.shape[0])
  xb = x[idx]
  if max_shift > 0:
    xb = _random_shift(shift_rng, xb, max_shift)

  def loss_fn(p):
    out = DigitClassifier().apply({"params": p}, xb)
    return optax.softmax_cross_entropy_with_integer_labels(out, y[idx]).mean()

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = _optimizer(learning_rate, steps).update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def train_classifier(images_uint8, labels, *, steps: int = 600, seed: int = 0,
                     batch_size: int = 128, learning_rate: float = 3e-3, max_shift: int = 1):
  """Trains a `DigitClassifier` with Adam (cosine-decayed learning rate) and returns its params.

  images_uint8: [N, 28, 28(, 1)] or [N, 32, 32, 1] uint8; labels: int [N] in 0..9. Minibatches are
  drawn with replacement; augmentation translates each image by up to `max_shift` pixels.
  """
  x = preprocess(images_uint8)
  y = np.asarray(labels)
  if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels must be integers of shape [{x.shape[0]}], got {y.dtype} {y.shape}")
  if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
    raise ValueError(f"labels must lie in 0..{NUM_CLASSES - 1}, got range [{y.min()}, {y.max()}]")
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f"steps must be a positive int, got {steps!r}")
  config = dict(steps=steps, batch_size=batch_size, learning_rate=float(learning_rate),
                max_shift=max_shift)
  x, y = jnp.asarray(x), jnp.asarray(y, jnp.int32)
  rng = jax.random.key(seed)
  params = init_params(seed)
  opt_state = _optimizer(config["learning_rate"], steps).init(params)
  for step in range(steps):
    params, opt_state, _ = _train_step(params, opt_state, x, y, jax.random.fold_in(rng, step),
                                       **config)
  return params


def save_params(path, params) -> None:
  """Writes classifier params to `path` as msgpack (flax.serialization)."""
  with open(path, "wb") as f:
    f.write(flax.serialization.to_bytes(params))


def load_params(path):
  """Reads params written by `save_params` (a nested dict of numpy arrays)."""
  with open(path, "rb") as f:
    params = flax.serialization.msgpack_restore(f.read())
  expected = jax.tree.map(lambda a: a.shape, jax.eval_shape(init_params))
  got = jax.tree.map(lambda a: a.shape, params)
  if got != expected:
    raise ValueError(f"{path} does not hold DigitClassifier params: shapes {got}, expected "
                     f"{expected}")
  return params
