"""Original CompVis module layouts (LDM UNet and first stages) renamed to diffusers' layouts.

Original UNet (openaimodel.py ``UNetModel``): ``time_embed``, ``input_blocks.i`` (``.0`` ResBlock
with ``in_layers`` / ``emb_layers`` / ``out_layers`` / ``skip_connection``, ``.1`` attention,
``.0.op`` downsample), ``middle_block.{0,1,2}``, ``output_blocks.i`` (``.1.conv`` / ``.2.conv``
upsample), ``out``. Attention is a ``SpatialTransformer`` (names equal to diffusers'
``Transformer2DModel``; -> ``UNet2DConditionModel``) or the legacy ``AttentionBlock`` (fused
1x1-conv ``qkv``; -> ``UNet2DModel``). Original autoencoder (model.py ``Encoder`` / ``Decoder``):
``down.l.block.j``, ``up.l.block.j`` (levels numbered from the top, diffusers' up blocks from
the bottom), ``mid.block_1`` / ``mid.attn_1`` (1x1-conv q, k, v, proj_out) / ``mid.block_2``,
``nin_shortcut``; VQ adds ``quantize.embedding``.

Every architectural number is read from tensor shapes (``infer_*_hparams``); an LDM yaml's
``params`` only supply what shapes cannot show and are cross-checked (``check_against_config``).

Heads rule (not visible in shapes): ``num_head_channels`` (heads = channels // num_head_channels
per level) or else ``num_heads`` (the same at every level). Without either, spatial transformers
use the Stable Diffusion conventions: conv ``proj_in`` -> ``num_heads=8`` (SD 1.x), linear
``proj_in`` -> ``num_head_channels=64`` (SD 2.x); the legacy ``AttentionBlock`` has no convention,
so there the config is required.

Not supported (ValueError): ``resblock_updown``, ``conv_resample=False``, attention inside the
autoencoder's down/up levels, a KL ``embed_dim`` different from ``z_channels``.
"""

SD1_NUM_HEADS = 8
SD2_NUM_HEAD_CHANNELS = 64


# ----------------------------------------------------------------------------- moving keys


class _Mover:
  """Moves tensors from an original-layout dict to diffusers names, collecting missing keys."""

  def __init__(self, src):
    self.src, self.out, self.missing = dict(src), {}, []

  def take(self, prefix):
    """Pops every tensor under ``prefix`` -> {suffix: tensor}."""
    keys = [k for k in self.src if k.startswith(prefix)]
    return {k[len(prefix):]: self.src.pop(k) for k in keys}

  def rename(self, old, new, table, optional=()):
    """Moves ``old + s`` to ``new + table[s]``; suffixes outside the table stay (unexpected)."""
    parts = self.take(old)
    for s, v in parts.items():
      if s in table:
        self.out[new + table[s]] = v
      else:
        self.src[old + s] = v
    self.missing += [old + s for s in table if s not in parts and s not in optional]

  def linear(self, old, new, bias=True):
    self.rename(old, new, {"weight": "weight", "bias": "bias"} if bias else {"weight": "weight"})

  def check(self, what):
    """-> the diffusers-named dict; else a ValueError naming the missing and unexpected keys."""
    if self.missing or self.src:
      raise ValueError(f"{what}: checkpoint does not match the inferred architecture; "
                       f"missing keys {_listed(self.missing)}; unexpected keys {_listed(self.src)}")
    return self.out


def _listed(keys, limit=30):
  keys = sorted(keys)
  return f"{keys[:limit]}{f' (+{len(keys) - limit} more)' if len(keys) > limit else ''}"


_WB = ("weight", "bias")
_UNET_RESNET = {f"{o}.{p}": f"{n}.{p}" for o, n in [
    ("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")]
    for p in _WB}
_VAE_RESNET = {f"{o}.{p}": f"{n}.{p}" for o, n in [
    ("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"),
    ("nin_shortcut", "conv_shortcut")] for p in _WB}
_SHORTCUT = ("skip_connection.weight", "skip_connection.bias", "nin_shortcut.weight",
             "nin_shortcut.bias")
