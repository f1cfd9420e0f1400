"""LPIPS weight conversion: torch layouts, key checks with their messages, and file formats."""

import jax
import numpy as np
import pytest
import torch

from ldm_jax.convert.lpips import abstract_params, lin_shapes, load_lpips, vgg_shapes

VGG16_FEATURES_PARAMS = 14_714_688  # torchvision vgg16().features
LIN_PARAMS = 64 + 128 + 256 + 512 + 512


@pytest.fixture(scope="module")
def state_dicts():
  """Random float32 weights under the expected keys (the shapes are checked by the param count
  here and against torchvision's layout in tests/models/test_lpips.py)."""
  rng = np.random.default_rng(0)
  draw = lambda shapes: {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  vgg = dict(draw(vgg_shapes()), **{"classifier.6.bias": np.zeros(1000, np.float32)})  # ignored
  return vgg, draw(lin_shapes())


def test_param_count_is_vgg16_features_plus_lin():
  n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract_params()))
  assert n == VGG16_FEATURES_PARAMS + LIN_PARAMS


def test_layouts(state_dicts):
  vgg, lin = state_dicts
  params = load_lpips(vgg, lin)
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda a: a.shape, abstract_params())
  np.testing.assert_array_equal(params["net"]["features_28"]["kernel"],
                                vgg["features.28.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["net"]["features_5"]["bias"], vgg["features.5.bias"])
  np.testing.assert_array_equal(params["lin3"]["model_1"]["kernel"][0, 0, :, 0],
                                lin["lin3.model.1.weight"][0, :, 0, 0])


def test_missing_misshaped_and_unexpected_keys_are_listed(state_dicts):
  vgg, lin = state_dicts
  vgg = {k: v for k, v in vgg.items() if k != "features.28.bias"}
  vgg["features.1.weight"] = np.zeros((3,), np.float32)  # a ReLU has no weights
  lin = dict(lin, **{"lin2.model.1.weight": np.zeros((1, 255, 1, 1), np.float32)})
  with pytest.raises(ValueError) as info:
    load_lpips(vgg, lin)
  msg = str(info.value)
  assert "features.28.bias (expected shape (512,))" in msg
  assert "lin2.model.1.weight has shape (1, 255, 1, 1), expected (1, 256, 1, 1)" in msg
  assert "unexpected keys (1): features.1.weight" in msg
  no_lin4 = {k: v for k, v in state_dicts[1].items() if not k.startswith("lin4")}
  with pytest.raises(ValueError, match=r"lin4.model.1.weight \(expected shape \(1, 512, 1, 1\)\)"):
    load_lpips(state_dicts[0], no_lin4)


def test_files_and_lpips_module_keys(state_dicts, tmp_path):
  from safetensors.numpy import save_file
  vgg, lin = state_dicts
  expected = load_lpips(vgg, lin)
  torch.save({k: torch.from_numpy(v) for k, v in vgg.items()}, tmp_path / "vgg16.pth")
  torch.save({k: torch.from_numpy(v) for k, v in lin.items()}, tmp_path / "vgg.pth")
  np.savez(tmp_path / "lin.npz", **lin)
  save_file(lin, str(tmp_path / "lin.safetensors"))
  for lin_file in ("vgg.pth", "lin.npz", "lin.safetensors"):
    got = load_lpips(tmp_path / "vgg16.pth", str(tmp_path / lin_file))
    jax.tree.map(np.testing.assert_array_equal, got, expected)
  # A saved lpips.LPIPS(net="vgg") state dict: trunk under net.slice{k}.{i}, plus scaling buffers.
  stage_of = {i: k for k, stage in enumerate(((0, 2), (5, 7), (10, 12, 14), (17, 19, 21),
                                               (24, 26, 28)), start=1) for i in stage}
  full = {"scaling_layer.shift": np.zeros((1, 3, 1, 1), np.float32), **lin}
  for key, value in vgg.items():
    if key.startswith("features."):
      i = int(key.split(".")[1])
      full[f"net.slice{stage_of[i]}.{i}.{key.split('.')[2]}"] = torch.from_numpy(value)
  jax.tree.map(np.testing.assert_array_equal, load_lpips(full, full), expected)
