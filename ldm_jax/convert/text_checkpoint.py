"""Text encoders inside original single-file checkpoints (SD 1.x, SD 2.x, CompVis LDM txt2img).

The conditioning model of a LatentDiffusion checkpoint lives under ``cond_stage_model.``:
  "sd1_clip"      ``FrozenCLIPEmbedder``: a transformers CLIPTextModel under
                  ``cond_stage_model.transformer.text_model.*`` (keys as transformers');
  "sd2_openclip"  ``FrozenOpenCLIPEmbedder``: open_clip's text tower under
                  ``cond_stage_model.model.*`` (``token_embedding``, ``positional_embedding``,
                  ``transformer.resblocks.N`` with a fused ``attn.in_proj_weight`` = [q; k; v],
                  ``ln_final``); SD 2.x takes the "penultimate" layer, so the last block is
                  dropped (as are ``text_projection`` and ``logit_scale``, unused);
  "ldm_bert"      ``BERTEmbedder``: x-transformers' ``TransformerWrapper`` under
                  ``cond_stage_model.transformer.*`` (``token_emb``, ``pos_emb.emb``,
                  ``attn_layers.layers.{2i}`` = [norm, attention], ``.{2i+1}`` = [norm,
                  feed-forward ``net.0.0`` / ``net.2``], ``norm``; ``to_logits`` unused).
``convert_text_state_dict`` renames these tensors to the transformers CLIPTextModel / diffusers
LDMBertModel layout (diffusers' own single-file conversion: ``convert_ldm_clip_checkpoint``,
``convert_open_clip_checkpoint``, ``convert_ldm_bert_checkpoint``) and writes the config that the
shapes imply; ``load_text_encoder_from_checkpoint`` then loads it like a folder
(``ldm_jax.convert.text_encoders``). Head counts are not visible in shapes: CLIP uses 64-wide
heads (ViT-L/14: 12, ViT-H/14: 16) and x-transformers 8 heads, unless ``heads`` says otherwise.
"""

import os
import re

import numpy as np

from ldm_jax.convert import text_encoders
from ldm_jax.convert.ldm_checkpoint import read_state_dict

SD1_PREFIX = "cond_stage_model.transformer.text_model."
SD2_PREFIX = "cond_stage_model.model."
BERT_PREFIX = "cond_stage_model.transformer."
# layout -> (prefix, a key that only that layout has, after the prefix)
LAYOUTS = {"sd1_clip": (SD1_PREFIX, "embeddings.token_embedding.weight"),
           "sd2_openclip": (SD2_PREFIX, "token_embedding.weight"),
           "ldm_bert": (BERT_PREFIX, "token_emb.weight")}
