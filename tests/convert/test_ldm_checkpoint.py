"""Tests for ldm_jax.convert.ldm_checkpoint: original CompVis / SD single files.

The original-layout state dicts are written here from the LDM architecture itself (the module
construction loops of CompVis' openaimodel.py UNetModel and model.py Encoder / Decoder), with
random tensors; the reference for the renaming is diffusers' own single-file conversion
(``diffusers.loaders.single_file_utils``), and diffusers' torch models (strict ``load_state_dict``)
check that both sides describe the same networks.
"""

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel, VQModel
from diffusers.loaders import single_file_utils as sfu
from safetensors.numpy import save_file

from ldm_jax.convert import ldm_checkpoint as lc
from ldm_jax.convert import ldm_layout

# diffusers' config helpers deprecate the image_size argument we pass them (sample_size only).
pytestmark = pytest.mark.filterwarnings("ignore:.*image_size.*:FutureWarning")

# ----------------------------------------------------------------------------- original layout


class _Shapes(dict):
  """{name: shape} written like the torch modules that own them."""

  def linear(self, n, o, i, bias=True):
    self[n + ".weight"] = (o, i)
    if bias:
      self[n + ".bias"] = (o,)

  def conv(self, n, o, i, k, dims=2):
    self[n + ".weight"] = (o, i) + (k,) * dims
    self[n + ".bias"] = (o,)

  def norm(self, n, c):
    self[n + ".weight"] = (c,)
    self[n + ".bias"] = (c,)


def ldm_unet_shapes(model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                    attention_resolutions=(2,), in_channels=4, out_channels=4, context_dim=16,
                    transformer_depth=1, use_linear=False, spatial=True, num_classes=None,
                    scale_shift=False, adm_in_channels=None):
  """openaimodel.UNetModel.__init__, one tensor at a time (conv_resample=True, no updown)."""
  s, mc = _Shapes(), model_channels
  emb = 4 * mc

  def resblock(n, ci, co):
    s.norm(n + ".in_layers.0", ci)
    s.conv(n + ".in_layers.2", co, ci, 3)
    s.linear(n + ".emb_layers.1", 2 * co if scale_shift else co, emb)
    s.norm(n + ".out_layers.0", co)
    s.conv(n + ".out_layers.3", co, co, 3)
    if ci != co:
      s.conv(n + ".skip_connection", co, ci, 1)

  def attention(n, c):
    s.norm(n + ".norm", c)
    if not spatial:  # AttentionBlock: conv1d qkv and proj_out
      s.conv(n + ".qkv", 3 * c, c, 1, dims=1)
      s.conv(n + ".proj_out", c, c, 1, dims=1)
      return
    proj = (lambda m: s.linear(m, c, c)) if use_linear else (lambda m: s.conv(m, c, c, 1))
    proj(n + ".proj_in")
    for d in range(transformer_depth):
      b = f"{n}.transformer_blocks.{d}"
      for a, kv in (("attn1", c), ("attn2", context_dim)):
        s.linear(f"{b}.{a}.to_q", c, c, bias=False)
        s.linear(f"{b}.{a}.to_k", c, kv, bias=False)
        s.linear(f"{b}.{a}.to_v", c, kv, bias=False)
        s.linear(f"{b}.{a}.to_out.0", c, c)
      s.linear(f"{b}.ff.net.0.proj", 8 * c, c)  # GEGLU: 2 x (4c)
      s.linear(f"{b}.ff.net.2", c, 4 * c)
      for k in (1, 2, 3):
        s.norm(f"{b}.norm{k}", c)
    proj(n + ".proj_out")

  s.linear("time_embed.0", emb, mc)
  s.linear("time_embed.2", emb, emb)
  if num_classes is not None:
    s["label_emb.weight"] = (num_classes, emb)
  if adm_in_channels is not None:  # num_classes="sequential": Linear, SiLU, Linear
    s.linear("label_emb.0.0", emb, adm_in_channels)
    s.linear("label_emb.0.2", emb, emb)
  s.conv("input_blocks.0.0", mc, in_channels, 3)
  chans, ch, ds, idx = [mc], mc, 1, 1
  for level, mult in enumerate(channel_mult):
    for _ in range(num_res_blocks):
      resblock(f"input_blocks.{idx}.0", ch, mult * mc)
      ch = mult * mc
      if ds in attention_resolutions:
        attention(f"input_blocks.{idx}.1", ch)
      chans.append(ch)
      idx += 1
    if level != len(channel_mult) - 1:
      s.conv(f"input_blocks.{idx}.0.op", ch, ch, 3)
      chans.append(ch)
      idx, ds = idx + 1, ds * 2
  resblock("middle_block.0", ch, ch)
  attention("middle_block.1", ch)
  resblock("middle_block.2", ch, ch)
  idx = 0
  for level, mult in reversed(list(enumerate(channel_mult))):
    for i in range(num_res_blocks + 1):
      resblock(f"output_blocks.{idx}.0", ch + chans.pop(), mult * mc)
      ch, layers = mult * mc, 1
      if ds in attention_resolutions:
        attention(f"output_blocks.{idx}.1", ch)
        layers = 2
      if level and i == num_res_blocks:
        s.conv(f"output_blocks.{idx}.{layers}.conv", ch, ch, 3)
        ds //= 2
      idx += 1
  s.norm("out.0", ch)
  s.conv("out.2", out_channels, mc, 3)
  return s


