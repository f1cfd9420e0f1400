"""First-stage autoencoders of latent diffusion, KL-regularised and vector-quantised (LDM sec. 3.1).

Images are float in [-1, 1], NHWC [B, H, W, C]; latents are [B, H/f, W/f, c] with
f = 2^(len(block_out_channels) - 1). Parameter trees mirror diffusers' ``AutoencoderKL`` /
``VQModel`` (``encoder``, ``decoder``, ``quant_conv``, ``post_quant_conv``, ``quantize``), so
``ldm_jax.convert.load_diffusers`` loads their weights and ``save_diffusers`` writes them back.

Usage:
  vae = KL_F8()
  mean, logvar = vae.apply({"params": params}, x, method="encode")
  x_rec = vae.apply({"params": params}, mean * vae.scaling_factor, method="decode_scaled")

One interface for both kinds (what the stages, the pipeline and the experiments call):
  ae.latent_channels                     c of the latents the diffusion model works on
  ae.latents(x, rng=None)                image -> that latent (KL: z ~ q(z|x), its mode without
                                         rng; VQ: the pre-quantisation h, LDM sec. 3.1)
  ae.decode(z)                           latent -> image (VQ quantises z first)
  ae.regularized_latents(x, rng)         (z, regulariser loss) for training: KL z ~ q(z|x) and
                                         KL[q || N(0, I)] per image; VQ z_q (straight-through) and
                                         the codebook + commitment loss; ae.regularizer names it
  ae.decode_code(z)                      decodes that z (already quantised for VQ)

Presets (functools.partial; block_out_channels = ch * ch_mult, names as in the LDM paper tab. 8):
  KL_F4:   ch 128, ch_mult (1, 2, 4), z 3 (LDM KL-f4).
  KL_F8:   ch 128, ch_mult (1, 2, 4, 4), z 4 (LDM KL-f8 = the Stable Diffusion 1.x / 2.x VAE,
           83,653,863 params).
  VQ_F4:   ch 128, ch_mult (1, 2, 4), z 3, 8192 codes (LDM VQ-f4).
  KL_TINY, VQ_TINY: 2 levels (f = 2), 32 channels, 8 groups, for tests and CPU runs.

No dropout (the published autoencoders use none); tiled decoding: ``ldm_jax.models.tiling``.
"""

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.models import precision
from ldm_jax.models.distributions import DiagonalGaussian
from ldm_jax.models.quantizer import VectorQuantizer
from ldm_jax.models.resnet import conv
from ldm_jax.models.vae_blocks import Decoder, Encoder

Dtype = Any


def check_nhwc(x, channels, factor, what):
  """Raises ValueError unless x is [B, H, W, channels] with H and W divisible by ``factor``."""
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(f"{what}: expected shape [B, H, W, {channels}], got {tuple(x.shape)}")
  if x.shape[1] % factor or x.shape[2] % factor:
    raise ValueError(f"{what}: H and W must be divisible by the downsampling factor f={factor}; "
                     f"got shape {tuple(x.shape)}")


class _Autoencoder(nn.Module):
  """Fields shared by both autoencoders (see the subclasses)."""
  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  z_channels: int = 4
  norm_groups: int = 32
  epsilon: float = 1e-6
  mid_attention: bool = True
  scaling_factor: float = 1.0
  shift_factor: float = 0.0
  remat: bool | str = False  # or a policy name of ldm_jax.models.precision
  attention_impl: str | None = None  # mid-block attention kernel: None / "xla" or "cudnn"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def downsampling_factor(self):
    """f = 2^(number of resolutions - 1)."""
    return 2 ** (len(self.block_out_channels) - 1)

  def _net_kwargs(self):
    return dict(block_out_channels=tuple(self.block_out_channels),
                layers_per_block=self.layers_per_block, norm_groups=self.norm_groups,
                epsilon=self.epsilon, mid_attention=self.mid_attention, remat=self.remat,
                attention_impl=self.attention_impl,
                dtype=self.dtype, param_dtype=self.param_dtype)

  def _conv1x1(self, features, name):
    return conv(features, 1, name=name, dtype=self.dtype, param_dtype=self.param_dtype)

  @property
  def latent_channels(self) -> int:
    """c of the latents [B, H/f, W/f, c] the diffusion model works on."""
    raise NotImplementedError

  def latents(self, x, rng=None):
    """x [B, H, W, in_channels] -> the latents [B, H/f, W/f, latent_channels] the diffusion model
    works on (float32)."""
    raise NotImplementedError

  def regularized_latents(self, x, rng):
    """x -> (z for ``decode_code``, scalar regulariser loss named by ``regularizer``)."""
    raise NotImplementedError

  def decode_code(self, z):
    """Decodes the z of ``regularized_latents`` -> image [B, H, W, out_channels] (float32)."""
    return self.decode(z)

  def decode_scaled(self, z_scaled):
    """Decodes diffusion-space latents: z = z_scaled / scaling_factor + shift_factor."""
    return self.decode(z_scaled / self.scaling_factor + self.shift_factor)


