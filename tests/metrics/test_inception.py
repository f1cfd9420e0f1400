"""FID Inception-v3: parity with an independent torch.nn network on random pt_inception weights.

The reference below is the pytorch-fid network (torchvision Inception-v3 with the TF-FID pooling:
valid-only average pools in Mixed_5b..7b, a max pool in Mixed_7c's pool branch) written here
with plain torch.nn, with torch's own bilinear F.interpolate for the resize.
"""

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldm_jax.convert.inception import load_fid_inception
from ldm_jax.metrics import inception

# torchvision's inception_v3 has 27,161,264 params; less AuxLogits (3,326,696) and fc (2,049,000).
NUM_FEATURE_PARAMS = 21_785_568


class TorchConv(nn.Module):

  def __init__(self, cin, cout, kernel, stride=1, padding=0):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _avg_valid(x):
  return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class TorchA(nn.Module):

  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = TorchConv(cin, 64, 1)
    self.branch5x5_1 = TorchConv(cin, 48, 1)
    self.branch5x5_2 = TorchConv(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = TorchConv(cin, 64, 1)
    self.branch3x3dbl_2 = TorchConv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = TorchConv(96, 96, 3, padding=1)
    self.branch_pool = TorchConv(cin, pool_features, 1)

  def forward(self, x):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_valid(x))], 1)