_BLOCK = (["attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight", "attn2.to_q.weight",
           "attn2.to_k.weight", "attn2.to_v.weight"] +
          [f"{m}.{p}" for m in ("attn1.to_out.0", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2",
                                "norm1", "norm2", "norm3") for p in _WB])


def _spatial_transformer(mv, old, new, depth):
  """SpatialTransformer -> Transformer2DModel: the same names (CompVis and diffusers agree)."""
  table = {f"{m}.{p}": f"{m}.{p}" for m in ("norm", "proj_in", "proj_out") for p in _WB}
  table.update({f"transformer_blocks.{d}.{s}": f"transformer_blocks.{d}.{s}"
                for d in range(depth) for s in _BLOCK})
  mv.rename(old, new, table)


def _squeeze(w):
  """A 1x1 conv kernel [O, I, 1(, 1)] -> the linear weight [O, I]."""
  return w.reshape(w.shape[:2])


def _legacy_attention(mv, old, new, num_heads):
  """AttentionBlock (norm, fused 1x1-conv qkv, proj_out) -> diffusers Attention.

  QKVAttentionLegacy splits the 3C qkv channels per head first: [heads, (q, k, v), C/heads].
  """
  parts = mv.take(old)
  need = [f"{m}.{p}" for m in ("norm", "qkv", "proj_out") for p in _WB]
  mv.missing += [old + s for s in need if s not in parts]
  mv.src.update({old + s: v for s, v in parts.items() if s not in need})
  if any(s not in parts for s in need):
    return
  w, b = parts["qkv.weight"], parts["qkv.bias"]
  c = w.shape[1]
  if c % num_heads or w.shape[0] != 3 * c:
    raise ValueError(f"{old}qkv.weight {tuple(w.shape)}: expected [3C, C, 1] with C divisible by "
                     f"num_heads={num_heads}")
  w = w.reshape(num_heads, 3, c // num_heads, c)
  b = b.reshape(num_heads, 3, c // num_heads)
  for i, name in enumerate(("to_q", "to_k", "to_v")):
    mv.out[f"{new}{name}.weight"] = w[:, i].reshape(c, c)
    mv.out[f"{new}{name}.bias"] = b[:, i].reshape(c)
  mv.out[f"{new}group_norm.weight"] = parts["norm.weight"]
  mv.out[f"{new}group_norm.bias"] = parts["norm.bias"]
  mv.out[f"{new}to_out.0.weight"] = _squeeze(parts["proj_out.weight"])
  mv.out[f"{new}to_out.0.bias"] = parts["proj_out.bias"]


def _vae_attention(mv, old, new):
  """AttnBlock (norm, 1x1-conv q, k, v, proj_out) -> diffusers Attention with linear weights."""
  names = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
  mv.rename(old, new, {f"{o}.{p}": f"{n}.{p}" for o, n in names.items() for p in _WB})
  for n in ("to_q", "to_k", "to_v", "to_out.0"):
    if f"{new}{n}.weight" in mv.out:
      mv.out[f"{new}{n}.weight"] = _squeeze(mv.out[f"{new}{n}.weight"])


# ----------------------------------------------------------------------------- UNet


def _shape(sd, key, what):
  if key not in sd:
    raise ValueError(f"{what}: expected key {key!r} not in the checkpoint")
  return tuple(sd[key].shape)


def infer_unet_hparams(sd):
  """The LDM ``unet_config.params`` visible in tensor shapes (no heads). sd: prefix-stripped."""
  what = "UNet"
  mc, in_ch = _shape(sd, "input_blocks.0.0.weight", what)[:2]
  n_in = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("input_blocks."))
  ops = [i for i in range(n_in) if f"input_blocks.{i}.0.op.weight" in sd]
  if any(".".join(k.split(".")[2:4]) in ("1.in_layers", "2.in_layers")
         for k in sd if k.startswith("output_blocks.")):
    raise ValueError("UNet: resblock_updown=True (ResBlock up/downsampling) is not supported")
  levels = len(ops) + 1
  nrb, rem = divmod(n_in - levels, levels)
  if rem or ops != [(l + 1) * (nrb + 1) for l in range(levels - 1)]:
    raise ValueError(f"UNet: cannot read levels from input_blocks (downsample convs at {ops} of "
                     f"{n_in} blocks); conv_resample=False is not supported")
  first = [1 + l * (nrb + 1) for l in range(levels)]
  chans = [_shape(sd, f"input_blocks.{i}.0.out_layers.3.weight", what)[0] for i in first]
  kinds = []
  for prefix in [f"input_blocks.{i}.1." for i in first] + ["middle_block.1."]:
    kinds.append("transformer" if prefix + "proj_in.weight" in sd else
                 "legacy" if prefix + "qkv.weight" in sd else None)
  kind = kinds[-1]
  if kind is None or any(k not in (None, kind) for k in kinds):
    raise ValueError(f"UNet: middle_block.1 must be a SpatialTransformer or AttentionBlock and all "
                     f"levels the same kind; found {kinds}")
  h = dict(in_channels=in_ch, out_channels=_shape(sd, "out.2.weight", what)[0], model_channels=mc,
           num_res_blocks=nrb, channel_mult=[c // mc for c in chans],
           attention_resolutions=[2 ** l for l in range(levels) if kinds[l]],
           use_spatial_transformer=kind == "transformer",
           use_scale_shift_norm=_shape(sd, "input_blocks.1.0.emb_layers.1.weight", what)[0]
           == 2 * chans[0], context_dim=None, num_classes=None, adm_in_channels=None)
  if any(c % mc for c in chans):
    raise ValueError(f"UNet: level widths {chans} are not multiples of model_channels={mc}")
  if _shape(sd, "time_embed.0.weight", what) != (4 * mc, mc):
    raise ValueError(f"UNet: time_embed.0.weight {_shape(sd, 'time_embed.0.weight', what)}, "
                     f"expected {(4 * mc, mc)}")
  if kind == "transformer":
    blocks = lambda p: len({k[len(p):].split(".")[1] for k in sd
                            if k.startswith(p + "transformer_blocks.")})
    h["transformer_depth"] = [blocks(f"input_blocks.{i}.1.") if kinds[l] else 0
                              for l, i in enumerate(first)]
    h["transformer_depth_middle"] = blocks("middle_block.1.")
    h["context_dim"] = _shape(sd, "middle_block.1.transformer_blocks.0.attn2.to_k.weight", what)[1]
    h["use_linear_in_transformer"] = len(_shape(sd, "middle_block.1.proj_in.weight", what)) == 2
  if "label_emb.weight" in sd:
    h["num_classes"] = sd["label_emb.weight"].shape[0]
  elif "label_emb.0.0.weight" in sd:
    # the original's num_classes="sequential": a projected class vector of adm_in_channels
    h["adm_in_channels"] = sd["label_emb.0.0.weight"].shape[1]
  return h


def check_against_config(h, cfg, what):
  """Raises if a value the yaml states differs from what the tensor shapes say."""
  bad = []
  for k in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "context_dim",
            "use_spatial_transformer", "use_scale_shift_norm", "num_classes",
            "use_linear_in_transformer", "ch", "z_channels", "embed_dim", "n_embed", "out_ch"):
    got = "sequential" if k == "num_classes" and h.get("adm_in_channels") else h.get(k)
    if cfg.get(k) is not None and k in h and cfg[k] != got:
      bad.append(f"{k}: config {cfg[k]!r}, checkpoint {got!r}")
  for k in ("channel_mult", "ch_mult"):
    if cfg.get(k) is not None and k in h and list(cfg[k]) != list(h[k]):
      bad.append(f"{k}: config {list(cfg[k])}, checkpoint {h[k]}")
  if cfg.get("attention_resolutions") is not None and "channel_mult" in h:
    stated = sorted(r for r in cfg["attention_resolutions"] if r < 2 ** len(h["channel_mult"]))
    if stated != h["attention_resolutions"]:
      bad.append(f"attention_resolutions: config {stated}, checkpoint {h['attention_resolutions']}")
  depth = cfg.get("transformer_depth")
  if depth is not None and "transformer_depth" in h:
    stated = [depth] * len(h["channel_mult"]) if isinstance(depth, int) else list(depth)
    got = [d if d else s for d, s in zip(h["transformer_depth"], stated)]
    if stated != got:
      bad.append(f"transformer_depth: config {depth!r}, checkpoint {h['transformer_depth']}")
  if bad:
    raise ValueError(f"{what}: the config disagrees with the checkpoint's tensor shapes: {bad}")


def unet_heads(h, cfg):
  """Heads per level [L] and in the middle block, by the module docstring's heads rule."""
  chans = [h["model_channels"] * m for m in h["channel_mult"]]
  nhc, nh = cfg.get("num_head_channels", -1), cfg.get("num_heads", -1)
  if nhc in (None, -1) and nh in (None, -1):
    if not h["use_spatial_transformer"]:
      raise ValueError("UNet with AttentionBlock: the number of heads is not visible in the "
                       "weights; pass config with unet_config.params.num_heads or "
                       "num_head_channels")
    if h["use_linear_in_transformer"]:
      nhc = SD2_NUM_HEAD_CHANNELS
    else:
      nh = SD1_NUM_HEADS
  if nhc not in (None, -1):
    attn = [c for l, c in enumerate(chans) if 2 ** l in h["attention_resolutions"]] + chans[-1:]
    bad = [c for c in attn if c % nhc]
    if bad:
      raise ValueError(f"UNet: attention widths {bad} not divisible by num_head_channels={nhc}")
    return [max(1, c // nhc) for c in chans], chans[-1] // nhc
  return [nh] * len(chans), nh


def create_unet_config(h, cfg=None):
  """LDM UNet hparams (+ yaml ``unet_config.params``) -> a diffusers UNet config dict."""
  cfg = cfg or {}
  heads, mid_heads = unet_heads(h, cfg)
  chans = [h["model_channels"] * m for m in h["channel_mult"]]
  attn = [2 ** l in h["attention_resolutions"] for l in range(len(chans))]
  c = {"in_channels": h["in_channels"], "out_channels": h["out_channels"],
       "block_out_channels": chans, "layers_per_block": h["num_res_blocks"],
       "norm_num_groups": 32, "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0,
       "resnet_time_scale_shift": "scale_shift" if h["use_scale_shift_norm"] else "default"}
  if cfg.get("image_size"):
    c["sample_size"] = cfg["image_size"]
  if h["use_spatial_transformer"]:
    if mid_heads != heads[-1]:
      raise ValueError(f"UNet: middle block heads {mid_heads} != last level heads {heads[-1]}")
    # Levels without attention take the middle depth, so that one int covers the usual case.
    depth = [d or h["transformer_depth_middle"] for d in h["transformer_depth"]]
    if h["transformer_depth_middle"] != depth[-1]:
      raise ValueError(f"UNet: middle transformer depth {h['transformer_depth_middle']} != last "
                       f"level depth {depth[-1]} (diffusers ties them)")
    c.update(_class_name="UNet2DConditionModel",
             down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
             up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]],
             cross_attention_dim=h["context_dim"],
             attention_head_dim=heads[0] if len(set(heads)) == 1 else heads,
             use_linear_projection=h["use_linear_in_transformer"],
             transformer_layers_per_block=depth[0] if len(set(depth)) == 1 else depth)
    if h["adm_in_channels"]:
      c.update(class_embed_type="projection",
               projection_class_embeddings_input_dim=h["adm_in_channels"])
    elif h["num_classes"] is not None:
      c["num_class_embeds"] = h["num_classes"]
    return c
  dims = {c_ // n for c_, n, a in zip(chans + [chans[-1]], heads + [mid_heads], attn + [True]) if a}
  if len(dims) != 1:
    raise ValueError(f"UNet (AttentionBlock): head widths {sorted(dims)} differ between levels; "
                     "diffusers' UNet2DModel needs one (set num_head_channels)")
  c.update(_class_name="UNet2DModel",
           down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
           up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]],
           attention_head_dim=dims.pop(), attn_norm_num_groups=32, add_attention=True)
  if h["adm_in_channels"]:
    raise ValueError("UNet2DModel (AttentionBlock UNet) with num_classes='sequential' (a projected "
                     "class vector) is not supported")
  if h["num_classes"] is not None:
    c["num_class_embeds"] = h["num_classes"]
  return c


