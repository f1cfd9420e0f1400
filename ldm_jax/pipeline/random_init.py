"""Random parameters without compiling `init`: shapes from `jax.eval_shape`, values from numpy.

For demos, tests and benchmarks with untrained networks (a jitted `init` of a UNet costs a full
XLA compilation; this costs one abstract trace). Kernels and embeddings are LeCun-normal
(std 1 / sqrt(fan_in)), norm scales 1, biases 0.
"""

import flax.linen as nn
import jax
import numpy as np


def random_params(module: nn.Module, *example_args, seed: int = 0, **example_kwargs):
  """The "params" collection of `module.init(key, *example_args, **example_kwargs)`, unboxed,
  filled with LeCun-normal kernels (numpy float32 arrays)."""
  shapes = jax.eval_shape(lambda: nn.meta.unbox(
      module.init(jax.random.key(0), *example_args, **example_kwargs)["params"]))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], "key", str(path[-1]))
    if name == "scale":
      return np.ones(leaf.shape, leaf.dtype)
    if name == "bias" or len(leaf.shape) < 2:
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) if name != "embedding" else 1
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)