class TorchB(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = TorchConv(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = TorchConv(cin, 64, 1)
    self.branch3x3dbl_2 = TorchConv(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = TorchConv(96, 96, 3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class TorchC(nn.Module):

  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = TorchConv(cin, 192, 1)
    self.branch7x7_1 = TorchConv(cin, c7, 1)
    self.branch7x7_2 = TorchConv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = TorchConv(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = TorchConv(cin, c7, 1)
    self.branch7x7dbl_2 = TorchConv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = TorchConv(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = TorchConv(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = TorchConv(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = TorchConv(cin, 192, 1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for i in range(1, 6):
      bd = getattr(self, f"branch7x7dbl_{i}")(bd)
    return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_avg_valid(x))], 1)


class TorchD(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = TorchConv(cin, 192, 1)
    self.branch3x3_2 = TorchConv(192, 320, 3, stride=2)
    self.branch7x7x3_1 = TorchConv(cin, 192, 1)
    self.branch7x7x3_2 = TorchConv(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = TorchConv(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = TorchConv(192, 192, 3, stride=2)

  def forward(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = x
    for i in range(1, 5):
      b7 = getattr(self, f"branch7x7x3_{i}")(b7)
    return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class TorchE(nn.Module):

  def __init__(self, cin, max_pool):
    super().__init__()
    self.max_pool = max_pool
    self.branch1x1 = TorchConv(cin, 320, 1)
    self.branch3x3_1 = TorchConv(cin, 384, 1)
    self.branch3x3_2a = TorchConv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = TorchConv(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = TorchConv(cin, 448, 1)
    self.branch3x3dbl_2 = TorchConv(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = TorchConv(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = TorchConv(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = TorchConv(cin, 192, 1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_valid(x)
    return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                      self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd),
                      self.branch_pool(pooled)], 1)


class TorchFIDInception(nn.Module):
  """x NCHW in [0, 1] -> resize to 299 -> [-1, 1] -> pool3 [B, 2048] (pytorch-fid's forward)."""

  def __init__(self):
    super().__init__()
    self.Conv2d_1a_3x3 = TorchConv(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = TorchConv(32, 32, 3)
    self.Conv2d_2b_3x3 = TorchConv(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = TorchConv(64, 80, 1)
    self.Conv2d_4a_3x3 = TorchConv(80, 192, 3)
    self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = TorchA(192, 32), TorchA(256, 64), TorchA(288, 64)
    self.Mixed_6a = TorchB(288)
    self.Mixed_6b, self.Mixed_6c = TorchC(768, 128), TorchC(768, 160)
    self.Mixed_6d, self.Mixed_6e = TorchC(768, 160), TorchC(768, 192)
    self.Mixed_7a = TorchD(768)
    self.Mixed_7b, self.Mixed_7c = TorchE(1280, max_pool=False), TorchE(2048, max_pool=True)

  def forward(self, x):
    x = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
    x = F.max_pool2d(x, 3, stride=2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
      x = getattr(self, f"Mixed_{name}")(x)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _random_state_dict(model, seed=0):
  """Random weights in the model's key layout: He-scaled convs, BN stats with variance > 0."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, t in model.state_dict().items():
    shape = tuple(t.shape)
    if key.endswith("num_batches_tracked"):
      out[key] = t.numpy()
    elif key.endswith("conv.weight"):
      out[key] = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
    elif key.endswith("bn.weight"):
      out[key] = rng.uniform(0.5, 1.5, shape)
    elif key.endswith("running_var"):
      out[key] = rng.uniform(0.5, 2.0, shape)
    else:  # bn.bias, bn.running_mean
      out[key] = rng.normal(0, 0.1, shape)
    out[key] = out[key].astype(np.float32 if out[key].dtype == np.float64 else out[key].dtype)
  return out


@pytest.fixture(scope="module")
def reference():
  """(numpy state dict incl. fc.*, torch network with those weights, Flax variables)."""
  torch.manual_seed(0)
  model = TorchFIDInception().eval()
  state = _random_state_dict(model)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
  rng = np.random.default_rng(1)
  state["fc.weight"] = rng.normal(0, 0.01, (1008, 2048)).astype(np.float32)  # ignored
  state["fc.bias"] = np.zeros(1008, np.float32)
  return state, model, load_fid_inception(state)


def _torch_features(model, images01_nhwc):
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(images01_nhwc.transpose(0, 3, 1, 2))))


def _assert_close_features(got, want):
  got, want = np.asarray(got), want.numpy()
  assert got.shape == want.shape == (2, 2048)
  assert np.abs(want).max() > 1e-2 and np.mean(want > 0) > 0.3  # non-degenerate features
  err = np.abs(got - want).max() / np.abs(want).max()
  assert err < 2e-5, f"max relative error {err:.2e}"  # measured ~5e-7; mutations give > 0.05


def test_param_count_matches_torchvision(reference):
  _, model, variables = reference
  n_flax = sum(v.size for v in jax.tree.leaves(variables["params"]))
  n_torch = sum(p.numel() for p in model.parameters())
  assert n_flax == n_torch == NUM_FEATURE_PARAMS


def test_features_match_torch_at_299_float(reference):
  _, model, variables = reference
  x = np.random.default_rng(2).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
  got = inception.inception_features(variables, x)  # default value_range (-1, 1)
  _assert_close_features(got, _torch_features(model, (x + 1) / 2))


def test_features_match_torch_at_64_uint8_upsampled(reference):
  _, model, variables = reference
  x = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  got = inception.inception_features(variables, x)
  _assert_close_features(got, _torch_features(model, x.astype(np.float32) / 255))


@pytest.mark.parametrize("shape,size", [((64, 64), (299, 299)), ((512, 400), (299, 299)),
                                        ((37, 50), (299, 299)), ((1000, 700), (120, 299)),
                                        ((299, 299), (299, 299))])
def test_resize_matches_torch_interpolate(shape, size):
  x = np.random.default_rng(4).normal(size=(2, *shape, 3)).astype(np.float32)
  got = np.asarray(inception.resize_bilinear(x, size))
  want = F.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=size, mode="bilinear",
                       align_corners=False).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_bilinear_matrix_rows_are_convex_weights():
  for n_in, n_out in ((5, 13), (13, 5), (7, 7)):
    m = inception.bilinear_matrix(n_in, n_out)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
    assert (m >= 0).all() and ((m > 0).sum(1) <= 2).all()
  np.testing.assert_array_equal(inception.bilinear_matrix(7, 7), np.eye(7, dtype=np.float32))


def test_preprocess_value_ranges_and_grayscale_agree():
  u8 = np.random.default_rng(5).integers(0, 256, (2, 40, 30, 1), dtype=np.uint8)
  ref = np.asarray(inception.preprocess(u8))
  assert ref.shape == (2, 299, 299, 3) and ref.min() >= -1 and ref.max() <= 1
  unit = u8.astype(np.float32) / 255
  for x, value_range in ((unit, (0.0, 1.0)), (2 * unit - 1, (-1.0, 1.0)), (255 * unit, (0., 255.))):
    got = inception.preprocess(x, value_range=value_range)
    np.testing.assert_allclose(got, ref, atol=2e-6)
  np.testing.assert_allclose(inception.preprocess(np.repeat(u8, 3, -1)), ref, atol=1e-6)  # gray
  np.testing.assert_allclose(ref[..., 0], ref[..., 2], atol=1e-6)


@pytest.mark.parametrize("images,kwargs,match", [
    (np.zeros((2, 64, 64, 2), np.uint8), {}, r"C in \(1, 3\)"),
    (np.zeros((64, 64, 3), np.uint8), {}, r"\[B, H, W, C\]"),
    (np.zeros((2, 64, 64, 3), np.int32), {}, "uint8"),
    (np.zeros((2, 64, 64, 3), np.float32), {"value_range": (1.0, 0.0)}, "high > low"),
])
def test_bad_images_raise(reference, images, kwargs, match):
  with pytest.raises(ValueError, match=match):
    inception.inception_features(reference[2], images, **kwargs)


def test_converter_lists_missing_misshaped_and_unexpected_keys(reference):
  state = dict(reference[0])
  del state["Mixed_6c.branch7x7_2.conv.weight"]
  state["Mixed_7c.branch_pool.bn.running_var"] = np.ones(191, np.float32)
  state["AuxLogits.conv0.conv.weight"] = np.ones((128, 768, 1, 1), np.float32)
  with pytest.raises(ValueError) as info:
    load_fid_inception(state)
  msg = str(info.value)
  assert "Mixed_6c.branch7x7_2.conv.weight (160, 160, 1, 7)" in msg
  assert "Mixed_7c.branch_pool.bn.running_var (191,) (expected (192,))" in msg
  assert "AuxLogits.conv0.conv.weight" in msg
  with pytest.raises(ValueError, match="path to pt_inception"):
    load_fid_inception([1, 2])


def test_converter_reads_a_pth_file_of_torch_tensors(reference, tmp_path):
  state, model, variables = reference
  path = tmp_path / "pt_inception.pth"
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
  loaded = load_fid_inception(str(path))
  kernel = np.asarray(loaded["params"]["Mixed_5b"]["branch5x5_2"]["conv"]["kernel"])
  np.testing.assert_array_equal(  # OIHW -> HWIO
      kernel, model.Mixed_5b.branch5x5_2.conv.weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(loaded["batch_stats"]["Conv2d_1a_3x3"]["bn"]["var"],
                                state["Conv2d_1a_3x3.bn.running_var"])
  assert set(loaded) == {"params", "batch_stats"}
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
