"""LPIPS (VGG16, v0.1) against an independent float64 torch implementation on random weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldm_jax.convert.lpips import load_lpips, perceptual_fn
from ldm_jax.models.lpips import lpips_distance, unit_normalize

# torchvision's vgg16 `features` (configuration "D"): ints are 3x3 convs (each followed by a ReLU,
# two module indices), "M" a 2x2 max-pool (one index).
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# lpips slices vgg.features[0:4], [4:9], [9:16], [16:23], [23:30]: the taps follow these indices.
TAP_AFTER = (3, 8, 15, 22, 29)
LPIPS_WIDTHS = (64, 128, 256, 512, 512)


def _features_layers():
  """[(torch index, kind, out channels)] of torchvision vgg16().features."""
  layers, i = [], 0
  for v in VGG16_CFG:
    if v == "M":
      layers.append((i, "pool", None))
      i += 1
    else:
      layers += [(i, "conv", v), (i + 1, "relu", None)]
      i += 2
  return layers


def random_vgg_state_dict(rng):
  """He-scaled random float32 weights under torchvision's keys and shapes (+ a dummy classifier)."""
  sd, c_in = {}, 3
  for i, kind, width in _features_layers():
    if kind == "conv":
      std = np.sqrt(2.0 / (9 * c_in))
      sd[f"features.{i}.weight"] = rng.normal(0, std, (width, c_in, 3, 3)).astype(np.float32)
      sd[f"features.{i}.bias"] = rng.normal(0, 0.05, (width,)).astype(np.float32)
      c_in = width
  sd["classifier.0.weight"] = rng.normal(size=(4, 3)).astype(np.float32)  # ignored by LPIPS
  return sd


def random_lin_state_dict(rng):
  return {f"lin{l}.model.1.weight": rng.uniform(0, 0.2, (1, c, 1, 1)).astype(np.float32)
          for l, c in enumerate(LPIPS_WIDTHS)}


def torch_lpips(vgg_sd, lin_sd, x, y, *, grad=False):
  """LPIPS v0.1 in float64 torch (NCHW) from the paper's definition; x, y: NHWC numpy.

  Returns d [B], or (d, dd/dx of sum(d) [B, H, W, C]) when grad is set.
  """
  w = lambda a: torch.from_numpy(np.asarray(a, np.float64))
  shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
  scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

  def trunk(img):
    h, taps = (img.permute(0, 3, 1, 2) - shift) / scale, []
    for i, kind, _ in _features_layers():
      if i > TAP_AFTER[-1]:
        break
      if kind == "conv":
        h = F.conv2d(h, w(vgg_sd[f"features.{i}.weight"]), w(vgg_sd[f"features.{i}.bias"]),
                     padding=1)
      elif kind == "relu":
        h = F.relu(h)
      else:
        h = F.max_pool2d(h, kernel_size=2, stride=2)
      if i in TAP_AFTER:
        taps.append(h)
    return taps

  tx, d = w(x).requires_grad_(grad), 0.0
  with torch.set_grad_enabled(grad):
    for l, (a, b) in enumerate(zip(trunk(tx), trunk(w(y)))):
      fa = a / (torch.sqrt(torch.sum(a * a, dim=1, keepdim=True)) + 1e-10)
      fb = b / (torch.sqrt(torch.sum(b * b, dim=1, keepdim=True)) + 1e-10)
      d = d + F.conv2d((fa - fb)**2, w(lin_sd[f"lin{l}.model.1.weight"])).mean(dim=(2, 3))
    d = d[:, 0]
  if not grad:
    return d.numpy()
  d.sum().backward()
  return d.detach().numpy(), tx.grad.numpy()


def _images(seed, shape):
  rng = np.random.default_rng(seed)
  return (rng.uniform(-1, 1, shape).astype(np.float32),
          rng.uniform(-1, 1, shape).astype(np.float32))


@pytest.fixture(scope="module")
def weights():
  rng = np.random.default_rng(0)
  vgg, lin = random_vgg_state_dict(rng), random_lin_state_dict(rng)
  return vgg, lin, load_lpips(vgg, lin)


_distance = jax.jit(lpips_distance)


