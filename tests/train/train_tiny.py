"""A tiny stand-in network, loss and resumable data for the training-infrastructure tests."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

IMAGE_SHAPE = (8, 8, 1)


class TinyNet(nn.Module):
  """Two convs and a dense head: [B, 8, 8, 1] -> [B, 3]."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), name="conv_in")(x))
    x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2), name="conv_down")(x))
    return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


def init_params(rng):
  return TinyNet().init(rng, jnp.zeros((1,) + IMAGE_SHAPE))["params"]


def make_loss(noise: float = 0.0):
  """MSE to the targets; `noise` > 0 perturbs the inputs with the step key (uses the rng)."""
  def loss_fn(params, batch, rng, extra):
    del extra  # the tiny net has no read-only inputs
    x = batch["image"]
    if noise:
      x = x + noise * jax.random.normal(rng, x.shape)
    pred = TinyNet().apply({"params": params}, x)
    loss = jnp.mean((pred - batch["target"]) ** 2)
    return loss, {"pred_mean": jnp.mean(pred)}
  return loss_fn


def make_batch(index: int, batch_size: int, seed: int = 0):
  """The `index`-th global batch, a deterministic function of (seed, index)."""
  r = np.random.default_rng([seed, index])
  return {"image": r.normal(size=(batch_size,) + IMAGE_SHAPE).astype(np.float32),
          "target": r.normal(size=(batch_size, 3)).astype(np.float32)}


class ArrayBatches:
  """Resumable iterator: `get_state()` / `set_state()` hold the position (batches yielded).

  With `num_shards` > 1 it yields only rows [shard * b/num_shards, (shard+1) * b/num_shards) of
  each global batch, as one process of a multi-process run would.
  """

  def __init__(self, batch_size, seed=0, shard=0, num_shards=1, delay=0.0, nan_at=()):
    self.batch_size, self.seed, self.shard, self.num_shards = batch_size, seed, shard, num_shards
    self.delay, self.nan_at, self.position = delay, set(nan_at), 0

  def __iter__(self):
    return self

  def __next__(self):
    if self.delay:
      import time
      time.sleep(self.delay)
    batch = make_batch(self.position, self.batch_size, self.seed)
    if self.position in self.nan_at:
      batch["image"][0, 0, 0, 0] = np.nan
    self.position += 1
    rows = self.batch_size // self.num_shards
    return {k: v[self.shard * rows:(self.shard + 1) * rows] for k, v in batch.items()}

  def get_state(self):
    return {"position": self.position}

  def set_state(self, state):
    self.position = int(state["position"])


def optimizer_config():
  """The optimizer settings shared by all tests, subprocess runs included (runs <= 20 steps)."""
  from ldm_jax.train import optim  # pylint: disable=import-outside-toplevel
  c = optim.default_config()
  c.learning_rate, c.warmup_steps, c.decay_steps = 1e-2, 3, 20
  return c


@functools.lru_cache(maxsize=None)
def data_parallel(mode="mesh", num_fsdp=1, num_devices=None, noise=0.0, compiler_options=None):
  """One DataParallel per layout for the whole session, so each step compiles once.
  compiler_options: a tuple of (option, value) pairs (hashable, for the cache)."""
  from ldm_jax.train import optim, parallel  # pylint: disable=import-outside-toplevel
  c = optimizer_config()
  devices = jax.devices()[:num_devices] if num_devices else None
  return parallel.data_parallel(make_loss(noise), optim.make_optimizer(c), mode=mode,
                                mesh=parallel.make_mesh(num_fsdp, devices), ema_decay=0.9,
                                lr_schedule=optim.learning_rate_schedule(c),
                                compiler_options=dict(compiler_options or ()) or None)
