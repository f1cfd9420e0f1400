"""The FID Inception-v3 feature extractor: 2048-d pool3 features of the TF-FID graph, in Flax.

This is the network of Heusel et al. 2017 (FID) as ported to PyTorch by pytorch-fid
("pt_inception-2015-12-05" weights): torchvision's Inception-v3 layout (Szegedy et al. 2016) with
the TF graph's pooling quirks, which change the features and so the FID:

- the 3x3 average pools inside Mixed_5b..5d (block A), Mixed_6b..6e (block C) and Mixed_7b
  (block E) divide by the number of *valid* pixels (TF's SAME avg pool, count_include_pad=False);
- Mixed_7c's pool branch is a 3x3 *max* pool (the TF graph's quirk), not an average pool;
- Mixed_6a / Mixed_7a are the standard grid-reduction blocks (torchvision's InceptionB / D).

Every conv is ``BasicConv2d``: conv without bias, BatchNorm (eps 1e-3, running statistics) and
ReLU. The BatchNorm running statistics live in the ``batch_stats`` collection, so variables are
``{"params": ..., "batch_stats": ...}`` with module names equal to the torch attribute names
(``Mixed_5b/branch1x1/conv/kernel``); ``ldm_jax.convert.inception.load_fid_inception`` builds
them from the pt_inception state dict.

Preprocessing (``preprocess``) follows pytorch-fid: images to [0, 1], bilinear resize to 299x299
with half-pixel centres and no antialiasing (torch ``F.interpolate(mode="bilinear",
align_corners=False)``, also when downsampling), then to [-1, 1]. Note this is pytorch-fid's
resize; the original TF-FID code resized with TF1's corner-aligned-offset bilinear, so FIDs can
differ slightly from TF-FID numbers (as pytorch-fid's own README says of itself).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPSILON = 1e-3
# FID features are compared across runs and papers: full float32 convs also on GPUs/TPUs.
PRECISION = jax.lax.Precision.HIGHEST


class BasicConv2d(nn.Module):
  """conv (no bias) -> BatchNorm (eps 1e-3, running stats) -> ReLU on x [B, H, W, C_in]."""

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)  # symmetric (pad_h, pad_w), as torch's Conv2d padding
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size, self.strides, padding=((ph, ph), (pw, pw)),
                use_bias=False, dtype=self.dtype, precision=PRECISION, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, dtype=self.dtype,
                     name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3_valid_only(x):
  """3x3 stride-1 average pool, zero padding excluded from the count (TF's SAME avg pool)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, stride, pad):
  return nn.max_pool(x, (3, 3), (stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
  """35x35 block (Mixed_5b..5d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1; 224 + pool_features."""

  pool_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b1 = conv(64, (1, 1), name="branch1x1")(x)
    b5 = conv(48, (1, 1), name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3_valid_only(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35 -> 17 (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 -> 384 + 96 + C_in."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b3 = conv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block (Mixed_6b..6e) with factorised 1x7 / 7x1 convs; 4 x 192 = 768 channels out."""

  channels_7x7: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    c7 = self.channels_7x7
    row = dict(kernel_size=(1, 7), padding=(0, 3))
    col = dict(kernel_size=(7, 1), padding=(3, 0))
    b1 = conv(192, (1, 1), name="branch1x1")(x)
    b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = conv(c7, **row, name="branch7x7_2")(b7)
    b7 = conv(192, **col, name="branch7x7_3")(b7)
    bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = conv(c7, **col, name="branch7x7dbl_2")(bd)
    bd = conv(c7, **row, name="branch7x7dbl_3")(bd)
    bd = conv(c7, **col, name="branch7x7dbl_4")(bd)
    bd = conv(192, **row, name="branch7x7dbl_5")(bd)
    bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3_valid_only(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17 -> 8 (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 -> 512 + C_in."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    b3 = conv(192, (1, 1), name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
    b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block (Mixed_7b, 7c) with split 1x3 / 3x1 branches; 2048 channels out.

  pool: "avg" (Mixed_7b, valid-only average, pytorch-fid's FIDInceptionE_1) or "max" (Mixed_7c,
  pytorch-fid's FIDInceptionE_2) for the pool branch.
  """

  pool: str = "avg"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pools = {"avg": _avg_pool_3x3_valid_only, "max": lambda v: _max_pool_3x3(v, 1, 1)}
    if self.pool not in pools:
      raise ValueError(f"InceptionE pool must be one of {sorted(pools)}, got {self.pool!r}")
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    row = dict(kernel_size=(1, 3), padding=(0, 1))
    col = dict(kernel_size=(3, 1), padding=(1, 0))
    b1 = conv(320, (1, 1), name="branch1x1")(x)
    b3 = conv(384, (1, 1), name="branch3x3_1")(x)
    b3 = [conv(384, **row, name="branch3x3_2a")(b3), conv(384, **col, name="branch3x3_2b")(b3)]
    bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = [conv(384, **row, name="branch3x3dbl_3a")(bd),
          conv(384, **col, name="branch3x3dbl_3b")(bd)]
    bp = conv(192, (1, 1), name="branch_pool")(pools[self.pool](x))
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """x [B, H, W, 3] in [-1, 1] (H, W >= 75; 299 for FID) -> pool3 features [B, 2048]."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, dtype=self.dtype)
    x = conv(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)   # 149 x 149
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)                     # 147 x 147
    x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)    # 147 x 147
    x = _max_pool_3x3(x, 2, 0)                                        # 73 x 73
    x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)                    # 71 x 71
    x = _max_pool_3x3(x, 2, 0)                                        # 35 x 35
    x = InceptionA(32, dtype=self.dtype, name="Mixed_5b")(x)          # 256
    x = InceptionA(64, dtype=self.dtype, name="Mixed_5c")(x)          # 288
    x = InceptionA(64, dtype=self.dtype, name="Mixed_5d")(x)          # 288
    x = InceptionB(dtype=self.dtype, name="Mixed_6a")(x)              # 17 x 17 x 768
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, dtype=self.dtype, name=name)(x)
    x = InceptionD(dtype=self.dtype, name="Mixed_7a")(x)              # 8 x 8 x 1280
    x = InceptionE("avg", dtype=self.dtype, name="Mixed_7b")(x)       # 2048
    x = InceptionE("max", dtype=self.dtype, name="Mixed_7c")(x)       # 2048
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))               # adaptive avg pool 1x1


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of 1-D linear resampling, torch's align_corners=False convention.

  Output pixel i samples the input at s = (i + 0.5) * n_in / n_out - 0.5 (half-pixel centres),
  clamped below at 0; it mixes pixels floor(s) and floor(s) + 1 (the latter clamped to n_in - 1)
  with weights 1 - frac(s) and frac(s). No antialiasing when downsampling (torch's default).
  s is rounded as torch's CPU kernel rounds it for float32 images: a float32 scale, then one fused
  multiply-add rounded to float32 (exact in float64 before that one rounding). A float64 s
  differs from torch by up to ~1e-5 in the output for 64 -> 299, an unfused float32 one by ~4e-6.
  """
  f32 = np.float32
  scale = np.float64(f32(n_in) / f32(n_out))
  s = np.maximum(((np.arange(n_out) + 0.5) * scale - 0.5).astype(f32), f32(0.0))
  i0 = np.minimum(np.floor(s).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  frac = np.clip(s - i0.astype(f32), f32(0.0), f32(1.0)).astype(np.float64)
  m = np.zeros((n_out, n_in), np.float64)
  np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
  np.add.at(m, (np.arange(n_out), i1), frac)
  return m.astype(np.float32)


def resize_bilinear(x, size: tuple[int, int]):
  """x [B, H, W, C] float -> [B, size[0], size[1], C], as torch F.interpolate(mode="bilinear",
  align_corners=False, antialias=False) on the NCHW tensor."""
  (_, h, w, _), (oh, ow) = x.shape, size
  if (h, w) == (oh, ow):
    return x  # torch's resampling is the identity here too
  x = jnp.einsum("oh,bhwc->bowc", bilinear_matrix(h, oh), x, precision=PRECISION)
  return jnp.einsum("pw,bowc->bopc", bilinear_matrix(w, ow), x, precision=PRECISION)


def _check_images(images, value_range):
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [B, H, W, C] with C in (1, 3) (grayscale or RGB), got "
                     f"shape {images.shape}")
  if images.dtype != np.uint8 and not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be uint8 in [0, 255] or float in value_range, got dtype "
                     f"{images.dtype}")
  lo, hi = value_range
  if not hi > lo:
    raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")


@functools.partial(jax.jit, static_argnames=("value_range",))
def preprocess(images, *, value_range=(-1.0, 1.0)):
  """Images -> the network input [B, 299, 299, 3] float32 in [-1, 1], as pytorch-fid.

  images: [B, H, W, C], C in (1, 3) (grayscale is repeated to RGB); uint8 in [0, 255], or float
  in ``value_range`` (default [-1, 1], the project's image range; pytorch-fid's is (0, 1)).
  Scaled to [0, 1], resized bilinearly (``resize_bilinear``), then mapped to [-1, 1].
  """
  _check_images(images, value_range)
  if images.dtype == np.uint8:
    x = images.astype(jnp.float32) / 255.0
  else:
    lo, hi = value_range
    x = (images.astype(jnp.float32) - lo) / (hi - lo)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE))
  return 2.0 * x - 1.0


@jax.jit
def _pool3(variables, x):
  return FIDInceptionV3().apply(variables, x)


def inception_features(variables, images, *, value_range=(-1.0, 1.0)):
  """FID pool3 features [B, 2048] float32 of images [B, H, W, C] (see ``preprocess``).

  variables: ``{"params", "batch_stats"}`` of ``FIDInceptionV3`` (from
  ``ldm_jax.convert.inception.load_fid_inception``). Jittable; the network is compiled once per
  batch size whatever the input resolution.
  """
  images, value_range = jnp.asarray(images), tuple(float(v) for v in value_range)
  _check_images(images, value_range)
  return _pool3(variables, preprocess(images, value_range=value_range))
