"""Generic PyTorch state dict <-> Flax params conversion (names and tensor layouts).

Naming rule: a Flax submodule name mirrors the torch attribute path, a list index joined to its
list's name by "_": torch ``down_blocks.0.resnets.1.conv1.weight`` <-> Flax
``down_blocks_0/resnets_1/conv1/kernel``. Leaves: Conv ``kernel`` [kh, kw, in, out] (HWIO) <->
``weight`` [out, in, kh, kw] (OIHW); Dense ``kernel`` [in, out] <-> Linear ``weight`` [out, in];
norm ``scale`` <-> ``weight``; Embed ``embedding`` <-> ``weight``; ``bias`` <-> ``bias``; any other
leaf keeps its name and layout.

torch -> Flax is unambiguous (a purely numeric torch segment is an index). Flax -> torch must
tell ``down_blocks_0`` (list item) from attributes that end in "_<digit>" themselves
(``linear_1``): the names in ``ATTRIBUTES_ENDING_IN_DIGIT`` (or the ``keep`` argument) stay as
they are, every other "<name>_<int>" becomes "<name>.<int>".
"""

import re

import flax.linen as nn
import numpy as np
from flax import traverse_util

# diffusers attribute names that end in "_<digit>" but are not list items.
ATTRIBUTES_ENDING_IN_DIGIT = frozenset({"linear_1", "linear_2", "Conv2d_0", "conv_1", "conv_2"})
FLAX_TO_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_INDEXED = re.compile(r"^(.+)_(\d+)$")
_MAX_LISTED = 25


def torch_module_to_flax(module_path):
  """'down_blocks.0.resnets.1.conv1' -> ('down_blocks_0', 'resnets_1', 'conv1')."""
  out = []
  for part in module_path.split(".") if module_path else []:
    if part.isdigit():
      if not out:
        raise ValueError(f"torch path {module_path!r} starts with an index")
      out[-1] = f"{out[-1]}_{part}"
    else:
      out.append(part)
  return tuple(out)


def flax_module_to_torch(path, keep=ATTRIBUTES_ENDING_IN_DIGIT):
  """('down_blocks_0', 'resnets_1', 'linear_1') -> 'down_blocks.0.resnets.1.linear_1'."""
  parts = []
  for name in path:
    m = _INDEXED.match(name)
    parts.append(name if (m is None or name in keep) else f"{m.group(1)}.{m.group(2)}")
  return ".".join(parts)


def _flax_leaf_from_torch(array, leaf, target_shape):
  """Torch tensor -> the layout of Flax leaf ``leaf`` (target_shape resolves 1x1 conv -> Dense)."""
  if leaf != "kernel":
    return array
  if array.ndim == 4 and len(target_shape) == 2 and array.shape[2:] == (1, 1):
    return array[:, :, 0, 0].T  # a torch 1x1 conv feeding a Flax Dense
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:
    return array.T
  return array


def _torch_leaf_from_flax(array, leaf):
  if leaf == "kernel" and array.ndim == 4:
    return array.transpose(3, 2, 0, 1)
  if leaf == "kernel" and array.ndim == 2:
    return array.T
  return array


def _join(module, leaf):
  return f"{module}.{leaf}" if module else leaf


def _listing(title, items):
  items = sorted(items)
  more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
  return f"{title} ({len(items)}): " + ", ".join(items[:_MAX_LISTED]) + more


def torch_to_flax(state_dict, target, *, ignore=()):
  """Converts a torch state dict to a Flax params tree with the structure of ``target``.

  state_dict: {torch key: numpy array}. target: the Flax params tree (arrays or
  ``jax.ShapeDtypeStruct``, e.g. from ``jax.eval_shape(module.init, ...)["params"]``); leaves
  are cast to its dtypes. ignore: regexes of torch keys that may be left unused (buffers).
  Raises ValueError listing missing keys, unexpected keys and shape mismatches together.
  Returns a nested dict of numpy arrays.
  """
  flat_target = traverse_util.flatten_dict(nn.meta.unbox(target))
  index = {}
  for key in state_dict:
    module, _, leaf = key.rpartition(".")
    index[(torch_module_to_flax(module), leaf)] = key
  out, missing, mismatched, used = {}, [], [], set()
  for path, spec in flat_target.items():
    module, leaf = path[:-1], path[-1]
    key = index.get((module, FLAX_TO_TORCH_LEAF.get(leaf, leaf)))
    if key is None:
      torch_key = _join(flax_module_to_torch(module), FLAX_TO_TORCH_LEAF.get(leaf, leaf))
      missing.append(f"{torch_key} (flax {'/'.join(path)})")
      continue
    used.add(key)
    array = _flax_leaf_from_torch(np.asarray(state_dict[key]), leaf, spec.shape)
    if tuple(array.shape) != tuple(spec.shape):
      mismatched.append(f"{key}: torch {tuple(np.shape(state_dict[key]))} -> flax "
                        f"{tuple(array.shape)}, expected {tuple(spec.shape)} at {'/'.join(path)}")
      continue
    out[path] = np.asarray(array, dtype=spec.dtype)
  unexpected = [k for k in state_dict
                if k not in used and not any(re.search(p, k) for p in ignore)]
  if missing or unexpected or mismatched:
    parts = [_listing(t, v) for t, v in (("missing keys", missing), ("unexpected keys", unexpected),
                                         ("shape mismatches", mismatched)) if v]
    raise ValueError("state dict does not match the Flax model: " + "; ".join(parts))
  return traverse_util.unflatten_dict(out)


def flax_to_torch(params, *, keep=ATTRIBUTES_ENDING_IN_DIGIT):
  """Flax params tree -> {torch key: numpy array} in torch layout (inverse of ``torch_to_flax``).

  Raises ValueError if two Flax leaves would get the same torch key.
  """
  out, origin = {}, {}
  for path, value in traverse_util.flatten_dict(nn.meta.unbox(params)).items():
    leaf = path[-1]
    key = _join(flax_module_to_torch(path[:-1], keep), FLAX_TO_TORCH_LEAF.get(leaf, leaf))
    if key in out:
      raise ValueError(f"flax params {'/'.join(origin[key])} and {'/'.join(path)} both map to "
                       f"torch key {key!r}")
    out[key] = np.ascontiguousarray(_torch_leaf_from_flax(np.asarray(value), leaf))
    origin[key] = path
  return out
