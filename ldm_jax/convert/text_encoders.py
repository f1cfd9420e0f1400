"""transformers ``CLIPTextModel`` and diffusers ``LDMBertModel`` folders -> Flax text encoders.

``load_text_encoder(path) -> (module, params)`` reads a ``text_encoder/`` folder (a diffusers
pipeline's, or any transformers ``save_pretrained`` output): config.json plus model.safetensors
(or pytorch_model.bin, or their sharded ``.index.json`` form). The class comes from the config's
"architectures" / "model_type":
  CLIPTextModel (model_type "clip_text_model")  -> ``ldm_jax.models.clip_text.CLIPTextTransformer``
  LDMBertModel  (model_type "ldmbert")          -> ``ldm_jax.models.bert_text.BERTEmbedder``
Keys: transformers >= 5.6 writes CLIPTextModel keys without the ``text_model.`` prefix, older
versions (the published SD folders) with it: both load. Ignored: the ``position_ids`` buffer,
``text_projection`` (CLIPTextModelWithProjection; the context does not use it) and LDMBert's
``to_logits`` head. Anything else missing or unexpected is a ValueError listing the keys
(``ldm_jax.convert.torch_layout.torch_to_flax``).
"""

import json
import os

import jax
import jax.numpy as jnp

from ldm_jax.convert import torch_layout
from ldm_jax.convert.ldm_checkpoint import read_state_dict
from ldm_jax.models.bert_text import BERTEmbedder
from ldm_jax.models.clip_text import ACTIVATIONS, CLIPTextTransformer

CLIP_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")
BERT_CLASSES = ("LDMBertModel",)
_MODEL_TYPES = {"clip_text_model": "CLIPTextModel", "ldmbert": "LDMBertModel"}
WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")
CLIP_IGNORED = (r"position_ids$", r"^text_projection\.")
BERT_IGNORED = (r"^to_logits\.",)


def text_encoder_class(config):
  """"CLIPTextModel", "CLIPTextModelWithProjection" or "LDMBertModel" from a config.json dict."""
  archs = config.get("architectures") or []
  cls = archs[0] if archs else _MODEL_TYPES.get(config.get("model_type"))
  if cls not in CLIP_CLASSES + BERT_CLASSES:
    raise ValueError(f"text encoder class {cls!r} (architectures {archs}, model_type "
                     f"{config.get('model_type')!r}) is not supported; supported: "
                     f"{CLIP_CLASSES + BERT_CLASSES}")
  return cls


def clip_text_from_config(config, **overrides):
  """``CLIPTextTransformer`` of a transformers CLIPTextConfig dict (its defaults where absent).

  overrides: module fields (dtype, param_dtype, remat, attention_impl, clip_skip, ...).
  """
  act = config.get("hidden_act", "quick_gelu")
  if act not in ACTIVATIONS:
    raise ValueError(f"CLIP hidden_act {act!r} is not supported; supported: {tuple(ACTIVATIONS)}")
  fields = dict(vocab_size=config.get("vocab_size", 49408),
                max_length=config.get("max_position_embeddings", 77),
                width=config.get("hidden_size", 512), layers=config.get("num_hidden_layers", 12),
                heads=config.get("num_attention_heads", 8),
                mlp_dim=config.get("intermediate_size", 2048), activation=act,
                layer_norm_eps=config.get("layer_norm_eps", 1e-5))
  return CLIPTextTransformer(**{**fields, **overrides})


def ldm_bert_from_config(config, **overrides):
  """``BERTEmbedder`` of a diffusers LDMBertConfig dict (its defaults where absent)."""
  act = config.get("activation_function", "gelu")
  if act != "gelu":
    raise ValueError(f"LDMBert activation_function {act!r} is not supported; supported: ('gelu',)")
  fields = dict(vocab_size=config.get("vocab_size", 30522),
                max_length=config.get("max_position_embeddings", 77),
                width=config.get("d_model", 1280), layers=config.get("encoder_layers", 32),
                heads=config.get("encoder_attention_heads", 8),
                head_dim=config.get("head_dim", 64),
                mlp_dim=config.get("encoder_ffn_dim", 5120))
  return BERTEmbedder(**{**fields, **overrides})


def text_encoder_from_config(config, **overrides):
  """The Flax text encoder module of a transformers / diffusers config.json dict."""
  if text_encoder_class(config) in BERT_CLASSES:
    return ldm_bert_from_config(config, **overrides)
  return clip_text_from_config(config, **overrides)


def abstract_params(module):
  """The module's params tree as ``jax.ShapeDtypeStruct`` leaves (nothing allocated)."""
  ids = jnp.zeros((1, module.max_length), jnp.int32)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), ids)["params"]


def _strip(state_dict, prefix):
  """Removes ``prefix`` from the keys that carry it (keys without it are kept as they are)."""
  return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def text_encoder_params(state_dict, module):
  """Flax params of ``module`` from a CLIPTextModel / LDMBertModel state dict (numpy arrays).

  CLIP keys may carry the ``text_model.`` prefix or not; LDMBert keys carry ``model.``.
  Leaves are cast to the module's param_dtype. Raises ValueError listing missing, unexpected
  and mis-shaped keys.
  """
  if isinstance(module, CLIPTextTransformer):
    sd, ignore = _strip(state_dict, "text_model."), CLIP_IGNORED
  elif isinstance(module, BERTEmbedder):
    sd, ignore = _strip(state_dict, "model."), BERT_IGNORED
  else:
    raise ValueError(f"module must be a CLIPTextTransformer or BERTEmbedder, got "
                     f"{type(module).__name__}")
  return torch_layout.torch_to_flax(sd, abstract_params(module), ignore=ignore)


def _weights(path, variant):
  """The folder's state dict: one weights file, or the shards its ``.index.json`` lists."""
  names = [n if variant is None else n.replace(".", f".{variant}.", 1) for n in WEIGHTS_NAMES]
  for name in names:
    file = os.path.join(path, name)
    if os.path.exists(file):
      return read_state_dict(file)
    if os.path.exists(file + ".index.json"):
      with open(file + ".index.json", encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      out = {}
      for shard in shards:
        out.update(read_state_dict(os.path.join(path, shard)))
      return out
  raise FileNotFoundError(f"no {' or '.join(names)} (or a sharded .index.json) in {path!r} "
                          f"(found: {sorted(os.listdir(path))})")


def load_text_encoder(path, *, variant=None, **overrides):
  """(module, params) from a ``text_encoder/`` (CLIP) or ``bert/`` (LDMBert) folder.

  overrides: module fields, e.g. dtype=jnp.bfloat16, remat=True, clip_skip=1.
  ``module.apply({"params": params}, ids)`` gives the context [B, L, width].
  """
  path = os.fspath(path)
  config_file = os.path.join(path, "config.json")
  if not os.path.isfile(config_file):
    raise FileNotFoundError(f"{path!r} is not a text encoder folder: no config.json")
  with open(config_file, encoding="utf-8") as f:
    config = json.load(f)
  module = text_encoder_from_config(config, **overrides)
  return module, text_encoder_params(_weights(path, variant), module)