def ldm_vae_shapes(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4,
                   in_channels=3, out_ch=3, n_embed=None):
  """model.Encoder / Decoder (attn_resolutions=[]) + quant convs (+ VectorQuantizer if n_embed)."""
  s = _Shapes()

  def resblock(n, ci, co):
    s.norm(n + ".norm1", ci)
    s.conv(n + ".conv1", co, ci, 3)
    s.norm(n + ".norm2", co)
    s.conv(n + ".conv2", co, co, 3)
    if ci != co:
      s.conv(n + ".nin_shortcut", co, ci, 1)

  def mid(n, c):
    resblock(n + ".block_1", c, c)
    s.norm(n + ".attn_1.norm", c)
    for m in ("q", "k", "v", "proj_out"):
      s.conv(f"{n}.attn_1.{m}", c, c, 1)
    resblock(n + ".block_2", c, c)

  s.conv("encoder.conv_in", ch, in_channels, 3)
  block_in = ch
  for i, m in enumerate(ch_mult):
    for j in range(num_res_blocks):
      resblock(f"encoder.down.{i}.block.{j}", block_in, ch * m)
      block_in = ch * m
    if i != len(ch_mult) - 1:
      s.conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
  mid("encoder.mid", block_in)
  s.norm("encoder.norm_out", block_in)
  vq = n_embed is not None
  s.conv("encoder.conv_out", z_channels if vq else 2 * z_channels, block_in, 3)
  s.conv("decoder.conv_in", block_in, z_channels, 3)
  mid("decoder.mid", block_in)
  for i in reversed(range(len(ch_mult))):
    for j in range(num_res_blocks + 1):
      resblock(f"decoder.up.{i}.block.{j}", block_in, ch * ch_mult[i])
      block_in = ch * ch_mult[i]
    if i != 0:
      s.conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
  s.norm("decoder.norm_out", block_in)
  s.conv("decoder.conv_out", out_ch, block_in, 3)
  if vq:
    s.conv("quant_conv", embed_dim, z_channels, 1)
    s["quantize.embedding.weight"] = (n_embed, embed_dim)
  else:
    s.conv("quant_conv", 2 * embed_dim, 2 * z_channels, 1)
  s.conv("post_quant_conv", z_channels, embed_dim, 1)
  return s


def random_checkpoint(unet_shapes, vae_shapes, seed=0, extra=True):
  """A LatentDiffusion state dict of float32 numpy arrays, with the usual non-model keys."""
  rng = np.random.default_rng(seed)
  sd = {}
  for prefix, shapes in ((lc.UNET_PREFIX, unet_shapes), (lc.VAE_PREFIX, vae_shapes)):
    for k, shape in shapes.items():
      sd[prefix + k] = rng.normal(0.0, 0.2, shape).astype(np.float32)
  if extra:
    sd["betas"] = np.linspace(1e-4, 2e-2, 10, dtype=np.float32)
    sd["cond_stage_model.transformer.embeddings.token_embedding.weight"] = np.zeros((7, 16))
    sd["first_stage_model.loss.logvar"] = np.zeros((), np.float32)
  return sd


def original_config(unet_params, ddconfig, embed_dim=4, **model_params):
  """The ``model.params`` part of an LDM yaml."""
  return {"unet_config": {"params": unet_params},
          "first_stage_config": {"params": {"embed_dim": embed_dim, "ddconfig": ddconfig}},
          **model_params}


