"""LPIPS perceptual distance (Zhang et al. 2018, v0.1) on a VGG16 trunk, in Flax Linen.

  d(x, y) = sum_l mean_{h,w} sum_c w_l,c (f^l_hwc(x) - f^l_hwc(y))^2,
  f^l = phi^l / (||phi^l||_c + 1e-10)

with phi^l the VGG16 activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 of the
input shifted and scaled per RGB channel, ||.||_c the Euclidean norm over channels and w_l >= 0 the
learned "lin" weights (a 1x1 convolution without bias; its dropout is inactive at evaluation).

Submodule names follow the PyTorch keys so that `ldm_jax.convert.lpips` maps weights by name:
the trunk `net/features_{i}` is torchvision's `features.{i}` (i in `VGG16_CONVS`), the head
`lin{l}/model_1` is the lpips file's `lin{l}.model.1`.

Images are NHWC in [-1, 1] with 3 (RGB) or 1 channel; a grayscale image is repeated to 3 channels
(what LPIPS of the gray image rendered as RGB gives). H and W must be at least 16 so that relu5_3
(after four 2x2 max-pools) is not empty.
"""

import flax.linen as nn
import jax.numpy as jnp

# Input normalisation of LPIPS v0.1 ("ScalingLayer"): (x - SHIFT) / SCALE per RGB channel.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# torchvision vgg16 `features` conv indices per stage (ReLU after each conv, 2x2 max-pool between
# stages); LPIPS taps the output of each stage's last ReLU: relu1_2, relu2_2, relu3_3, relu4_3,
# relu5_3.
VGG16_STAGES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
VGG16_WIDTHS = (64, 128, 256, 512, 512)
VGG16_CONVS = tuple(i for stage in VGG16_STAGES for i in stage)
MIN_SIZE = 2**(len(VGG16_STAGES) - 1)
NORM_EPS = 1e-10


class VGG16Features(nn.Module):
  """VGG16 conv trunk: x [B, H, W, 3] -> the 5 tapped activations [B, H / 2^l, W / 2^l, C_l].

  C_l = VGG16_WIDTHS[l]; conv `features_{i}` is torchvision's `vgg16().features[i]`.
  """

  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h, taps = x.astype(self.dtype), []
    for stage, (convs, width) in enumerate(zip(VGG16_STAGES, VGG16_WIDTHS)):
      if stage > 0:
        h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
      for i in convs:
        h = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    param_dtype=self.param_dtype, name=f"features_{i}")(h)
        h = nn.relu(h)
      taps.append(h)
    return tuple(taps)


class LinLayer(nn.Module):
  """The learned per-channel weights w_l: [B, H, W, C] -> [B, H, W, 1] (1x1 conv, no bias).

  The conv is named `model_1` after lpips' `Sequential(Dropout, Conv2d)`; dropout is omitted
  (inactive at evaluation).
  """

  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Conv(1, (1, 1), use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="model_1")(x)


def unit_normalize(f):
  """f / (||f||_c + 1e-10), the norm over the channel axis (lpips' normalize_tensor).

  ||f|| is computed so that its gradient stays finite where f = 0 (a pixel whose features are all
  zero after the ReLU): sqrt'(0) = inf would otherwise turn the zero cotangent into NaN.
  """
  s = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
  norm = jnp.where(s > 0, jnp.sqrt(jnp.where(s > 0, s, 1.0)), 0.0)
  return f / (norm + NORM_EPS)


def check_images(x, y):
  """Raises ValueError unless x, y are [B, H, W, C] of one shape, C in (1, 3), H, W >= 16."""
  if x.shape != y.shape:
    raise ValueError(f"LPIPS needs two images of one shape, got {x.shape} and {y.shape}.")
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"LPIPS expects images [B, H, W, C] with C = 3 (RGB) or 1 (grayscale), got "
                     f"shape {x.shape}.")
  if min(x.shape[1:3]) < MIN_SIZE:
    raise ValueError(f"LPIPS (VGG16) needs H, W >= {MIN_SIZE} (four 2x2 max-pools before relu5_3), "
                     f"got shape {x.shape}.")


class LPIPS(nn.Module):
  """LPIPS v0.1 (VGG16): x, y [B, H, W, C] in [-1, 1], C in (1, 3) -> distance [B] (float32)."""

  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, y):
    check_images(x, y)
    if x.shape[-1] == 1:  # grayscale -> RGB
      x, y = jnp.repeat(x, 3, axis=-1), jnp.repeat(y, 3, axis=-1)
    shift, scale = jnp.asarray(SHIFT, jnp.float32), jnp.asarray(SCALE, jnp.float32)
    xy = (jnp.concatenate([x, y]).astype(jnp.float32) - shift) / scale  # one trunk pass for both
    taps = VGG16Features(dtype=self.dtype, param_dtype=self.param_dtype, name="net")(xy)
    batch, d = x.shape[0], jnp.zeros((x.shape[0],), jnp.float32)
    for l, phi in enumerate(taps):
      f = unit_normalize(phi.astype(jnp.float32))
      diff = jnp.square(f[:batch] - f[batch:])
      w_diff = LinLayer(dtype=self.dtype, param_dtype=self.param_dtype, name=f"lin{l}")(diff)
      d = d + jnp.mean(w_diff.astype(jnp.float32), axis=(1, 2, 3))
    return d


def lpips_distance(params, x, y):
  """LPIPS distance [B] between images x, y [B, H, W, C] in [-1, 1] (C = 3, or 1: repeated).

  params: the `LPIPS` params tree (`ldm_jax.convert.lpips.load_lpips`).
  """
  return LPIPS().apply({"params": params}, x, y)
