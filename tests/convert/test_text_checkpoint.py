"""Tests for ldm_jax.convert.text_checkpoint: text encoders inside original single files.

References are diffusers' own single-file conversions: ``convert_ldm_clip_checkpoint`` (SD 1.x),
``convert_open_clip_checkpoint`` (SD 2.x: a random state dict in open_clip's layout, converted
into a transformers CLIPTextModel) and ``convert_ldm_bert_checkpoint`` (CompVis txt2img: a random
state dict in x-transformers' layout, loaded into diffusers' LDMBertModel); the Flax loader reads
the original layouts. Parity to 1e-5 relative in float32.
"""

import types

import numpy as np
import pytest
import torch
import transformers
from diffusers.loaders import single_file_utils as sfu
from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig
from diffusers.pipelines.stable_diffusion.convert_from_ckpt import convert_ldm_bert_checkpoint

from text_encoder_refs import IDS, assert_close, flax_outputs, tiny_clip, torch_outputs

from ldm_jax.convert import text_checkpoint as tc
from ldm_jax.text import prompts

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
WIDTH, HEADS, BLOCKS, VOCAB = 64, 4, 3, 1000


def _numpy(sd):
  return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in sd.items()}


def _random(shapes, seed):
  g = torch.Generator().manual_seed(seed)
  return {k: torch.randn(s, generator=g) * 0.3 + (0.1 if len(s) == 1 else 0.0)
          for k, s in shapes.items()}


def openclip_state_dict(seed=3):
  """open_clip's text tower (``FrozenOpenCLIPEmbedder.model``), one tensor shape at a time."""
  w, s = WIDTH, {"token_embedding.weight": (VOCAB, WIDTH), "positional_embedding": (77, WIDTH),
                 "ln_final.weight": (WIDTH,), "ln_final.bias": (WIDTH,),
                 "text_projection": (WIDTH, 32), "logit_scale": ()}
  for i in range(BLOCKS):
    b = f"transformer.resblocks.{i}."
    s.update({b + "ln_1.weight": (w,), b + "ln_1.bias": (w,), b + "attn.in_proj_weight": (3 * w, w),
              b + "attn.in_proj_bias": (3 * w,), b + "attn.out_proj.weight": (w, w),
              b + "attn.out_proj.bias": (w,), b + "ln_2.weight": (w,), b + "ln_2.bias": (w,),
              b + "mlp.c_fc.weight": (4 * w, w), b + "mlp.c_fc.bias": (4 * w,),
              b + "mlp.c_proj.weight": (w, 4 * w), b + "mlp.c_proj.bias": (w,)})
  return {tc.SD2_PREFIX + k: v for k, v in _random(s, seed).items()}


def ldm_bert_state_dict(dim=48, depth=2, inner=512, seed=4):
  """x-transformers' TransformerWrapper(Encoder(dim, depth)) with its default 8 heads x 64."""
  s = {"token_emb.weight": (VOCAB, dim), "pos_emb.emb.weight": (77, dim), "norm.weight": (dim,),
       "norm.bias": (dim,), "to_logits.weight": (VOCAB, dim), "to_logits.bias": (VOCAB,)}
  for i in range(depth):
    a, f = f"attn_layers.layers.{2 * i}.", f"attn_layers.layers.{2 * i + 1}."
    s.update({a + "0.weight": (dim,), a + "0.bias": (dim,), a + "1.to_q.weight": (inner, dim),
              a + "1.to_k.weight": (inner, dim), a + "1.to_v.weight": (inner, dim),
              a + "1.to_out.weight": (dim, inner), a + "1.to_out.bias": (dim,),
              f + "0.weight": (dim,), f + "0.bias": (dim,), f + "1.net.0.0.weight": (4 * dim, dim),
              f + "1.net.0.0.bias": (4 * dim,), f + "1.net.2.weight": (dim, 4 * dim),
              f + "1.net.2.bias": (dim,)})
  return {tc.BERT_PREFIX + k: v for k, v in _random(s, seed).items()}


def module_tree(state_dict):
  """A torch module tree holding ``state_dict`` (numeric path parts become ModuleLists)."""
  nested = {}
  for key, value in state_dict.items():
    *path, leaf = key.split(".")
    node = nested
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = value

  def build(node):
    if all(k.isdigit() for k in node):  # a Sequential; parameter-free items (GELU) as Identity
      n = max(int(k) for k in node) + 1
      return torch.nn.ModuleList([build(node[str(i)]) if str(i) in node else torch.nn.Identity()
                                  for i in range(n)])
    module = torch.nn.Module()
    for k, v in node.items():
      if isinstance(v, dict):
        setattr(module, k, build(v))
      else:
        module.register_parameter(k, torch.nn.Parameter(v))
    return module

  return build(nested)