SD1_UNET = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32,
                attention_resolutions=[2], num_res_blocks=1, channel_mult=[1, 2], num_heads=2,
                use_spatial_transformer=True, transformer_depth=1, context_dim=16)
DDCONFIG = dict(double_z=True, z_channels=4, resolution=16, in_channels=3, out_ch=3, ch=32,
                ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
UNET_KW = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
               context_dim=16)


def _torch(sd):
  return {k: v if torch.is_tensor(v) else torch.from_numpy(np.array(v)) for k, v in sd.items()}


def assert_same_state_dict(ours, theirs):
  assert sorted(ours) == sorted(theirs)
  for k in theirs:
    a, b = np.asarray(ours[k]), theirs[k].numpy()
    assert a.shape == b.shape, k
    assert np.array_equal(a, b), k


def assert_loads_strictly(model, sd):
  """Names and shapes equal to the diffusers torch model's own state dict."""
  model.load_state_dict(_torch(sd), strict=True)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
  """A tiny SD 1.x-style checkpoint: conv proj_in, attention at level 1 only, KL f=2."""
  sd = random_checkpoint(ldm_unet_shapes(**UNET_KW), ldm_vae_shapes())
  d = tmp_path_factory.mktemp("ldm")
  save_file(sd, str(d / "tiny.safetensors"))
  torch.save({"state_dict": _torch(sd), "global_step": 3}, str(d / "tiny.ckpt"))
  return sd, d


# ----------------------------------------------------------------------------- (a) vs diffusers


class NotATensor:
  """Stands for the Lightning objects some .ckpt files pickle next to the state dict."""


def test_reads_safetensors_and_ckpt_alike(sd1, tmp_path):
  sd, d = sd1
  for name in ("tiny.safetensors", "tiny.ckpt"):
    got = lc.read_state_dict(d / name)
    assert sorted(got) == sorted(sd)
    assert all(np.array_equal(got[k], sd[k]) for k in sd)
  from safetensors.torch import save_file as save_torch
  w = torch.tensor([1.5, -2.25], dtype=torch.bfloat16)
  save_torch({"a": w}, str(tmp_path / "bf16.safetensors"))
  torch.save({"state_dict": {"a": w}}, str(tmp_path / "bf16.ckpt"))
  for name in ("bf16.safetensors", "bf16.ckpt"):
    got = lc.read_state_dict(tmp_path / name)["a"]
    assert got.dtype == jax.numpy.bfloat16 and got.astype(np.float32).tolist() == [1.5, -2.25]
  torch.save({"state_dict": {"a": w.float()}, "callbacks": NotATensor()}, str(tmp_path / "x.ckpt"))
  with pytest.raises(ValueError, match="weights_only=False"):
    lc.read_state_dict(tmp_path / "x.ckpt")
  assert lc.read_state_dict(tmp_path / "x.ckpt", weights_only=False)["a"].tolist() == [1.5, -2.25]
  with pytest.raises(ValueError, match=".safetensors"):
    lc.read_state_dict(tmp_path / "x.npz")


@pytest.mark.parametrize("variant", ["sd1", "sd2_linear", "class_labels"])
def test_unet_matches_diffusers_single_file_conversion(variant):
  """Key by key, value by value against convert_ldm_unet_checkpoint; config fields alike."""
  unet_kw, unet_cfg = dict(UNET_KW), dict(SD1_UNET)
  if variant == "sd2_linear":  # linear proj, heads from num_head_channels, depth 2, attn everywhere
    unet_kw.update(use_linear=True, transformer_depth=2, attention_resolutions=(1, 2))
    unet_cfg.update(use_linear_in_transformer=True, num_head_channels=16, transformer_depth=2,
                    attention_resolutions=[1, 2])
    del unet_cfg["num_heads"]
  if variant == "class_labels":
    unet_kw.update(num_classes=5, channel_mult=(1, 2, 2), num_res_blocks=2)
    unet_cfg.update(num_classes=5, channel_mult=[1, 2, 2], num_res_blocks=2)
  sd = random_checkpoint(ldm_unet_shapes(**unet_kw), ldm_vae_shapes(), seed=1)
  cfg = original_config(unet_cfg, DDCONFIG)

  ours = lc.convert_ldm_state_dict(sd, cfg)
  ref_config = sfu.create_unet_diffusers_config_from_ldm({"model": {"params": cfg}}, _torch(sd),
                                                         image_size=16)
  theirs = sfu.convert_ldm_unet_checkpoint(_torch(sd), ref_config)
  assert_same_state_dict(ours.unet_state_dict, theirs)
  for k in ("in_channels", "out_channels", "down_block_types", "up_block_types",
            "layers_per_block", "cross_attention_dim", "attention_head_dim",
            "use_linear_projection", "transformer_layers_per_block", "sample_size"):
    a, b = ours.unet_config[k], ref_config[k]
    assert (list(a) if isinstance(a, (list, tuple)) else a) == (
        list(b) if isinstance(b, (list, tuple)) else b), k
  assert list(ours.unet_config["block_out_channels"]) == list(ref_config["block_out_channels"])
  assert ours.unet_config.get("num_class_embeds") == ref_config.get("num_class_embeds")
  cls_kw = {k: v for k, v in ours.unet_config.items() if not k.startswith("_")}
  assert_loads_strictly(UNet2DConditionModel(**cls_kw), theirs)


