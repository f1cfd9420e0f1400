"""Logical axis names -> mesh axes: how mesh mode shards every array of the train state.

The models name the axes of their parameters (`nn.with_logical_partitioning`): a conv kernel
[kh, kw, C_in, C_out] is (None, None, "conv_in", "conv_out"), a feed-forward kernel
("embed", "mlp"), an attention projection ("embed", "heads"), a token table ("vocab", "embed").
The config maps names to mesh axes (`config.parallel.axis_rules`, default `DEFAULT_RULES`): a
sequence of (logical name, mesh axis) pairs, applied by `mesh_spec` in priority order:

  - the rules are tried first to last; a rule (name, axis) shards over `axis` the first
    dimension called `name` that is still unsharded and divisible by the axis size, unless the
    array uses `axis` already (so at most one mesh axis per dimension, each mesh axis at most
    once per array); mesh axes of size 1 shard nothing;
  - an array without names (norm scales, the autoencoder's logvar, frozen weights loaded from
    an export), or whose named dimensions no rule could shard, falls back to `fsdp_spec`: its
    largest dimension divisible by the "fsdp" axis (the layout before names existed).

Empty rules () give the size rule for every array. Optimizer states (Adam's mu and nu) and the
EMA mirror the params tree: `leaf_spec` gives such a leaf the names of the param whose path is
the longest suffix of the leaf's path, so moments and EMA shard like their params.
(Like maxtext's logical_axis_rules, without its tensor / sequence axes; see README "Sharding by
logical axes".)
"""

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P

PyTree = Any
MESH_AXES = ("data", "fsdp")
# Every logical axis name the project's models use (ldm_jax/models): conv kernels and biases,
# the time-embedding MLP and feed-forwards ("mlp"), attention ("embed", "heads", "kv": the
# context's width in cross-attention), embedding tables ("vocab").
LOGICAL_AXES = ("conv_in", "conv_out", "embed", "heads", "kv", "mlp", "vocab")
# Priority order: a dense kernel shards its "embed" side where it has one, a conv kernel its
# output channels before its input channels. With only a data and an fsdp axis the choice moves
# no compute (FSDP all-gathers a parameter before using it); it balances memory.
DEFAULT_RULES = (("embed", "fsdp"), ("mlp", "fsdp"), ("heads", "fsdp"), ("kv", "fsdp"),
                 ("vocab", "fsdp"), ("conv_out", "fsdp"), ("conv_in", "fsdp"))
_NOT_FOUND = object()


def check_rules(rules, key: str = "axis_rules") -> tuple[tuple[str, str], ...]:
  """The rules as a tuple of (logical name, mesh axis) pairs (a config read back from JSON holds
  lists); ValueError naming the bad entry and what is valid. `key` prefixes the message."""
  example = f"e.g. {DEFAULT_RULES[:2]}"
  if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
    raise ValueError(f"{key}={rules!r}: expected a sequence of (logical axis name, mesh axis) "
                     f"pairs, {example}.")
  out = []
  for i, entry in enumerate(rules):
    where = f"{key} entry {i} {entry!r}"
    if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 2:
      raise ValueError(f"{where}: expected a (logical axis name, mesh axis) pair, {example}.")
    name, axis = entry
    if name not in LOGICAL_AXES:
      raise ValueError(f"{where}: unknown logical axis {name!r}; valid logical axes: "
                       f"{', '.join(LOGICAL_AXES)}.")
    if axis not in MESH_AXES:
      raise ValueError(f"{where}: unknown mesh axis {axis!r}; valid mesh axes: "
                       f"{', '.join(MESH_AXES)}.")
    out.append((name, axis))
  return tuple(out)


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
  """The fallback: shard the largest dim divisible by `fsdp_size` over "fsdp" (ties: the first);
  replicate if none divides."""
  if fsdp_size <= 1:
    return P()
  dims = [i for i, d in enumerate(shape) if d % fsdp_size == 0 and d >= fsdp_size]
  if not dims:
    return P()
  best = max(dims, key=lambda i: (shape[i], -i))
  return P(*[("fsdp" if i == best else None) for i in range(len(shape))])


def mesh_spec(shape: tuple[int, ...], names: tuple | None, rules, mesh_shape: Mapping[str, int]) -> P:
  """PartitionSpec of an array of `shape` whose axes are called `names` (None: unannotated)
  under `rules` on a mesh of `mesh_shape` ({"data": n, "fsdp": m}); see the module docstring."""
  if names is not None and len(names) != len(shape):
    raise ValueError(f"logical axis names {names} do not match the array shape {shape}")
  spec = [None] * len(shape)
  for name, axis in (rules if names is not None else ()):
    size = mesh_shape[axis]
    if size <= 1 or axis in spec:
      continue
    for i, n in enumerate(names):
      if n == name and spec[i] is None and shape[i] % size == 0:
        spec[i] = axis
        break
  if any(spec):
    return P(*spec)
  return fsdp_spec(tuple(shape), mesh_shape.get("fsdp", 1))


def logical_names(boxed_tree: PyTree) -> PyTree:
  """The tree of `boxed_tree` (e.g. `jax.eval_shape(module.init, ...)["params"]`) with each
  nn.LogicallyPartitioned box replaced by its names tuple and every other leaf by None."""
  is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
  return jax.tree.map(lambda x: tuple(x.names) if is_box(x) else None, boxed_tree, is_leaf=is_box)


def path_keys(path) -> tuple[str, ...]:
  """A jax key path as plain strings: dict keys, attribute names (optax states), indices."""
  def key(entry):
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        return str(getattr(entry, attr))
    return str(entry)
  return tuple(key(e) for e in path)


def names_by_path(names_tree: PyTree | None) -> dict:
  """{path (tuple of str keys): names tuple or None} of a `logical_names` tree (None: {})."""
  if names_tree is None:
    return {}
  is_names = lambda x: x is None or isinstance(x, tuple)
  flat = jax.tree_util.tree_flatten_with_path(names_tree, is_leaf=is_names)[0]
  return {path_keys(path): names for path, names in flat}


def leaf_spec(path, shape: tuple[int, ...], table: dict, rules, mesh_shape: Mapping[str, int]) -> P:
  """`mesh_spec` of a state leaf at `path` (a jax key path) under the names of the param whose
  path (a key of `table`, see `names_by_path`) is the longest suffix of it: a param itself, its
  EMA, or its Adam moments (opt_state[...].mu[<param path>]); no match: unannotated."""
  keys = path_keys(path)
  names = None
  for k in range(len(keys), 0, -1):
    found = table.get(keys[-k:], _NOT_FOUND)
    if found is not _NOT_FOUND:
      names = found
      break
  if names is not None and len(names) != len(shape):
    names = None  # a suffix that names another array (not a mirror of this param)
  return mesh_spec(shape, names, rules, mesh_shape)


def tree_specs(tree: PyTree, table: dict, rules, mesh_shape: Mapping[str, int]) -> PyTree:
  """`leaf_spec` of every leaf of `tree` (arrays or ShapeDtypeStructs), paths from its root."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: leaf_spec(path, x.shape, table, rules, mesh_shape), tree)