def convert_unet_state_dict(sd, h, cfg=None):
  """Original-layout UNet tensors (prefix-stripped) -> diffusers names.

  h: ``infer_unet_hparams(sd)``; cfg: the yaml's ``unet_config.params`` (for the heads).
  """
  heads, mid_heads = unet_heads(h, cfg or {})
  levels, nrb = len(h["channel_mult"]), h["num_res_blocks"]
  attn = [2 ** l in h["attention_resolutions"] for l in range(levels)]
  depth = h.get("transformer_depth", [0] * levels)
  mv = _Mover(sd)
  mv.linear("time_embed.0.", "time_embedding.linear_1.")
  mv.linear("time_embed.2.", "time_embedding.linear_2.")
  mv.linear("input_blocks.0.0.", "conv_in.")
  mv.linear("out.0.", "conv_norm_out.")
  mv.linear("out.2.", "conv_out.")
  if h["adm_in_channels"]:
    mv.linear("label_emb.0.0.", "class_embedding.linear_1.")
    mv.linear("label_emb.0.2.", "class_embedding.linear_2.")
  elif h["num_classes"] is not None:
    mv.rename("label_emb.", "class_embedding.", {"weight": "weight"})

  def attention(old, new, depth, n):
    if h["use_spatial_transformer"]:
      _spatial_transformer(mv, old, new, depth)
    else:
      _legacy_attention(mv, old, new, n)

  i = 1
  for l in range(levels):
    for j in range(nrb):
      mv.rename(f"input_blocks.{i}.0.", f"down_blocks.{l}.resnets.{j}.", _UNET_RESNET, _SHORTCUT)
      if attn[l]:
        attention(f"input_blocks.{i}.1.", f"down_blocks.{l}.attentions.{j}.", depth[l], heads[l])
      i += 1
    if l < levels - 1:
      mv.linear(f"input_blocks.{i}.0.op.", f"down_blocks.{l}.downsamplers.0.conv.")
      i += 1
  mv.rename("middle_block.0.", "mid_block.resnets.0.", _UNET_RESNET, _SHORTCUT)
  attention("middle_block.1.", "mid_block.attentions.0.", h.get("transformer_depth_middle", 0),
            mid_heads)
  mv.rename("middle_block.2.", "mid_block.resnets.1.", _UNET_RESNET, _SHORTCUT)
  i = 0
  for u in range(levels):  # diffusers up block u runs at level L-1-u
    l = levels - 1 - u
    for j in range(nrb + 1):
      mv.rename(f"output_blocks.{i}.0.", f"up_blocks.{u}.resnets.{j}.", _UNET_RESNET, _SHORTCUT)
      if attn[l]:
        attention(f"output_blocks.{i}.1.", f"up_blocks.{u}.attentions.{j}.", depth[l], heads[l])
      if l > 0 and j == nrb:
        mv.linear(f"output_blocks.{i}.{1 + attn[l]}.conv.", f"up_blocks.{u}.upsamplers.0.conv.")
      i += 1
  return mv.check("UNet (model.diffusion_model.*)")


