"""PatchGAN discriminator for autoencoder training (Isola et al. 2017; as used by Esser et al. 2021).

Rombach et al. 2022 (app. G) train their first stages with "a patch-based adversarial objective":
the taming-transformers NLayerDiscriminator, a stack of 4x4 convolutions whose output is a grid of
real/fake logits, one per receptive-field patch. Normalisation is batch statistics only (the
reference runs its BatchNorm in training mode throughout and never uses running averages), so the
module is stateless: no `batch_stats` collection to carry, shard or checkpoint. Conv kernels carry
the logical axis names `resnet.CONV_AXES` (biases ("conv_out",)); norms are unnamed.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.models import resnet

NORMS = ("batch", "group", "none")


class BatchStatNorm(nn.Module):
  """Normalises each channel by the statistics of the current batch (BatchNorm in train mode).

  x: [B, H, W, C]. Statistics in float32; scale ~ N(1, 0.02), bias 0 as in the reference init.
  """

  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", lambda k, s, d: 1.0 + 0.02 * jax.random.normal(k, s, d), (c,),
                       self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2))
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype)


class PatchDiscriminator(nn.Module):
  """NLayerDiscriminator: images [B, H, W, C] in [-1, 1] -> patch logits [B, H', W', 1].

  Attributes:
    base_channels: channels of the first conv (ndf, 64 in the reference).
    num_layers: number of stride-2 convolutions (n_layers, 3 in the reference); the receptive field
      grows with it (70x70 patches for 3).
    norm: "batch" (reference), "group" (32 groups) or "none".
  """

  base_channels: int = 64
  num_layers: int = 3
  norm: str = "batch"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  def _norm(self, name):
    if self.norm == "batch":
      return BatchStatNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    if self.norm == "group":
      return nn.GroupNorm(num_groups=32, epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                          name=name)
    return lambda x: x

  @nn.compact
  def __call__(self, x):
    if self.norm not in NORMS:
      raise ValueError(f"Unknown discriminator norm {self.norm!r}; valid choices: {', '.join(NORMS)}.")
    if x.ndim != 4:
      raise ValueError(f"PatchDiscriminator expects images [B, H, W, C], got shape {x.shape}.")
    # 4x4 kernels (named CONV_AXES like every conv), padding 1 on each side, init N(0, 0.02).
    conv = functools.partial(resnet.conv, kernel=4, padding=1, dtype=self.dtype,
                             param_dtype=self.param_dtype, kernel_init=nn.initializers.normal(0.02))
    h = conv(self.base_channels, stride=2, name="conv_0")(x.astype(self.dtype))
    h = nn.leaky_relu(h, 0.2)
    for n in range(1, self.num_layers + 1):
      # The last of these keeps the resolution (stride 1), as in the reference.
      mult = min(2**n, 8)
      stride = 2 if n < self.num_layers else 1
      h = conv(self.base_channels * mult, stride=stride, use_bias=self.norm == "none",
               name=f"conv_{n}")(h)
      h = nn.leaky_relu(self._norm(f"norm_{n}")(h), 0.2)
    return conv(1, stride=1, name="conv_out")(h).astype(jnp.float32)


PATCHGAN = functools.partial(PatchDiscriminator, base_channels=64, num_layers=3)
PATCHGAN_TINY = functools.partial(PatchDiscriminator, base_channels=16, num_layers=2)