class AutoencoderKL(_Autoencoder):
  """KL-regularised autoencoder: q(z|x) = N(mean, exp(logvar)) (Rombach et al. 2022 sec. 3.1).

  Fields (besides those documented in ``vae_blocks``): in_channels / out_channels (image
  channels), z_channels (latent channels c), use_quant_conv / use_post_quant_conv (the 1x1 convs
  around the latent), scaling_factor / shift_factor (latent normalisation used by the diffusion
  model: z_diffusion = (z - shift) * scale; metadata, not used by encode / decode).
  """
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  regularizer = "kl"  # the metric name of regularized_latents' loss

  @property
  def latent_channels(self) -> int:
    return self.z_channels

  def latents(self, x, rng=None):
    """z ~ q(z|x) with rng, else its mode (the posterior mean)."""
    posterior = self.posterior(x)
    return posterior.mode() if rng is None else posterior.sample(rng)

  def regularized_latents(self, x, rng):
    """(z ~ q(z|x), KL[q(z|x) || N(0, I)] summed over the latent and averaged over the batch)."""
    posterior = self.posterior(x)
    return posterior.sample(rng), jnp.mean(posterior.kl())

  def setup(self):
    precision.attention_impl(self.attention_impl)  # "cudnn" off a GPU: a clear error, not XLA's
    kw = self._net_kwargs()
    self.encoder = Encoder(self.z_channels, double_z=True, **kw)
    self.decoder = Decoder(self.out_channels, **kw)
    if self.use_quant_conv:
      self.quant_conv = self._conv1x1(2 * self.z_channels, "quant_conv")
    if self.use_post_quant_conv:
      self.post_quant_conv = self._conv1x1(self.z_channels, "post_quant_conv")

  def encode(self, x):
    """x [B, H, W, in_channels] -> (mean, logvar), each float32 [B, H/f, W/f, z_channels]."""
    return tuple(self.posterior(x))

  def posterior(self, x):
    """x [B, H, W, in_channels] -> DiagonalGaussian over z (float32, logvar clamped)."""
    check_nhwc(x, self.in_channels, self.downsampling_factor, "AutoencoderKL.encode x")
    moments = self.encoder(x)
    if self.use_quant_conv:
      moments = self.quant_conv(moments)
    return DiagonalGaussian.from_moments(moments.astype(jnp.float32))

  def decode(self, z):
    """z [B, h, w, z_channels] -> image [B, h*f, w*f, out_channels] (float32)."""
    check_nhwc(z, self.z_channels, 1, "AutoencoderKL.decode z")
    if self.use_post_quant_conv:
      z = self.post_quant_conv(z.astype(self.dtype))
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x, rng=None):
    """Reconstructs x from z ~ q(z|x) (z = mean if rng is None) -> (x_rec, posterior)."""
    posterior = self.posterior(x)
    z = posterior.mode() if rng is None else posterior.sample(rng)
    return self.decode(z), posterior


class VQEncoding(NamedTuple):
  """Result of ``VQModel.encode`` (a pytree).

  latents: pre-quantisation latents h = quant_conv(encoder(x)) [B, h, w, embed_dim], what the LDM
    diffusion model works on (quantisation is then part of the decoder, LDM sec. 3.1).
  quantized: z_q with straight-through gradient to h [B, h, w, embed_dim].
  indices: int32 code indices [B, h, w].
  loss: scalar codebook + beta * commitment loss (float32).
  """
  latents: jax.Array
  quantized: jax.Array
  indices: jax.Array
  loss: jax.Array


