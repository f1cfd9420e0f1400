"""Counter-based randomness for the input pipeline: uint64 hashes of (seed, epoch, index).

Every random choice of the pipeline (the order of an epoch, a crop offset, a flip) is a pure
function of integers, never of a stateful generator, so any batch can be recomputed from its
position alone: that is what makes resuming exact and the stream independent of the process
count. The mixer is SplitMix64's finaliser (Steele et al. 2014), written in numpy uint64
arithmetic, so the values do not depend on the numpy version.
"""

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# One stream per purpose, so that e.g. the flip bit never correlates with the epoch order.
ORDER, CROP, FLIP = 1, 2, 3


def mix(x):
  """SplitMix64 finaliser of uint64 x (any shape); a bijection with good avalanche."""
  x = np.asarray(x, dtype=np.uint64)
  with np.errstate(over="ignore"):
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
  return x ^ (x >> np.uint64(31))


def hash_ints(seed, purpose, epoch, index):
  """uint64 hash of (seed, purpose, epoch, index); index may be an int array [N]."""
  h = mix(np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF))
  for v in (purpose, epoch):
    h = mix(h ^ np.uint64(int(v) & 0xFFFFFFFFFFFFFFFF))
  return mix(h ^ np.asarray(index, dtype=np.int64).astype(np.uint64))


def uniform_ints(seed, purpose, epoch, index, high):
  """Integers in [0, high] (inclusive; high int array broadcastable to index), one per index."""
  h = hash_ints(seed, purpose, epoch, index) >> np.uint64(11)  # 53 random bits
  u = h.astype(np.float64) / float(1 << 53)  # [0, 1)
  return np.floor(u * (np.asarray(high, np.float64) + 1.0)).astype(np.int64)


def permutation(seed, epoch, n):
  """A permutation int64 [n] of range(n), a pure function of (seed, epoch): argsort of hashes."""
  return np.argsort(hash_ints(seed, ORDER, epoch, np.arange(n)), kind="stable")