def test_unet_config_inferred_from_shapes_alone():
  """No yaml: SD conventions for heads (8 for conv proj_in), everything else from shapes."""
  sd = random_checkpoint(ldm_unet_shapes(**UNET_KW, transformer_depth=2), ldm_vae_shapes())
  ours = lc.convert_ldm_state_dict(sd)
  c = ours.unet_config
  assert c["_class_name"] == "UNet2DConditionModel"
  assert c["block_out_channels"] == [32, 64] and c["layers_per_block"] == 1
  assert c["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D"]
  assert c["up_block_types"] == ["CrossAttnUpBlock2D", "UpBlock2D"]
  assert (c["cross_attention_dim"], c["attention_head_dim"], c["transformer_layers_per_block"],
          c["use_linear_projection"]) == (16, ldm_layout.SD1_NUM_HEADS, 2, False)
  cls_kw = {k: v for k, v in c.items() if not k.startswith("_")}
  assert_loads_strictly(UNet2DConditionModel(**cls_kw), ours.unet_state_dict)


def test_scale_shift_unet_loads_into_diffusers():
  unet = ldm_unet_shapes(**UNET_KW, scale_shift=True, num_classes=3)
  ours = lc.convert_ldm_state_dict(random_checkpoint(unet, ldm_vae_shapes()))
  c = ours.unet_config
  assert c["resnet_time_scale_shift"] == "scale_shift" and c["num_class_embeds"] == 3
  cls_kw = {k: v for k, v in c.items() if not k.startswith("_")}
  assert_loads_strictly(UNet2DConditionModel(**cls_kw), ours.unet_state_dict)


def test_projected_class_vector_unet_loads_into_diffusers():
  """The original's num_classes="sequential" (label_emb = Linear, SiLU, Linear of an
  adm_in_channels vector) -> diffusers' class_embed_type="projection"; a yaml that says so agrees,
  one that gives an integer num_classes is rejected."""
  unet = ldm_unet_shapes(**UNET_KW, adm_in_channels=12)
  sd = random_checkpoint(unet, ldm_vae_shapes())
  ours = lc.convert_ldm_state_dict(sd)
  c = ours.unet_config
  assert c["class_embed_type"] == "projection" and c["projection_class_embeddings_input_dim"] == 12
  assert "num_class_embeds" not in c
  cls_kw = {k: v for k, v in c.items() if not k.startswith("_")}
  assert_loads_strictly(UNet2DConditionModel(**cls_kw), ours.unet_state_dict)
  h = ldm_layout.infer_unet_hparams({k[len(lc.UNET_PREFIX):]: v for k, v in sd.items()
                                     if k.startswith(lc.UNET_PREFIX)})
  assert h["num_classes"] is None and h["adm_in_channels"] == 12
  ldm_layout.check_against_config(h, {"num_classes": "sequential"}, "UNet")
  with pytest.raises(ValueError, match="num_classes: config 10, checkpoint 'sequential'"):
    ldm_layout.check_against_config(h, {"num_classes": 10}, "UNet")