class VQModel(_Autoencoder):
  """Vector-quantised autoencoder (VQGAN first stage, Esser et al. 2021; LDM VQ-f4 / VQ-f8).

  Fields: z_channels (encoder output width), embed_dim (codebook vector width D, None ->
  z_channels), num_embeddings (codebook size K), beta (commitment weight), legacy (diffusers' /
  taming's loss weighting, see ``quantizer.vq_loss``); other fields as ``AutoencoderKL``.
  """
  z_channels: int = 3
  embed_dim: int | None = None
  num_embeddings: int = 8192
  beta: float = 0.25
  legacy: bool = True
  regularizer = "vq_loss"  # the metric name of regularized_latents' loss

  @property
  def code_dim(self):
    return self.embed_dim or self.z_channels

  @property
  def latent_channels(self) -> int:
    return self.code_dim

  def latents(self, x, rng=None):
    """The pre-quantisation latents h (rng unused: the encoder is deterministic)."""
    del rng
    return self.encode(x).latents

  def regularized_latents(self, x, rng):
    """(z_q with straight-through gradient to h, codebook + beta * commitment loss)."""
    del rng
    enc = self.encode(x)
    return enc.quantized, enc.loss

  def decode_code(self, z):
    return self.decode(z, quantize=False)

  def setup(self):
    precision.attention_impl(self.attention_impl)  # "cudnn" off a GPU: a clear error, not XLA's
    kw = self._net_kwargs()
    self.encoder = Encoder(self.z_channels, double_z=False, **kw)
    self.decoder = Decoder(self.out_channels, **kw)
    self.quant_conv = self._conv1x1(self.code_dim, "quant_conv")
    self.post_quant_conv = self._conv1x1(self.z_channels, "post_quant_conv")
    self.quantize = VectorQuantizer(self.num_embeddings, self.code_dim, beta=self.beta,
                                    legacy=self.legacy, param_dtype=self.param_dtype)

  def encode(self, x):
    """x [B, H, W, in_channels] -> VQEncoding(latents, quantized, indices, loss)."""
    check_nhwc(x, self.in_channels, self.downsampling_factor, "VQModel.encode x")
    h = self.quant_conv(self.encoder(x)).astype(jnp.float32)
    z_q, indices, loss = self.quantize(h)
    return VQEncoding(h, z_q, indices, loss)

  def decode(self, z, quantize=True):
    """z [B, h, w, embed_dim] -> image [B, h*f, w*f, out_channels] (float32).

    quantize=True snaps z to the codebook first (as diffusers' VQModel.decode and LDM's
    decode_first_stage).
    """
    check_nhwc(z, self.code_dim, 1, "VQModel.decode z")
    if quantize:
      z = self.quantize(z.astype(jnp.float32))[0]
    return self.decoder(self.post_quant_conv(z.astype(self.dtype))).astype(jnp.float32)

  def decode_indices(self, indices):
    """int code indices [B, h, w] -> image [B, h*f, w*f, out_channels]."""
    return self.decode(self.quantize.lookup(indices), quantize=False)

  def __call__(self, x):
    """Reconstruction through the quantiser -> (x_rec, VQEncoding), straight-through gradients."""
    enc = self.encode(x)
    return self.decode(enc.quantized, quantize=False), enc


def _channels(ch, ch_mult):
  return tuple(ch * m for m in ch_mult)


KL_F4 = functools.partial(AutoencoderKL, block_out_channels=_channels(128, (1, 2, 4)),
                          z_channels=3, layers_per_block=2)
KL_F8 = functools.partial(AutoencoderKL, block_out_channels=_channels(128, (1, 2, 4, 4)),
                          z_channels=4, layers_per_block=2, scaling_factor=0.18215)
VQ_F4 = functools.partial(VQModel, block_out_channels=_channels(128, (1, 2, 4)), z_channels=3,
                          num_embeddings=8192, layers_per_block=2)
KL_TINY = functools.partial(AutoencoderKL, block_out_channels=(32, 32), layers_per_block=1,
                            z_channels=4, norm_groups=8)
VQ_TINY = functools.partial(VQModel, block_out_channels=(32, 32), layers_per_block=1,
                            z_channels=3, num_embeddings=64, norm_groups=8)