def test_sd1_single_file():
  model = tiny_clip("quick_gelu")
  ckpt = {f"{tc.SD1_PREFIX}{k}": v for k, v in model.state_dict().items()}
  ckpt[tc.SD1_PREFIX + "embeddings.position_ids"] = torch.arange(77)[None]
  ckpt["model.diffusion_model.out.0.weight"] = torch.zeros(4)  # the rest of the checkpoint
  ref = transformers.CLIPTextModel(model.config).eval()
  converted = sfu.convert_ldm_clip_checkpoint(ckpt)
  ref.load_state_dict({k.removeprefix("text_model."): v for k, v in converted.items()
                       if not k.endswith("position_ids")})
  module, params, layout = tc.load_text_encoder_from_checkpoint(_numpy(ckpt), heads=4)
  assert layout == "sd1_clip" and module.activation == "quick_gelu" and module.layers == 3
  last, hidden = torch_outputs(ref)
  context, ours = flax_outputs(module, params, IDS.astype(np.int32))
  for a, b in zip(ours, hidden):
    assert_close(a, b)
  assert_close(context, last)


def test_sd2_single_file_through_diffusers_converter():
  ckpt = openclip_state_dict()
  config = transformers.CLIPTextConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_attention_heads=HEADS,
                                       intermediate_size=4 * WIDTH, num_hidden_layers=BLOCKS - 1,
                                       hidden_act="gelu", max_position_embeddings=77)
  ref = transformers.CLIPTextModel(config).eval()
  converted = sfu.convert_open_clip_checkpoint(ref, ckpt, prefix=tc.SD2_PREFIX)
  converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
  missing, unexpected = ref.load_state_dict(converted, strict=False)
  # diffusers drops SD 2's unused block 23 by name; in this 3-block tower that is block 2
  assert not missing and unexpected and all(
      k.startswith(f"encoder.layers.{BLOCKS - 1}.") or k == "text_projection.weight"
      for k in unexpected)
  module, params, layout = tc.load_text_encoder_from_checkpoint(_numpy(ckpt), heads=HEADS)
  assert layout == "sd2_openclip" and module.layers == BLOCKS - 1 and module.activation == "gelu"
  last, hidden = torch_outputs(ref)
  context, ours = flax_outputs(module, params, IDS.astype(np.int32))
  for a, b in zip(ours, hidden):
    assert_close(a, b)
  assert_close(context, last)
  # "last" keeps every block: one more hidden state, the first ones unchanged
  full, full_params, _ = tc.load_text_encoder_from_checkpoint(_numpy(ckpt), heads=HEADS,
                                                              openclip_layer="last")
  assert full.layers == BLOCKS
  assert_close(flax_outputs(full, full_params, IDS.astype(np.int32))[1][-2], hidden[-1])


def test_ldm_bert_single_file_through_diffusers_converter():
  ckpt = ldm_bert_state_dict()
  tree = module_tree({k.removeprefix(tc.BERT_PREFIX): v for k, v in ckpt.items()})
  config = LDMBertConfig(vocab_size=VOCAB, max_position_embeddings=77, encoder_layers=2,
                         encoder_ffn_dim=192, encoder_attention_heads=8, head_dim=64, d_model=48)
  ref = convert_ldm_bert_checkpoint(types.SimpleNamespace(transformer=tree), config).eval()
  module, params, layout = tc.load_text_encoder_from_checkpoint(_numpy(ckpt))
  assert layout == "ldm_bert" and (module.heads, module.head_dim, module.layers) == (8, 64, 2)
  last, hidden = torch_outputs(ref)
  context, ours = flax_outputs(module, params, IDS.astype(np.int32))
  for a, b in zip(ours[:-1], hidden[:-1]):
    assert_close(a, b)
  assert_close(context, last)


def test_prompt_encoder_from_checkpoint_picks_the_pad():
  ckpt = _numpy(openclip_state_dict())
  enc = prompts.prompt_encoder_from_checkpoint(ckpt, heads=HEADS)
  assert enc.tokenizer.padding["pad_id"] == 0 and enc.module.width == WIDTH
  with pytest.raises(ValueError, match="pass tokenizer=load_tokenizer"):
    prompts.prompt_encoder_from_checkpoint(_numpy(ldm_bert_state_dict()))


def test_errors_list_the_keys():
  ckpt = _numpy(openclip_state_dict())
  ckpt[tc.SD2_PREFIX + "transformer.resblocks.0.attn.extra"] = np.zeros(3)
  with pytest.raises(ValueError, match=r"unexpected keys \(1\): \['cond_stage_model.model."
                                       r"transformer.resblocks.0.attn.extra'\]"):
    tc.load_text_encoder_from_checkpoint(ckpt, heads=HEADS)
  ckpt = _numpy(ldm_bert_state_dict())
  del ckpt[tc.BERT_PREFIX + "attn_layers.layers.1.1.net.2.bias"]
  with pytest.raises(ValueError, match=r"missing keys \(1\): layers.0.fc2.bias"):
    tc.load_text_encoder_from_checkpoint(ckpt)
  with pytest.raises(ValueError, match="no supported text encoder.*cond_stage_model.model."
                                       "token_embedding.weight"):
    tc.load_text_encoder_from_checkpoint({"model.diffusion_model.x": np.zeros(1)})
  with pytest.raises(ValueError, match=r"layer 'first' not in \('penultimate', 'last'\)"):
    tc.convert_openclip(_numpy(openclip_state_dict()), layer="first")