OPENCLIP_LAYERS = ("penultimate", "last")
CLIP_HEAD_DIM = 64
BERT_HEADS = 8
_OPENCLIP_IGNORED = ("text_projection", "logit_scale", "attn_mask")
_OPENCLIP_RENAMES = [
    (r"^token_embedding\.weight$", "embeddings.token_embedding.weight"),
    (r"^positional_embedding$", "embeddings.position_embedding.weight"),
    (r"^transformer\.resblocks\.(\d+)\.ln_1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^transformer\.resblocks\.(\d+)\.ln_2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"encoder.layers.\1.mlp.fc1."),
    (r"^transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"encoder.layers.\1.mlp.fc2."),
    (r"^ln_final\.", "final_layer_norm."),
]
_IN_PROJ = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
_BERT_LAYER = re.compile(r"^attn_layers\.layers\.(\d+)\.([01])\.(.+)$")
# (sub-layer kind, torch path inside it) -> diffusers LDMBertEncoderLayer path
_BERT_BLOCK = {("attn", "0"): "self_attn_layer_norm", ("ff", "0"): "final_layer_norm",
               ("attn", "1.to_q"): "self_attn.q_proj", ("attn", "1.to_k"): "self_attn.k_proj",
               ("attn", "1.to_v"): "self_attn.v_proj", ("attn", "1.to_out"): "self_attn.out_proj",
               ("ff", "1.net.0.0"): "fc1", ("ff", "1.net.2"): "fc2"}
_BERT_TOP = {"token_emb.weight": "model.embed_tokens.weight",
             "pos_emb.emb.weight": "model.embed_positions.weight",
             "norm.weight": "model.layer_norm.weight", "norm.bias": "model.layer_norm.bias"}


def text_encoder_layout(state_dict):
  """Which text encoder a LatentDiffusion state dict holds: one of ``LAYOUTS``' names."""
  for name, (prefix, marker) in LAYOUTS.items():
    if prefix + marker in state_dict:
      return name
  heads = sorted({".".join(k.split(".")[:2]) for k in state_dict if k.startswith("cond_stage")})
  raise ValueError(f"no supported text encoder in the checkpoint: expected one of "
                   f"{[p + m for p, m in LAYOUTS.values()]}; cond_stage_model keys seen under: "
                   f"{heads[:20] or 'none'}")


def _sub(state_dict, prefix):
  return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _unexpected(what, keys):
  keys = sorted(keys)
  return ValueError(f"{what}: unexpected keys ({len(keys)}): {keys[:25]}"
                    f"{' ...' if len(keys) > 25 else ''}")


def _layer_count(keys, pattern):
  found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
  return max(found) + 1 if found else 0


def _clip_config(sd, activation, heads):
  width = sd["embeddings.token_embedding.weight"].shape[1]
  if heads is None and width % CLIP_HEAD_DIM:
    raise ValueError(f"width {width} is not a multiple of {CLIP_HEAD_DIM}: pass heads=")
  return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
          "vocab_size": sd["embeddings.token_embedding.weight"].shape[0],
          "max_position_embeddings": sd["embeddings.position_embedding.weight"].shape[0],
          "hidden_size": width, "intermediate_size": sd["encoder.layers.0.mlp.fc1.weight"].shape[0],
          "num_hidden_layers": _layer_count(sd, r"^encoder\.layers\.(\d+)\."),
          "num_attention_heads": heads or width // CLIP_HEAD_DIM, "hidden_act": activation}


def convert_sd1_clip(state_dict, *, heads=None):
  """SD 1.x ``cond_stage_model.transformer.text_model.*`` -> (CLIPTextConfig dict, state dict)."""
  sd = {k: v for k, v in _sub(state_dict, SD1_PREFIX).items() if not k.endswith("position_ids")}
  return _clip_config(sd, "quick_gelu", heads), sd


def convert_openclip(state_dict, *, heads=None, layer="penultimate"):
  """SD 2.x ``cond_stage_model.model.*`` (open_clip) -> (CLIPTextConfig dict, state dict).

  layer: "penultimate" (SD 2.x: the last block is dropped) or "last" (all blocks).
  """
  if layer not in OPENCLIP_LAYERS:
    raise ValueError(f"OpenCLIP layer {layer!r} not in {OPENCLIP_LAYERS}")
  src = _sub(state_dict, SD2_PREFIX)
  blocks = _layer_count(src, r"^transformer\.resblocks\.(\d+)\.")
  dropped = f"transformer.resblocks.{blocks - 1}." if layer == "penultimate" else None
  out, unexpected = {}, []
  for key, value in src.items():
    if key in _OPENCLIP_IGNORED or (dropped and key.startswith(dropped)):
      continue
    if m := _IN_PROJ.match(key):
      for name, part in zip(("q_proj", "k_proj", "v_proj"), np.split(np.asarray(value), 3)):
        out[f"encoder.layers.{m.group(1)}.self_attn.{name}.{m.group(2)}"] = part
      continue
    for pattern, new in _OPENCLIP_RENAMES:
      if re.match(pattern, key):
        out[re.sub(pattern, new, key)] = value
        break
    else:
      unexpected.append(SD2_PREFIX + key)
  if unexpected:
    raise _unexpected("OpenCLIP text encoder", unexpected)
  return _clip_config(out, "gelu", heads), out


def convert_ldm_bert(state_dict, *, heads=None):
  """CompVis ``cond_stage_model.transformer.*`` (BERTEmbedder) -> (LDMBertConfig dict, state dict).

  x-transformers layer 2i is block i's attention, 2i+1 its feed-forward.
  """
  out, unexpected = {}, []
  for key, value in _sub(state_dict, BERT_PREFIX).items():
    m = _BERT_LAYER.match(key)
    if m:
      j, kind = int(m.group(1)), "attn" if int(m.group(1)) % 2 == 0 else "ff"
      path, leaf = f"{m.group(2)}.{m.group(3)}".rsplit(".", 1)
      new = _BERT_BLOCK.get((kind, path))
      if new is not None:
        out[f"model.layers.{j // 2}.{new}.{leaf}"] = value
        continue
    elif key in _BERT_TOP:
      out[_BERT_TOP[key]] = value
      continue
    elif key.startswith("to_logits."):
      continue
    unexpected.append(BERT_PREFIX + key)
  if unexpected:
    raise _unexpected("LDM BERTEmbedder", unexpected)
  inner, width = out["model.layers.0.self_attn.q_proj.weight"].shape
  heads = heads or BERT_HEADS
  config = {"architectures": ["LDMBertModel"], "model_type": "ldmbert",
            "vocab_size": out["model.embed_tokens.weight"].shape[0],
            "max_position_embeddings": out["model.embed_positions.weight"].shape[0],
            "d_model": width, "encoder_ffn_dim": out["model.layers.0.fc1.weight"].shape[0],
            "encoder_layers": _layer_count(out, r"^model\.layers\.(\d+)\."),
            "encoder_attention_heads": heads, "head_dim": inner // heads}
  return config, out


def convert_text_state_dict(state_dict, *, heads=None, openclip_layer="penultimate"):
  """(layout, config dict, state dict in the transformers / diffusers layout)."""
  layout = text_encoder_layout(state_dict)
  if layout == "sd1_clip":
    return (layout, *convert_sd1_clip(state_dict, heads=heads))
  if layout == "sd2_openclip":
    return (layout, *convert_openclip(state_dict, heads=heads, layer=openclip_layer))
  return (layout, *convert_ldm_bert(state_dict, heads=heads))


def load_text_encoder_from_checkpoint(checkpoint, *, heads=None, openclip_layer="penultimate",
                                      **overrides):
  """(module, params, layout) of the text encoder in a single file or its state dict.

  checkpoint: a .safetensors / .ckpt path, or the {key: array} it holds (pass the dict when
  the UNet and autoencoder are read from the same file). overrides: module fields.
  """
  if isinstance(checkpoint, (str, os.PathLike)):
    checkpoint = read_state_dict(checkpoint)
  layout, config, sd = convert_text_state_dict(checkpoint, heads=heads,
                                               openclip_layer=openclip_layer)
  module = text_encoders.text_encoder_from_config(config, **overrides)
  return module, text_encoders.text_encoder_params(sd, module), layout