# ----------------------------------------------------------------------------- autoencoder


def infer_vae_hparams(sd):
  """The LDM first-stage ``ddconfig`` (+ embed_dim, n_embed) visible in shapes.

  sd: the ``first_stage_model.*`` tensors, prefix stripped.
  """
  what = "autoencoder"
  ch, in_ch = _shape(sd, "encoder.conv_in.weight", what)[:2]
  levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.down."))
  nrb = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("encoder.down.0.block."))
  chans = [_shape(sd, f"encoder.down.{l}.block.0.conv2.weight", what)[0] for l in range(levels)]
  inner = sorted({k.split(".attn.")[0] + ".attn" for k in sd if ".attn." in k})
  if inner:
    raise ValueError(f"autoencoder: attention inside the down/up levels ({inner}, attn_resolutions "
                     "non-empty) is not supported (diffusers' AutoencoderKL / VQModel have none)")
  z = _shape(sd, "decoder.conv_in.weight", what)[1]
  vq = "quantize.embedding.weight" in sd
  quant = _shape(sd, "quant_conv.weight", what)[0]
  h = dict(kind="vq" if vq else "kl", ch=ch, in_channels=in_ch, ch_mult=[c // ch for c in chans],
           num_res_blocks=nrb, z_channels=z, out_ch=_shape(sd, "decoder.conv_out.weight", what)[0],
           double_z=not vq, embed_dim=quant if vq else quant // 2)
  if vq:
    h["n_embed"] = sd["quantize.embedding.weight"].shape[0]
  elif h["embed_dim"] != z:
    raise ValueError(f"autoencoder: KL embed_dim {h['embed_dim']} != z_channels {z}; diffusers' "
                     "AutoencoderKL has one latent width")
  if any(c % ch for c in chans):
    raise ValueError(f"autoencoder: level widths {chans} are not multiples of ch={ch}")
  return h


def create_vae_config(h, scale_factor, cfg=None):
  """LDM first-stage hparams -> a diffusers AutoencoderKL / VQModel config dict."""
  ddconfig = (cfg or {}).get("ddconfig", {})
  levels = len(h["ch_mult"])
  c = {"_class_name": "VQModel" if h["kind"] == "vq" else "AutoencoderKL",
       "in_channels": h["in_channels"], "out_channels": h["out_ch"],
       "down_block_types": ["DownEncoderBlock2D"] * levels,
       "up_block_types": ["UpDecoderBlock2D"] * levels,
       "block_out_channels": [h["ch"] * m for m in h["ch_mult"]],
       "layers_per_block": h["num_res_blocks"], "latent_channels": h["z_channels"],
       "norm_num_groups": 32, "act_fn": "silu", "scaling_factor": scale_factor}
  if ddconfig.get("resolution"):
    c["sample_size"] = ddconfig["resolution"]
  if h["kind"] == "vq":
    c.update(num_vq_embeddings=h["n_embed"], vq_embed_dim=h["embed_dim"])
  return c


def convert_vae_state_dict(sd, h):
  """Original-layout autoencoder tensors (prefix-stripped) -> diffusers names."""
  levels, nrb = len(h["ch_mult"]), h["num_res_blocks"]
  mv = _Mover(sd)
  for part in ("encoder", "decoder"):
    mv.linear(f"{part}.conv_in.", f"{part}.conv_in.")
    mv.linear(f"{part}.norm_out.", f"{part}.conv_norm_out.")
    mv.linear(f"{part}.conv_out.", f"{part}.conv_out.")
    mv.rename(f"{part}.mid.block_1.", f"{part}.mid_block.resnets.0.", _VAE_RESNET, _SHORTCUT)
    _vae_attention(mv, f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0.")
    mv.rename(f"{part}.mid.block_2.", f"{part}.mid_block.resnets.1.", _VAE_RESNET, _SHORTCUT)
  for l in range(levels):
    for j in range(nrb):
      mv.rename(f"encoder.down.{l}.block.{j}.", f"encoder.down_blocks.{l}.resnets.{j}.",
                _VAE_RESNET, _SHORTCUT)
    if l < levels - 1:
      mv.linear(f"encoder.down.{l}.downsample.conv.",
                f"encoder.down_blocks.{l}.downsamplers.0.conv.")
    u = levels - 1 - l  # decoder.up.{l} runs at level l; diffusers lists up blocks from the bottom
    for j in range(nrb + 1):
      mv.rename(f"decoder.up.{l}.block.{j}.", f"decoder.up_blocks.{u}.resnets.{j}.",
                _VAE_RESNET, _SHORTCUT)
    if l > 0:
      mv.linear(f"decoder.up.{l}.upsample.conv.", f"decoder.up_blocks.{u}.upsamplers.0.conv.")
  mv.linear("quant_conv.", "quant_conv.")
  mv.linear("post_quant_conv.", "post_quant_conv.")
  if h["kind"] == "vq":
    mv.rename("quantize.", "quantize.", {"embedding.weight": "embedding.weight"})
  return mv.check("autoencoder (first_stage_model.*)")