def test_kl_vae_matches_diffusers_single_file_conversion(sd1):
  sd, _ = sd1
  cfg = original_config(SD1_UNET, DDCONFIG)
  ours = lc.convert_ldm_state_dict(sd, cfg)
  ref_config = sfu.create_vae_diffusers_config_from_ldm({"model": {"params": cfg}}, _torch(sd),
                                                        image_size=16)
  theirs = sfu.convert_ldm_vae_checkpoint(_torch(sd), ref_config)
  assert_same_state_dict(ours.vae_state_dict, theirs)
  for k, v in ref_config.items():
    assert ours.vae_config[k] == v, k
  cls_kw = {k: v for k, v in ours.vae_config.items() if not k.startswith("_")}
  assert_loads_strictly(AutoencoderKL(**cls_kw), theirs)


def test_vq_first_stage_maps_to_diffusers_vqmodel():
  """diffusers' KL/VQ-shared encoder-decoder renaming, plus the codebook, loads into VQModel."""
  vae = ldm_vae_shapes(ch_mult=(1, 2, 2), z_channels=3, embed_dim=3, n_embed=16)
  sd = random_checkpoint(ldm_unet_shapes(**UNET_KW, in_channels=3, out_channels=3), vae)
  ours = lc.convert_ldm_state_dict(sd)
  c = ours.vae_config
  assert (c["_class_name"], c["num_vq_embeddings"], c["vq_embed_dim"], c["latent_channels"],
          c["block_out_channels"]) == ("VQModel", 16, 3, 3, [32, 64, 64])
  assert ours.scale_factor == lc.VQ_SCALE_FACTOR
  theirs = sfu.convert_ldm_vae_checkpoint(_torch(sd), c)  # has no codebook rule
  codebook = {"quantize.embedding.weight"}
  assert set(ours.vae_state_dict) - set(theirs) == codebook
  shared = {k: v for k, v in ours.vae_state_dict.items() if k not in codebook}
  assert_same_state_dict(shared, theirs)
  np.testing.assert_array_equal(ours.vae_state_dict["quantize.embedding.weight"],
                                sd[lc.VAE_PREFIX + "quantize.embedding.weight"])
  cls_kw = {k: v for k, v in c.items() if not k.startswith("_")}
  assert_loads_strictly(VQModel(**cls_kw), ours.vae_state_dict)


