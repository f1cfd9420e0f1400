"""The LDM / ADM UNet denoiser eps_theta(x_t, t, c) (Rombach et al. 2022; Dhariwal & Nichol 2021).

Architecturally identical to diffusers' ``UNet2DModel`` and ``UNet2DConditionModel`` (default
options) so their weights load one-to-one (``ldm_jax.convert.load_diffusers``); submodule names
mirror diffusers attribute paths with list indices joined by "_" (``down_blocks_0/resnets_1``).

Levels: ``block_out_channels[l]`` = model_channels * channel_mult[l]; the resolution halves after
every level but the last, so H and W must be divisible by 2^(levels - 1).  Each level has a down
block and an up block chosen by name, as in diffusers:
  "DownBlock2D" / "UpBlock2D"                 resnets only,
  "AttnDownBlock2D" / "AttnUpBlock2D"         + GroupNorm self-attention after each resnet,
  "CrossAttnDownBlock2D" / "CrossAttnUpBlock2D" + a ``SpatialTransformer`` on ``context``.
Mid block: "UNetMidBlock2D" (resnet, [self-attention, resnet]), "UNetMidBlock2DCrossAttn"
(resnet, transformer, resnet) or None.

Heads (diffusers' naming is confusing; here it is literal): ``num_attention_heads`` (int or one
per level) gives the head count, head_dim = channels // heads; otherwise ``attention_head_dim``
gives the head width, heads = channels // head_dim; neither: one head of full width.
(diffusers' ``UNet2DConditionModel.attention_head_dim`` is really a head count and maps to
``num_attention_heads`` here; ``UNet2DModel.attention_head_dim`` maps to ``attention_head_dim``.)

Conditioning modes of the LDM paper: class labels ``y`` ("adm", ``num_class_embeds``), a context
sequence through cross-attention (``cross_attention_dim`` = context_dim), a spatial map
concatenated to x by the caller (``concat_conditioning``; set ``in_channels`` to the sum), and
"hybrid" = concat + context.  Logical axis names of parameters: see ``attention``,
``transformer``, ``embeddings`` and ``resnet`` (convolutions (None, None, "conv_in", "conv_out"));
norms are unnamed (``ldm_jax.train.axis_rules`` shards them by size).

Presets (end of file): UNET_SD1, LDM_CELEBAHQ, LDM_CIN_F8, and UNET_TINY / UNET_TINY_CLASS /
UNET_TINY_COND (2 levels, 32 channels) for tests and CPU runs.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ldm_jax.models import precision
from ldm_jax.models.attention import AttentionBlock
from ldm_jax.models.embeddings import TimestepEmbedding, class_embedding, timestep_embedding
from ldm_jax.models.resnet import Downsample, ResnetBlock, Upsample, conv, group_norm
from ldm_jax.models.transformer import POSITION_EMBEDDINGS, SpatialTransformer

Dtype = Any
DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D", "CrossAttnUpBlock2D")
MID_BLOCK_TYPES = (None, "UNetMidBlock2D", "UNetMidBlock2DCrossAttn")
CLASS_EMBED_TYPES = ("timestep", "context")
ATTENTION_IMPLS = (None, "xla", "cudnn")  # jax.nn.dot_product_attention(implementation=...)


def attention_kind(block_type):
  """Returns "cross", "self" or None: the attention a block type adds after each resnet."""
  if block_type is None:
    return None
  if block_type.startswith("CrossAttn") or block_type.endswith("CrossAttn"):
    return "cross"
  if block_type.startswith("Attn") or block_type == "UNetMidBlock2D":
    return "self"
  return None


def concat_conditioning(x, c):
  """Concatenates a spatial conditioning map to the noisy input (LDM "concat" / "hybrid" mode).

  x: [B, H, W, Cx], c: [B, H, W, Cc] -> [B, H, W, Cx + Cc]; build the UNet with
  ``in_channels = Cx + Cc`` and ``out_channels = Cx``.
  """
  if x.ndim != 4 or c.shape[:3] != x.shape[:3]:
    b, h, w = x.shape[:3]
    raise ValueError(f"concat_conditioning: c must be [B, H, W, Cc] = [{b}, {h}, {w}, Cc] to "
                     f"match x {x.shape}, got {c.shape}")
  return jnp.concatenate([x, c.astype(x.dtype)], axis=-1)


class _Block(nn.Module):
  """Fields shared by the down, mid and up blocks (one resolution level of the UNet)."""
  out_channels: int
  num_layers: int
  attention: str | None = None  # None | "self" | "cross"
  heads: int = 1
  head_dim: int = 1
  transformer_depth: int = 1
  use_linear_projection: bool = False
  resample: bool = False
  groups: int = 32
  attn_groups: int | None = 32
  epsilon: float = 1e-5
  dropout: float = 0.0
  time_embedding_norm: str = "default"
  output_scale_factor: float = 1.0
  downsample_padding: int = 1
  attention_impl: str | None = None
  position_embedding: str = "none"
  only_cross_attention: bool = False  # the SpatialTransformer's attn1 reads the context too
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32


def _resnet(blk, x, temb, i, train):
  return ResnetBlock(out_channels=blk.out_channels, temb_channels=temb.shape[-1],
                     groups=blk.groups, epsilon=blk.epsilon, dropout=blk.dropout,
                     time_embedding_norm=blk.time_embedding_norm,
                     output_scale_factor=blk.output_scale_factor, dtype=blk.dtype,
                     param_dtype=blk.param_dtype, name=f"resnets_{i}")(x, temb, train=train)


def _attend(blk, x, context, i, train):
  kw = dict(dtype=blk.dtype, param_dtype=blk.param_dtype, name=f"attentions_{i}")
  if blk.attention == "self":
    return AttentionBlock(blk.heads, blk.head_dim, groups=blk.attn_groups, epsilon=blk.epsilon,
                          rescale_output_factor=blk.output_scale_factor,
                          implementation=blk.attention_impl, **kw)(x)
  if blk.attention == "cross":
    return SpatialTransformer(blk.heads, blk.head_dim, depth=blk.transformer_depth,
                              groups=blk.groups, use_linear_projection=blk.use_linear_projection,
                              attention_impl=blk.attention_impl,
                              position_embedding=blk.position_embedding,
                              only_cross_attention=blk.only_cross_attention,
                              **kw)(x, context, train=train)
  return x


class DownBlock(_Block):
  """num_layers x (resnet [+ attention]) then an optional stride-2 conv.

  x: [B, H, W, C] -> (x' [B, H', W', out_channels], skips: one per layer, + one if resampled).
  """

  @nn.compact
  def __call__(self, x, temb, context, train):
    skips = []
    for i in range(self.num_layers):
      x = _attend(self, _resnet(self, x, temb, i, train), context, i, train)
      skips.append(x)
    if self.resample:
      x = Downsample(self.out_channels, padding=self.downsample_padding, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="downsamplers_0")(x)
      skips.append(x)
    return x, tuple(skips)


class MidBlock(_Block):
  """resnet, then num_layers x ([attention,] resnet), at the lowest resolution.  [B, h, w, C]."""

  @nn.compact
  def __call__(self, x, temb, context, train):
    x = _resnet(self, x, temb, 0, train)
    for i in range(self.num_layers):
      x = _resnet(self, _attend(self, x, context, i, train), temb, i + 1, train)
    return x


class UpBlock(_Block):
  """num_layers x (concat skip, resnet [+ attention]) then an optional nearest-x2 + conv.

  x: [B, H, W, C]; skips: the matching down-path activations, consumed last-first.
  """

  @nn.compact
  def __call__(self, x, skips, temb, context, train):
    for i in range(self.num_layers):
      x = jnp.concatenate([x, skips[-1 - i].astype(x.dtype)], axis=-1)
      x = _attend(self, _resnet(self, x, temb, i, train), context, i, train)
    if self.resample:
      x = Upsample(self.out_channels, dtype=self.dtype, param_dtype=self.param_dtype,
                   name="upsamplers_0")(x)
    return x


def _per_level(value, level, name, levels):
  if value is None or isinstance(value, int):
    return value
  if len(value) != levels:
    raise ValueError(f"{name} must be an int or have one entry per level ({levels}), got {value}")
  return value[level]


class UNet(nn.Module):
  """Noise-prediction UNet.  ``apply({"params": p}, x, t, *, context=None, y=None, train=False)``.

  x: [B, H, W, in_channels] (NHWC); t: [B] float32 timesteps (fractional allowed, or a scalar);
  context: [B, S, cross_attention_dim] for cross-attention models; y: int32 [B] class labels for
  ``num_class_embeds`` models.  Dropout (``train=True``) draws from the "dropout" rng.
  Returns float32 [B, H, W, out_channels].  Computation runs in ``dtype``; GroupNorm, LayerNorm,
  timestep features and attention logits/softmax run in float32.  ``remat``: rematerialise
  (gradient-checkpoint) every down/mid/up block, True / "full" saving nothing, "dots" / "dots_no_batch"
  saving matmul outputs (``ldm_jax.models.precision``).
  """
  in_channels: int = 4
  out_channels: int = 4
  block_out_channels: Sequence[int] = (320, 640, 1280, 1280)
  layers_per_block: int = 2
  down_block_types: Sequence[str] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
  up_block_types: Sequence[str] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
  mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
  mid_block_layers: int = 1  # [attention,] resnet pairs after the first mid resnet (0 or 1)
  mid_block_attention: bool = True  # UNetMidBlock2D: self-attention between its resnets
  num_attention_heads: int | Sequence[int] | None = 8
  attention_head_dim: int | Sequence[int] | None = None
  cross_attention_dim: int | None = 768
  transformer_layers_per_block: int | Sequence[int] = 1
  use_linear_projection: bool = False
  # Per level (or one bool): the cross-attention blocks' first attention reads the context too
  # (diffusers' only_cross_attention; the mid block never does, as in diffusers).
  only_cross_attention: bool | Sequence[bool] = False
  num_class_embeds: int | None = None
  # How y enters: "timestep" adds a learned class vector to the time embedding (diffusers,
  # ADM); "context" is LDM's ClassEmbedder (cin-ldm configs, conditioning_key crossattn): y ->
  # a learned [B, 1, cross_attention_dim] context that the cross-attention blocks attend to.
  class_embed_type: str = "timestep"
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  time_embedding_dim: int | None = None  # None: 4 * block_out_channels[0]
  dropout: float = 0.0
  norm_num_groups: int = 32
  attn_norm_num_groups: int | None = None  # UNetMidBlock2D attention norm; None: as diffusers
  norm_eps: float = 1e-5
  resnet_time_scale_shift: str = "default"  # "default" | "scale_shift" (ADM)
  mid_block_scale_factor: float = 1.0
  downsample_padding: int = 1
  remat: bool | str = False  # or a policy name of ldm_jax.models.precision ("full", "dots", ...)
  attention_impl: str | None = None  # None/"xla", or "cudnn" (fused GPU kernel, bf16/fp16)
  # Position features of the cross-attention tokens (`transformer.POSITION_EMBEDDINGS`): "none"
  # as diffusers / CompVis; "sincos_2d" adds fixed 2-D sin-cos features after proj_in.
  attention_position_embedding: str = "none"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def levels(self):
    return len(self.block_out_channels)

  @property
  def class_context(self):
    """True when y is embedded as the cross-attention context (no separate context input)."""
    return self.num_class_embeds is not None and self.class_embed_type == "context"

  @property
  def has_cross_attention(self):
    types = (*self.down_block_types, *self.up_block_types, self.mid_block_type)
    return any(attention_kind(b) == "cross" for b in types)

  def check_config(self):
    """Raises ValueError for block types or per-level options that do not fit together."""
    n = self.levels
    for name, types, valid in (("down_block_types", self.down_block_types, DOWN_BLOCK_TYPES),
                               ("up_block_types", self.up_block_types, UP_BLOCK_TYPES)):
      if len(types) != n:
        raise ValueError(f"{name} needs one entry per level of block_out_channels "
                         f"{tuple(self.block_out_channels)}, got {tuple(types)}")
      for t in types:
        if t not in valid:
          raise ValueError(f"{name}: unknown block type {t!r}; valid: {valid}")
    if self.mid_block_type not in MID_BLOCK_TYPES:
      raise ValueError(f"mid_block_type {self.mid_block_type!r} not in {MID_BLOCK_TYPES}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl {self.attention_impl!r} not in {ATTENTION_IMPLS}")
    if self.attention_position_embedding not in POSITION_EMBEDDINGS:
      raise ValueError(f"attention_position_embedding {self.attention_position_embedding!r}; "
                       f"valid choices: {POSITION_EMBEDDINGS}")
    precision.attention_impl(self.attention_impl)  # "cudnn" off a GPU: a clear error, not XLA's
    if self.has_cross_attention and self.cross_attention_dim is None:
      raise ValueError("cross-attention blocks need cross_attention_dim (the context width)")
    if self.class_embed_type not in CLASS_EMBED_TYPES:
      raise ValueError(f"class_embed_type {self.class_embed_type!r} not in {CLASS_EMBED_TYPES}")
    if self.class_context and not self.has_cross_attention:
      raise ValueError("class_embed_type='context' embeds y as the cross-attention context: the "
                       "UNet needs cross-attention blocks (CrossAttn*Block2D) and cross_attention_dim")

  def heads_at(self, level, channels):
    """(heads, head_dim) of the attention at ``level`` with ``channels`` channels."""
    heads = _per_level(self.num_attention_heads, level, "num_attention_heads", self.levels)
    if heads is not None:
      return heads, channels // heads
    dim = _per_level(self.attention_head_dim, level, "attention_head_dim", self.levels)
    if dim is not None:
      return channels // dim, dim
    return 1, channels

  def check_inputs(self, x, t, context, y):
    """Raises ValueError naming expected and received shapes (static shapes, before compiling)."""
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"x: expected [B, H, W, {self.in_channels}] (NHWC), got {x.shape}")
    b, h, w, _ = x.shape
    f = 2 ** (self.levels - 1)
    if h % f or w % f:
      raise ValueError(f"x: H and W must be divisible by 2^(levels-1) = {f}, got {x.shape}")
    if jnp.ndim(t) not in (0, 1) or (jnp.ndim(t) == 1 and jnp.shape(t)[0] != b):
      raise ValueError(f"t: expected shape [{b}] (or a scalar), got {jnp.shape(t)}")
    if self.class_context:
      if context is not None:
        raise ValueError(f"context {context.shape} given but this UNet builds its context from the "
                         "class labels y (class_embed_type='context')")
    elif self.has_cross_attention:
      want = (b, "S", self.cross_attention_dim)
      if context is None:
        raise ValueError(f"this UNet has cross-attention: context [B, S, D] = {want} is required")
      if context.ndim != 3 or context.shape[0] != b or context.shape[2] != self.cross_attention_dim:
        raise ValueError(f"context: expected [B, S, D] = {want}, got {context.shape}")
    elif context is not None:
      raise ValueError(f"context {context.shape} given but this UNet has no cross-attention "
                       "blocks (cross_attention_dim is unused)")
    if self.num_class_embeds is None:
      if y is not None:
        raise ValueError(f"y {jnp.shape(y)} given but this UNet is not class-conditional "
                         "(num_class_embeds=None)")
    elif y is None or jnp.shape(y) != (b,):
      got = None if y is None else jnp.shape(y)
      raise ValueError(f"y: class labels int32 [{b}] required (num_class_embeds="
                       f"{self.num_class_embeds}), got {got}")

  def _block_kwargs(self, level, block_type, out_channels):
    heads, head_dim = self.heads_at(level, out_channels)
    depth = _per_level(self.transformer_layers_per_block, level, "transformer_layers_per_block",
                       self.levels)
    return dict(out_channels=out_channels, attention=attention_kind(block_type), heads=heads,
                head_dim=head_dim, transformer_depth=depth,
                use_linear_projection=self.use_linear_projection, groups=self.norm_num_groups,
                attn_groups=self.norm_num_groups, epsilon=self.norm_eps, dropout=self.dropout,
                time_embedding_norm=self.resnet_time_scale_shift,
                downsample_padding=self.downsample_padding,
                attention_impl=self.attention_impl,
                position_embedding=self.attention_position_embedding,
                only_cross_attention=bool(_per_level(self.only_cross_attention, level,
                                                     "only_cross_attention", self.levels)),
                dtype=self.dtype, param_dtype=self.param_dtype)

  def _mid_block(self):
    kw = self._block_kwargs(self.levels - 1, self.mid_block_type, self.block_out_channels[-1])
    kw["only_cross_attention"] = False  # UNetMidBlock2DCrossAttn has no such option
    if self.mid_block_type == "UNetMidBlock2D":
      if not self.mid_block_attention:
        kw["attention"] = None
      # diffusers: the mid attention norm defaults to the resnet groups, none for scale-shift.
      default = self.norm_num_groups if self.resnet_time_scale_shift == "default" else None
      kw["attn_groups"] = self.attn_norm_num_groups or default
    kw["output_scale_factor"] = self.mid_block_scale_factor
    cls = precision.maybe_remat(MidBlock, self.remat, static_argnums=(4,))
    return cls(num_layers=self.mid_block_layers, name="mid_block", **kw)

  @nn.compact
  def __call__(self, x, t, *, context=None, y=None, train=False):
    self.check_config()
    self.check_inputs(x, t, context, y)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    boc = tuple(self.block_out_channels)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))

    # Timestep (and class) embedding, added to every resnet (Ho et al. 2020 app. B).
    t_feat = timestep_embedding(t, boc[0], flip_sin_to_cos=self.flip_sin_to_cos,
                                downscale_freq_shift=self.freq_shift)
    emb = TimestepEmbedding(self.time_embedding_dim or 4 * boc[0], name="time_embedding",
                            **kw)(t_feat)
    if self.class_context:  # LDM ClassEmbedder: c = embed(y) [B, 1, D]
      table = class_embedding(self.num_class_embeds, self.cross_attention_dim,
                              name="class_context_embedding", param_dtype=self.param_dtype)
      context = table(y.astype(jnp.int32))[:, None, :]
    elif self.num_class_embeds is not None:
      table = class_embedding(self.num_class_embeds, emb.shape[-1], name="class_embedding",
                              param_dtype=self.param_dtype)
      emb = emb + table(y.astype(jnp.int32)).astype(emb.dtype)

    h = conv(boc[0], 3, name="conv_in", **kw)(x.astype(self.dtype))
    skips = [h]
    down_cls = precision.maybe_remat(DownBlock, self.remat, static_argnums=(4,))
    for level, block_type in enumerate(self.down_block_types):
      h, s = down_cls(num_layers=self.layers_per_block, resample=level < self.levels - 1,
                      name=f"down_blocks_{level}",
                      **self._block_kwargs(level, block_type, boc[level]))(h, emb, context, train)
      skips.extend(s)

    if self.mid_block_type is not None:
      h = self._mid_block()(h, emb, context, train)

    up_cls = precision.maybe_remat(UpBlock, self.remat, static_argnums=(5,))
    n = self.layers_per_block + 1
    for i, block_type in enumerate(self.up_block_types):
      level = self.levels - 1 - i
      res, skips = tuple(skips[-n:]), skips[:-n]
      h = up_cls(num_layers=n, resample=level > 0, name=f"up_blocks_{i}",
                 **self._block_kwargs(level, block_type, boc[level]))(h, res, emb, context, train)

    h = nn.silu(group_norm(h, name="conv_norm_out", groups=self.norm_num_groups,
                           epsilon=self.norm_eps, **kw))
    return conv(self.out_channels, 3, name="conv_out", **kw)(h).astype(jnp.float32)


# Size presets.  LDM UNets: the CompVis config files; parameter counts match Rombach et al. 2022
# tab. 14 (CelebA-HQ LDM-4, 274M) and tab. 13 (ImageNet LDM-8, 395M with the class embedder).
# Stable Diffusion 1.x (diffusers' UNet2DConditionModel defaults, 8 heads): 859,520,964 params;
# latents [B, 64, 64, 4], CLIP context [B, 77, 768].
UNET_SD1 = functools.partial(UNet)
# CelebA-HQ LDM-4 (VQ-f4 latents 64x64x3): model_channels 224, channel_mult (1, 2, 3, 4),
# attention at downsampling 2, 4, 8 with 32-channel heads, unconditional.
LDM_CELEBAHQ = functools.partial(
    UNet, in_channels=3, out_channels=3, block_out_channels=(224, 448, 672, 896),
    down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * 3,
    up_block_types=("AttnUpBlock2D",) * 3 + ("UpBlock2D",), mid_block_type="UNetMidBlock2D",
    num_attention_heads=None, attention_head_dim=32, cross_attention_dim=None)
# ImageNet class-conditional LDM-8 (cin-ldm-vq-f8, latents 32x32x4): model_channels 256,
# channel_mult (1, 2, 4), spatial transformers with 32-channel heads at every level on the
# 512-wide class-embedding context [B, 1, 512] of the cond-stage ClassEmbedder.
LDM_CIN_F8 = functools.partial(
    UNet, block_out_channels=(256, 512, 1024),
    down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
    num_attention_heads=None, attention_head_dim=32, cross_attention_dim=512)
# Tiny variants for tests and CPU runs: 2 levels, 32 model channels, 8 groups.
UNET_TINY = functools.partial(
    UNet, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"), mid_block_type="UNetMidBlock2D",
    num_attention_heads=None, attention_head_dim=16, cross_attention_dim=None, norm_num_groups=8)
UNET_TINY_CLASS = functools.partial(UNET_TINY, num_class_embeds=10)  # y in [0, 10)
UNET_TINY_COND = functools.partial(
    UNet, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), num_attention_heads=2,
    cross_attention_dim=32, norm_num_groups=8)