@pytest.mark.parametrize("shape", [(3, 32, 32, 3), (2, 64, 64, 3)])
def test_matches_float64_torch_reference(weights, shape):
  vgg, lin, params = weights
  x, y = _images(1, shape)
  ours = np.asarray(_distance(params, x, y))
  ref = torch_lpips(vgg, lin, x, y)
  assert ours.shape == (shape[0],) and ours.dtype == np.float32
  assert np.all(ref > 1e-3)  # a non-trivial distance
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


def test_identity_and_symmetry(weights):
  _, _, params = weights
  x, y = _images(2, (3, 32, 32, 3))
  np.testing.assert_allclose(np.asarray(_distance(params, x, x)), 0.0, atol=1e-7)
  np.testing.assert_allclose(np.asarray(_distance(params, x, y)),
                             np.asarray(_distance(params, y, x)), rtol=1e-6)


def test_perceptual_fn_grayscale_under_jit_and_grad_matches_torch(weights):
  """The autoencoder-stage use: 1-channel (MNIST-like) images, the loss jitted and differentiated.

  A grayscale image counts as its RGB repeat: d is the reference's on the repeated images and
  dd/dx the reference's RGB gradient summed over channels.
  """
  vgg, lin, params = weights
  g, h = _images(5, (3, 16, 16, 1))
  fn = perceptual_fn(params)
  value_and_grad = jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(fn(a, b))))
  d, grad = value_and_grad(g, h)
  d_ref, grad_ref = torch_lpips(vgg, lin, np.repeat(g, 3, -1), np.repeat(h, 3, -1), grad=True)
  grad_ref = grad_ref.sum(-1, keepdims=True)
  assert np.all(d_ref > 1e-3) and grad.shape == g.shape
  np.testing.assert_allclose(float(d), d_ref.sum(), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), grad_ref, rtol=1e-4,
                             atol=1e-4 * np.abs(grad_ref).max())
  _, grad_min = value_and_grad(g, g)  # d(., g) is minimal (0) at g: no gradient there
  assert np.all(np.isfinite(grad_min)) and np.abs(grad_min).max() <= 1e-6 * np.abs(grad_ref).max()


def test_unit_normalize_and_its_gradient_at_zero():
  f = np.random.default_rng(6).normal(size=(2, 3, 5)).astype(np.float32)
  f[0, 1] = 0.0  # a pixel whose features are all zero (dead ReLUs)
  expected = f / (np.sqrt(np.sum(f.astype(np.float64)**2, -1, keepdims=True)) + 1e-10)
  np.testing.assert_allclose(np.asarray(unit_normalize(f)), expected, rtol=1e-6)
  w = np.random.default_rng(7).normal(size=f.shape).astype(np.float32)
  grad = np.asarray(jax.grad(lambda a: jnp.sum(w * unit_normalize(a)))(f))
  assert np.all(np.isfinite(grad))
  # At the zero pixel f / (||f|| + eps) is linear with slope 1 / eps; elsewhere
  # d/df <w, f / (n + eps)> = w / (n + eps) - f <w, f> / (n (n + eps)^2).
  np.testing.assert_allclose(grad[0, 1], w[0, 1] / 1e-10, rtol=1e-6)
  n = np.linalg.norm(f[1].astype(np.float64), axis=-1, keepdims=True)
  wf = np.sum(w[1] * f[1].astype(np.float64), -1, keepdims=True)
  np.testing.assert_allclose(grad[1], w[1] / (n + 1e-10) - f[1] * wf / (n * (n + 1e-10)**2),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("x_shape, y_shape, match", [
    ((2, 32, 32, 3), (2, 32, 32, 1), "one shape"),
    ((2, 32, 32, 2), (2, 32, 32, 2), "C = 3"),
    ((32, 32, 3), (32, 32, 3), r"\[B, H, W, C\]"),
    ((2, 8, 32, 3), (2, 8, 32, 3), "H, W >= 16"),
])
def test_bad_images_raise(weights, x_shape, y_shape, match):
  _, _, params = weights
  with pytest.raises(ValueError, match=match):
    lpips_distance(params, np.zeros(x_shape, np.float32), np.zeros(y_shape, np.float32))