def _legacy_attention_reference(x, w_qkv, b_qkv, w_out, b_out, gn_w, gn_b, heads):
  """CompVis AttentionBlock with QKVAttentionLegacy, in float64 numpy. x: [B, C, T]."""
  b, c, t = x.shape
  g = x.reshape(b, 32, c // 32, t)
  g = (g - g.mean((2, 3), keepdims=True)) / np.sqrt(g.var((2, 3), keepdims=True) + 1e-5)
  h = g.reshape(b, c, t) * gn_w[None, :, None] + gn_b[None, :, None]
  qkv = np.einsum("oc,bct->bot", w_qkv[:, :, 0], h) + b_qkv[None, :, None]
  q, k, v = np.split(qkv.reshape(b * heads, 3 * c // heads, t), 3, axis=1)
  logits = np.einsum("bct,bcs->bts", q, k) / np.sqrt(c // heads)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  a = np.einsum("bts,bcs->bct", p, v).reshape(b, c, t)
  return x + np.einsum("oc,bct->bot", w_out[:, :, 0], a) + b_out[None, :, None]


def test_attention_block_unet_maps_to_unet2dmodel():
  """Legacy AttentionBlock UNet (LDM unconditional): fused qkv split per head, legacy order."""
  kw = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1, 2),
            in_channels=3, out_channels=3, spatial=False)
  sd = random_checkpoint(ldm_unet_shapes(**kw), ldm_vae_shapes(z_channels=3, embed_dim=3), seed=2)
  cfg = {"unet_config": {"params": {"num_head_channels": 16}}}
  ours = lc.convert_ldm_state_dict(sd, cfg)
  c = ours.unet_config
  assert (c["_class_name"], c["attention_head_dim"], c["down_block_types"]) == (
      "UNet2DModel", 16, ["AttnDownBlock2D", "AttnDownBlock2D"])
  model = UNet2DModel(**{k: v for k, v in c.items() if not k.startswith("_")})
  assert_loads_strictly(model, ours.unet_state_dict)
  with pytest.raises(ValueError, match="num_heads or num_head_channels"):
    lc.convert_ldm_state_dict(sd)  # heads are not visible in the weights

  x = np.random.default_rng(3).normal(size=(2, 64, 4, 4)).astype(np.float32)
  with torch.no_grad():
    got = model.mid_block.attentions[0](torch.from_numpy(x)).numpy()
  p = lambda n: sd[f"{lc.UNET_PREFIX}middle_block.1.{n}"].astype(np.float64)
  want = _legacy_attention_reference(x.reshape(2, 64, 16).astype(np.float64), p("qkv.weight"),
                                     p("qkv.bias"), p("proj_out.weight"), p("proj_out.bias"),
                                     p("norm.weight"), p("norm.bias"), heads=4)
  np.testing.assert_allclose(got.reshape(2, 64, 16), want, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- rules and errors


def test_missing_and_unexpected_keys_are_named():
  sd = random_checkpoint(ldm_unet_shapes(**UNET_KW), ldm_vae_shapes())
  bad = dict(sd)
  del bad[lc.UNET_PREFIX + "output_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"]
  bad[lc.UNET_PREFIX + "input_blocks.1.0.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError) as e:
    lc.convert_ldm_state_dict(bad)
  assert "output_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in str(e.value)
  assert "input_blocks.1.0.extra.weight" in str(e.value)
  bad = dict(sd)
  bad[lc.VAE_PREFIX + "decoder.up.0.block.7.conv1.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r"decoder\.up\.0\.block\.7\.conv1\.weight"):
    lc.convert_ldm_state_dict(bad)
  with pytest.raises(ValueError, match="first_stage_model"):
    lc.convert_ldm_state_dict({k: v for k, v in sd.items() if k.startswith(lc.UNET_PREFIX)})


def test_config_that_disagrees_with_shapes_is_rejected(tmp_path):
  import yaml
  sd = random_checkpoint(ldm_unet_shapes(**UNET_KW), ldm_vae_shapes())
  cfg = {"model": {"params": original_config({**SD1_UNET, "channel_mult": [1, 4]}, DDCONFIG)}}
  path = tmp_path / "bad.yaml"
  path.write_text(yaml.safe_dump(cfg))
  with pytest.raises(ValueError, match="channel_mult"):
    lc.convert_ldm_state_dict(sd, str(path))


def test_scale_factor_rule():
  sd = random_checkpoint(ldm_unet_shapes(**UNET_KW), ldm_vae_shapes())
  assert lc.convert_ldm_state_dict(sd).scale_factor == lc.SD_SCALE_FACTOR
  assert lc.convert_ldm_state_dict(sd, {"scale_factor": 0.3}).scale_factor == 0.3
  with_buffer = {**sd, "scale_factor": np.array(0.5, np.float32)}
  got = lc.convert_ldm_state_dict(with_buffer, {"scale_factor": 0.3})
  assert got.scale_factor == 0.5 and got.vae_config["scaling_factor"] == 0.5


def test_ignored_prefixes_and_ema():
  sd = random_checkpoint(ldm_unet_shapes(**UNET_KW), ldm_vae_shapes())
  ema = {"model_ema." + "diffusion_model" + k[len(lc.UNET_PREFIX):].replace(".", ""): v + 1.0
         for k, v in sd.items() if k.startswith(lc.UNET_PREFIX)}
  full = {**sd, **ema, "model_ema.decay": np.array(0.999, np.float32)}
  plain = lc.convert_ldm_state_dict(full)
  assert plain.ignored == {"betas": 1, "cond_stage_model": 1, "first_stage_model.loss.": 1,
                           "model_ema": len(ema) + 1}
  key, original = "conv_in.weight", sd[lc.UNET_PREFIX + "input_blocks.0.0.weight"]
  np.testing.assert_array_equal(plain.unet_state_dict[key], original)
  got = lc.convert_ldm_state_dict(full, use_ema=True)
  np.testing.assert_array_equal(got.unet_state_dict[key], original + 1)
  with pytest.raises(ValueError, match="model_ema"):
    lc.convert_ldm_state_dict(sd, use_ema=True)


# ----------------------------------------------------------------------------- (b) Flax parity


def _close(got, want):
  """Equal to 1e-5 relative to the reference's scale (float32 on CPU)."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _jit_apply(module, params, x, method):
  """One compiled program (eager Flax apply is slower than compiling, even for tiny models)."""
  return jax.jit(lambda p, x: module.apply({"params": p}, x, method=method))(params, x)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def test_flax_sd1_unet_and_kl_vae_match_diffusers_from_ckpt(sd1):
  """load_ldm_checkpoint(.ckpt): Flax outputs == diffusers models from diffusers' conversion."""
  sd, d = sd1
  cfg = original_config(SD1_UNET, DDCONFIG)
  got = lc.load_ldm_checkpoint(d / "tiny.ckpt", cfg)
  assert got.scale_factor == lc.SD_SCALE_FACTOR and got.ignored["cond_stage_model"] == 1
  ref_cfg = {"model": {"params": cfg}}
  unet_cfg = sfu.create_unet_diffusers_config_from_ldm(ref_cfg, _torch(sd), image_size=16)
  unet = UNet2DConditionModel(**unet_cfg).eval()
  unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(_torch(sd), unet_cfg), strict=True)
  vae_cfg = sfu.create_vae_diffusers_config_from_ldm(ref_cfg, _torch(sd), image_size=16)
  vae = AutoencoderKL(**vae_cfg).eval()
  vae.load_state_dict(sfu.convert_ldm_vae_checkpoint(_torch(sd), vae_cfg), strict=True)

  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
  t = np.array([3.0, 700.0], np.float32)
  ctx = rng.normal(size=(2, 5, 16)).astype(np.float32)
  out = jax.jit(got.unet.apply)({"params": got.unet_params}, x, t, context=ctx)
  with torch.no_grad():
    want = unet(_nchw(x), torch.from_numpy(t), encoder_hidden_states=torch.from_numpy(ctx)).sample
  _close(out, _nhwc(want))

  img = rng.uniform(-1, 1, size=(2, 16, 16, 3)).astype(np.float32)
  mean, logvar, rec = _jit_apply(got.vae, got.vae_params, img,
                                 lambda m, x: (*m.encode(x), m.decode(m.encode(x)[0])))
  with torch.no_grad():
    post = vae.encode(_nchw(img)).latent_dist
    want_rec = vae.decode(post.mean).sample
  _close(mean, _nhwc(post.mean))
  _close(logvar, _nhwc(post.logvar))
  _close(rec, _nhwc(want_rec))


def test_flax_attention_block_unet_and_vq_match_diffusers(tmp_path):
  """UNet2DModel path (fused qkv, labels, scale-shift) and the VQ first stage, via .safetensors."""
  kw = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
            in_channels=3, out_channels=3, spatial=False, num_classes=4, scale_shift=True)
  vae = ldm_vae_shapes(z_channels=3, embed_dim=3, n_embed=16)
  sd = random_checkpoint(ldm_unet_shapes(**kw), vae, seed=5)
  save_file(sd, str(tmp_path / "vq.safetensors"))
  cfg = {"unet_config": {"params": {"num_heads": 2}}}
  got = lc.load_ldm_checkpoint(tmp_path / "vq.safetensors", cfg)
  assert got.scale_factor == lc.VQ_SCALE_FACTOR
  conv = lc.convert_ldm_state_dict(sd, cfg)
  unet = UNet2DModel(**{k: v for k, v in conv.unet_config.items() if k[0] != "_"}).eval()
  unet.load_state_dict(_torch(conv.unet_state_dict), strict=True)
  vq = VQModel(**{k: v for k, v in conv.vae_config.items() if k[0] != "_"}).eval()
  vq.load_state_dict(_torch(conv.vae_state_dict), strict=True)

  rng = np.random.default_rng(6)
  x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  t, y = np.array([10.0, 500.0], np.float32), np.array([1, 3], np.int32)
  out = jax.jit(got.unet.apply)({"params": got.unet_params}, x, t, y=y)
  with torch.no_grad():
    want = unet(_nchw(x), torch.from_numpy(t), class_labels=torch.from_numpy(y).long()).sample
  _close(out, _nhwc(want))

  img = rng.uniform(-1, 1, size=(2, 16, 16, 3)).astype(np.float32)
  latents, rec = _jit_apply(got.vae, got.vae_params, img,
                            lambda m, x: (m.encode(x).latents, m.decode(m.encode(x).latents)))
  with torch.no_grad():
    h = vq.encode(_nchw(img)).latents
    want_rec = vq.decode(h).sample
  _close(latents, _nhwc(h))
  _close(rec, _nhwc(want_rec))


# ----------------------------------------------------------------------------- full-size layouts


SD1_YAML_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320,
                     attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4],
                     num_heads=8, use_spatial_transformer=True, transformer_depth=1,
                     context_dim=768)
SD2_YAML_UNET = dict(SD1_YAML_UNET, num_head_channels=64, use_linear_in_transformer=True,
                     context_dim=1024)
del SD2_YAML_UNET["num_heads"]
SD_DDCONFIG = dict(DDCONFIG, resolution=256, ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2)


@pytest.mark.parametrize("version", ["sd1", "sd2"])
def test_full_size_stable_diffusion_layouts(version):
  """Real SD 1.x / 2.x shapes (zero-memory broadcast tensors, a distinct value per key)."""
  unet_yaml = SD1_YAML_UNET if version == "sd1" else SD2_YAML_UNET
  unet = ldm_unet_shapes(model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
                         attention_resolutions=(4, 2, 1), context_dim=unet_yaml["context_dim"],
                         use_linear=version == "sd2")
  vae = ldm_vae_shapes(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2)
  sd = {}
  for prefix, shapes in ((lc.UNET_PREFIX, unet), (lc.VAE_PREFIX, vae)):
    for k, shape in shapes.items():
      sd[prefix + k] = np.broadcast_to(np.float32(len(sd)), shape)
  cfg = {"model": {"params": original_config(unet_yaml, SD_DDCONFIG)}}
  for config in (cfg, None):  # from the yaml, and from shapes + the SD head conventions alone
    ours = lc.convert_ldm_state_dict(sd, config)
    unet_cfg = sfu.create_unet_diffusers_config_from_ldm(cfg, sd, image_size=256)
    vae_cfg = sfu.create_vae_diffusers_config_from_ldm(cfg, sd, image_size=256)
    for got, want in ((ours.unet_state_dict, sfu.convert_ldm_unet_checkpoint(sd, unet_cfg)),
                      (ours.vae_state_dict, sfu.convert_ldm_vae_checkpoint(sd, vae_cfg))):
      assert sorted(got) == sorted(want)
      assert all(got[k].shape == want[k].shape and got[k].flat[0] == want[k].flat[0] for k in want)
    for k in ("attention_head_dim", "use_linear_projection", "cross_attention_dim",
              "down_block_types", "up_block_types", "block_out_channels", "layers_per_block"):
      assert ours.unet_config[k] == unet_cfg[k], k
  count = lambda d: sum(int(np.prod(v.shape)) for v in d.values())
  if version == "sd1":  # the published SD 1.x parameter counts
    assert count(ours.unet_state_dict) == 859_520_964
    assert count(ours.vae_state_dict) == 83_653_863


def test_class_embedder_checkpoint_loads_as_class_context_unet(tmp_path):
  """cin configs: cond_stage_model.embedding.weight [N, D] becomes the UNet's context table, and
  apply(y=labels) equals the plain cross-attention UNet given context = table[y][:, None]."""
  sd = random_checkpoint(ldm_unet_shapes(**UNET_KW), ldm_vae_shapes(), seed=5, extra=False)
  table = np.random.default_rng(6).normal(size=(11, 16)).astype(np.float32)
  sd["cond_stage_model.embedding.weight"] = table
  save_file(sd, str(tmp_path / "cin.safetensors"))
  cfg = original_config(SD1_UNET, DDCONFIG)
  got = lc.load_ldm_checkpoint(tmp_path / "cin.safetensors", cfg)
  assert got.unet.class_context and got.unet.num_class_embeds == 11
  assert "cond_stage_model" not in got.ignored
  np.testing.assert_array_equal(got.unet_params["class_context_embedding"]["embedding"], table)
  rng = np.random.default_rng(7)
  x = rng.normal(size=(2, 8, 8, 4)).astype(np.float32)
  t, y = np.array([3.0, 700.0], np.float32), np.array([4, 10], np.int32)
  out = jax.jit(lambda p: got.unet.apply({"params": p}, x, t, y=y))(got.unet_params)
  plain = got.unet.clone(num_class_embeds=None, class_embed_type="timestep")
  rest = {k: v for k, v in got.unet_params.items() if k != "class_context_embedding"}
  ref = jax.jit(lambda p: plain.apply({"params": p}, x, t, context=table[y][:, None, :]))(rest)
  _close(out, ref)
  sd["cond_stage_model.embedding.weight"] = table[:, :8]  # width != context_dim
  save_file(sd, str(tmp_path / "bad.safetensors"))
  with pytest.raises(ValueError, match="does not fit this UNet"):
    lc.load_ldm_checkpoint(tmp_path / "bad.safetensors", cfg)
