"""LPIPS weights (torchvision VGG16 + the lpips v0.1 "lin" file) -> `ldm_jax.models.lpips` params.

LPIPS needs two files the user supplies:
  * the ImageNet VGG16 of torchvision (`vgg16-397923af.pth`): keys `features.{i}.weight`
    [C_out, C_in, 3, 3] and `features.{i}.bias` [C_out] for the conv indices i in
    `VGG16_CONVS` (0, 2, 5, ..., 28); `classifier.*` is ignored. A saved `lpips.LPIPS(net="vgg")`
    state dict (trunk under `net.slice{k}.{i}.*`) serves as both: `load_lpips(sd, sd)`.
  * the lpips calibration weights (`lpips/weights/v0.1/vgg.pth`): `lin{l}.model.1.weight`
    [1, C_l, 1, 1] for l = 0..4 (C_l = 64, 128, 256, 512, 512).

Usage with the autoencoder stage:

  params = load_lpips("vgg16-397923af.pth", "vgg.pth")
  loss_fn = make_loss_fn(ae, disc, config.loss, perceptual_fn=perceptual_fn(params))

Files are read with `torch.load(weights_only=True)` (torch imported only then) for .pth / .pt /
.ckpt / .bin, with safetensors for .safetensors and with numpy for .npz.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.convert import torch_layout
from ldm_jax.models.lpips import LPIPS, VGG16_STAGES, VGG16_WIDTHS, lpips_distance

_TRUNK_KEY = re.compile(r"^net\.slice\d+\.(\d+)\.(weight|bias)$")  # lpips' copy of the VGG convs
_VGG_IGNORED = re.compile(r"^(classifier|scaling_layer|lin\d+)\.")  # fc layers; LPIPS module keys
_LIN_IGNORED = re.compile(r"^(net|scaling_layer)\.")


def vgg_shapes():
  """{torchvision key: torch shape} of the VGG16 convs LPIPS uses."""
  shapes, c_in = {}, 3
  for convs, width in zip(VGG16_STAGES, VGG16_WIDTHS):
    for i in convs:
      shapes[f"features.{i}.weight"] = (width, c_in, 3, 3)
      shapes[f"features.{i}.bias"] = (width,)
      c_in = width
  return shapes


def lin_shapes():
  """{lpips key: torch shape} of the five lin layers."""
  return {f"lin{l}.model.1.weight": (1, c, 1, 1) for l, c in enumerate(VGG16_WIDTHS)}


def read_weights(source):
  """{key: numpy array} from a dict, or a .pth / .pt / .ckpt / .bin / .safetensors / .npz path."""
  if not isinstance(source, (str, os.PathLike)):
    return {k: _to_numpy(v) for k, v in source.items()}
  path = os.fspath(source)
  if path.lower().endswith(".npz"):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  from ldm_jax.convert.ldm_checkpoint import read_state_dict  # torch / safetensors, lazily
  return read_state_dict(path, weights_only=True)


def _to_numpy(v):
  if hasattr(v, "detach"):  # a torch tensor
    v = v.detach().cpu()
    v = v.float() if str(v.dtype) == "torch.bfloat16" else v
    return v.numpy()
  return np.asarray(v)


def _problems(state_dict, expected, ignored, what):
  """Lists missing, mis-shaped and unexpected keys of state_dict against {key: shape}."""
  missing = [f"{k} (expected shape {s})" for k, s in expected.items() if k not in state_dict]
  wrong = [f"{k} has shape {tuple(np.shape(state_dict[k]))}, expected {s}"
           for k, s in expected.items() if k in state_dict and tuple(np.shape(state_dict[k])) != s]
  unexpected = [k for k in state_dict if k not in expected and not ignored.search(k)]
  out = []
  for title, items in (("missing keys", missing), ("mis-shaped keys", wrong),
                       ("unexpected keys", unexpected)):
    if items:
      out.append(f"{what} {title} ({len(items)}): " + ", ".join(items))
  return out


def abstract_params():
  """The LPIPS params tree as `jax.ShapeDtypeStruct`s (no computation)."""
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  return jax.eval_shape(LPIPS().init, jax.random.key(0), x, x)["params"]


def load_lpips(vgg_state_dict, lin_state_dict):
  """LPIPS params for `ldm_jax.models.lpips.lpips_distance` from torch-layout weights.

  vgg_state_dict: torchvision vgg16 weights (dict of arrays / tensors, or a file path).
  lin_state_dict: the lpips v0.1 VGG lin weights (dict or file path). See the module docstring.
  Raises ValueError listing every missing, mis-shaped or unexpected key with the expected shapes.
  Returns a nested dict of float32 numpy arrays {"net": ..., "lin0": ..., ..., "lin4": ...}.
  """
  vgg = read_weights(vgg_state_dict)
  vgg = {(f"features.{m.group(1)}.{m.group(2)}" if (m := _TRUNK_KEY.match(k)) else k): v
         for k, v in vgg.items()}
  lin = read_weights(lin_state_dict)
  problems = (_problems(vgg, vgg_shapes(), _VGG_IGNORED, "VGG16 weights")
              + _problems(lin, lin_shapes(), _LIN_IGNORED, "LPIPS lin weights"))
  if problems:
    raise ValueError("LPIPS weights do not match VGG16 LPIPS v0.1: " + "; ".join(problems))
  target = abstract_params()
  vgg = {k: v for k, v in vgg.items() if k in vgg_shapes()}
  lin = {k: v for k, v in lin.items() if k in lin_shapes()}
  params = {"net": torch_layout.torch_to_flax(vgg, target["net"])}
  params.update(torch_layout.torch_to_flax(lin, {k: v for k, v in target.items() if k != "net"}))
  return params


def perceptual_fn(params):
  """(x, x_hat) -> LPIPS distance [B], for `ldm_jax.stages.autoencoder.make_loss_fn`.

  x, x_hat: [B, H, W, C] in [-1, 1], C = 3 or 1 (grayscale, repeated to RGB), H, W >= 16.
  The weights are put on the device once and closed over (constants: no gradient flows to them).
  """
  params = jax.tree.map(jnp.asarray, params)

  def distance(x, x_hat):
    return lpips_distance(params, x, x_hat)

  return distance
