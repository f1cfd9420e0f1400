"""Converter from the pt_inception (pytorch-fid) state dict to FID Inception-v3 Flax variables.

The weights file is pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (the TF-FID graph's
weights in torchvision's Inception-v3 key layout). Torch keys map onto the Flax module path of
``ldm_jax.metrics.inception.FIDInceptionV3`` one to one:

  ``{m}.conv.weight`` [O, I, kh, kw] -> params ``{m}/conv/kernel`` [kh, kw, I, O]
  ``{m}.bn.weight`` / ``.bn.bias``    -> params ``{m}/bn/scale`` / ``{m}/bn/bias``
  ``{m}.bn.running_mean`` / ``_var``  -> batch_stats ``{m}/bn/mean`` / ``{m}/bn/var``

with ``m`` e.g. ``Conv2d_1a_3x3`` or ``Mixed_5b.branch1x1`` (dots become Flax nesting). The
BatchNorm statistics are kept in the ``batch_stats`` collection rather than folded into the
convs, so the network is the torch one layer for layer. The classifier ``fc.*`` and BatchNorm
``num_batches_tracked`` counters are ignored; any other key (e.g. torchvision's ``AuxLogits.*``,
a sign of torchvision's ImageNet Inception, which is not the FID network) is an error.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ldm_jax.metrics import inception

IGNORED = (r"^fc\.", r"\.num_batches_tracked$")
# Flax (collection, leaf) -> torch leaf name under the BasicConv2d's "conv" / "bn" submodule.
_TORCH_LEAF = {("params", "kernel"): "weight", ("params", "scale"): "weight",
               ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
               ("batch_stats", "var"): "running_var"}
_MAX_LISTED = 20


def expected_shapes():
  """{torch key: (flax path, torch shape)} for every tensor FIDInceptionV3 needs."""
  x = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)  # the smallest valid input: shapes only
  spec = jax.eval_shape(inception.FIDInceptionV3().init, jax.random.key(0), x)
  out = {}
  for path, leaf in traverse_util.flatten_dict(spec).items():
    collection, modules, name = path[0], path[1:-1], path[-1]
    key = ".".join(modules + (_TORCH_LEAF[(collection, name)],))
    shape = leaf.shape
    if name == "kernel":  # HWIO -> OIHW
      shape = (shape[3], shape[2], shape[0], shape[1])
    out[key] = (path, tuple(shape))
  return out


def _to_numpy(value):
  if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no numpy dtype
    value = value.detach().cpu()
    value = value.float() if value.is_floating_point() else value
    return value.numpy()
  return np.asarray(value)


def _read(state_dict_or_path):
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    import torch  # only to read the pickled .pth file
    return torch.load(state_dict_or_path, map_location="cpu", weights_only=True)
  if not hasattr(state_dict_or_path, "items"):
    raise ValueError("load_fid_inception takes a path to pt_inception-2015-12-05-*.pth or a "
                     f"{{key: tensor}} dict, got {type(state_dict_or_path).__name__}")
  return state_dict_or_path


def _listing(title, items):
  more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
  return f"{title} ({len(items)}): " + ", ".join(items[:_MAX_LISTED]) + more


def load_fid_inception(state_dict_or_path):
  """FIDInceptionV3 variables {"params", "batch_stats"} (jax float32 arrays) from pt_inception.

  state_dict_or_path: a path to the .pth file (read with ``torch.load(weights_only=True)``) or a
  dict {torch key: numpy array or torch tensor}. Raises ValueError listing the missing keys and
  the mis-shaped keys with their expected torch shapes, and unexpected keys, all together.
  Use with ``ldm_jax.metrics.inception.inception_features(variables, images)``.
  """
  state = {k: _to_numpy(v) for k, v in _read(state_dict_or_path).items()}
  expected = expected_shapes()
  missing = [f"{k} {shape}" for k, (_, shape) in expected.items() if k not in state]
  mismatched = [f"{k} {state[k].shape} (expected {shape})" for k, (_, shape) in expected.items()
                if k in state and state[k].shape != shape]
  unexpected = sorted(k for k in state if k not in expected
                      and not any(re.search(p, k) for p in IGNORED))
  if missing or mismatched or unexpected:
    parts = [_listing(t, v) for t, v in (("missing keys (expected shape)", missing),
                                         ("mis-shaped keys", mismatched),
                                         ("unexpected keys", unexpected)) if v]
    raise ValueError("not a pt_inception (FID Inception-v3) state dict: " + "; ".join(parts))
  flat = {}
  for key, (path, _) in expected.items():
    value = state[key].astype(np.float32)
    flat[path] = jnp.asarray(value.transpose(2, 3, 1, 0) if path[-1] == "kernel" else value)
  return traverse_util.unflatten_dict(flat)
