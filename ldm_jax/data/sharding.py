"""Which examples each process reads for global batch k: the epoch order and per-host shards.

The global stream is defined once, independently of how many processes read it:

  global batch k = examples order(e)[j * G : (j + 1) * G],  e = k // S,  j = k % S,

with G the global batch size, S = N // G batches per epoch (the last N mod G examples of each
epoch's order are dropped, different ones each epoch) and order(e) a permutation of the N examples
that is a pure function of (seed, e) (`hashing.permutation`). Process p of P reads the contiguous
slice [p * b, (p + 1) * b) of each global batch, b = G / P. Within an epoch the processes' shards
are therefore disjoint and together cover the epoch, the concatenation of the per-process batches in
process order is the global batch, and the stream a run sees does not depend on P: a checkpoint
taken with one process count resumes exactly with another. This replaces
`tfds.split_for_jax_process` (a fixed shard per host), which only works with a fixed P.
"""

import numpy as np

from ldm_jax.data import hashing


def check_batch_size(global_batch_size, num_devices=1, process_count=1):
  """Raises ValueError unless global_batch_size > 0 divides evenly over devices and processes."""
  g = global_batch_size
  if not isinstance(g, (int, np.integer)) or isinstance(g, bool) or g <= 0:
    raise ValueError(f"global_batch_size must be a positive int, got {g!r}.")
  for what, n in (("device count", num_devices), ("process count", process_count)):
    if not isinstance(n, (int, np.integer)) or n <= 0:
      raise ValueError(f"{what} must be a positive int, got {n!r}.")
    if g % n:
      lo, hi = g - g % n, g - g % n + n
      raise ValueError(
          f"global batch size {g} is not divisible by the {what} {n}; "
          f"use a multiple of {n}, e.g. {lo or hi} or {hi}.")


def check_process(process_index, process_count):
  """Raises ValueError unless 0 <= process_index < process_count."""
  if not isinstance(process_count, (int, np.integer)) or process_count <= 0:
    raise ValueError(f"process_count must be a positive int, got {process_count!r}.")
  if not isinstance(process_index, (int, np.integer)) or not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index must be in [0, {process_count}), got {process_index!r}.")


def steps_per_epoch(num_examples, global_batch_size, drop_remainder=True):
  """Global batches per epoch: floor(N / G), or ceil with drop_remainder=False."""
  if drop_remainder:
    return num_examples // global_batch_size
  return -(-num_examples // global_batch_size)


def epoch_order(seed, epoch, num_examples, shuffle):
  """Example indices int64 [N] in the order of `epoch`: a (seed, epoch) permutation or arange."""
  if shuffle:
    return hashing.permutation(seed, epoch, num_examples)
  return np.arange(num_examples, dtype=np.int64)


def local_slice(global_batch_size, process_index, process_count):
  """The [start, stop) slice of every global batch that process `process_index` reads."""
  b = global_batch_size // process_count
  return process_index * b, (process_index + 1) * b
