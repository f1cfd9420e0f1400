"""A prompt encoder as the text half of a diffusers pipeline folder (``save_prompt_encoder``).

  folder/text_encoder/   transformers CLIPTextModel config + model.safetensors (keys with the
                         ``text_model.`` prefix, the layout every transformers version loads)
  folder/bert/           diffusers LDMBertModel config + model.safetensors
  folder/tokenizer/      CLIPTokenizer vocab.json, merges.txt, its pad token and length; or
                         BertTokenizer vocab.txt, its lower-casing and length; or a word-level
                         tokenizer (``ldm_jax.text.word_level``) as tokenizer.json, loaded by
                         transformers' PreTrainedTokenizerFast

``ldm_jax.text.load_prompt_encoder(folder)`` and a text config's ``text.pretrained`` read it back;
``LatentDiffusionPipeline.save_pretrained`` writes it beside the UNet and autoencoder.
"""

import json
import os

import numpy as np


def _write_json(path, obj):
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True)


BERT_TOKENIZER_MODELS = ("WordPiece", "WordLevel")


def is_bert(encoder):
  from ldm_jax.models.bert_text import BERTEmbedder  # pylint: disable=import-outside-toplevel
  return isinstance(encoder.module, BERTEmbedder)


def _save_bert(encoder, folder):
  """bert/ (diffusers LDMBertModel) and tokenizer/ (BertTokenizer, or a word-level tokenizer as
  PreTrainedTokenizerFast) of LDM's txt2img encoder."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  from ldm_jax.convert import torch_layout  # pylint: disable=import-outside-toplevel
  m, tok = encoder.module, encoder.tokenizer
  kind = type(tok.model).__name__
  if kind not in BERT_TOKENIZER_MODELS:
    raise NotImplementedError(f"save_pretrained writes a BERT text encoder with a tokenizer of "
                              f"{BERT_TOKENIZER_MODELS}, not a {kind} one.")
  out = os.path.join(folder, "bert")
  os.makedirs(out, exist_ok=True)
  _write_json(os.path.join(out, "config.json"), {
      "architectures": ["LDMBertModel"], "model_type": "ldmbert", "vocab_size": m.vocab_size,
      "max_position_embeddings": m.max_length, "d_model": m.width, "encoder_layers": m.layers,
      "encoder_attention_heads": m.heads, "head_dim": m.head_dim, "encoder_ffn_dim": m.mlp_dim,
      "activation_function": "gelu", "torch_dtype": "float32"})
  # LDMBertModel's to_logits head (unused for the context) is left out: diffusers initialises it.
  state = {"model." + k: np.asarray(v, np.float32)
           for k, v in torch_layout.flax_to_torch(encoder.params).items()}
  save_file(state, os.path.join(out, "model.safetensors"))
  out = os.path.join(folder, "tokenizer")
  os.makedirs(out, exist_ok=True)
  if kind == "WordLevel":  # the whole tokenizer (vocabulary, normaliser, template, length)
    tok.save(os.path.join(out, "tokenizer.json"))
    _write_json(os.path.join(out, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": tok.truncation["max_length"], "pad_token": tok.padding["pad_token"],
        "unk_token": tok.model.unk_token})
    return
  tok.model.save(out)  # vocab.txt
  lower = bool(getattr(tok.normalizer, "lowercase", True))
  _write_json(os.path.join(out, "tokenizer_config.json"), {
      "tokenizer_class": "BertTokenizer", "do_lower_case": lower,
      "model_max_length": tok.truncation["max_length"], "pad_token": tok.padding["pad_token"],
      "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"})


def save_prompt_encoder(encoder, folder: str) -> str:
  """Writes a prompt encoder (``ldm_jax.text.PromptEncoder``: CLIP or LDM BERT) as the text half
  of a diffusers pipeline folder, tokenizer/ plus text_encoder/ or bert/, which
  ``ldm_jax.text.load_prompt_encoder`` and a text config's ``text.pretrained`` load; returns the
  folder."""
  os.makedirs(folder, exist_ok=True)
  if is_bert(encoder):
    _save_bert(encoder, folder)
  else:
    _save_clip(encoder, folder)
  return folder


def _save_clip(encoder, folder):
  """text_encoder/ (transformers CLIPTextModel) and tokenizer/ (CLIPTokenizer) of a CLIP prompt
  encoder."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  from ldm_jax.convert import torch_layout  # pylint: disable=import-outside-toplevel
  from ldm_jax.models.clip_text import CLIPTextTransformer  # pylint: disable=import-outside-toplevel
  m, tok = encoder.module, encoder.tokenizer
  if not isinstance(m, CLIPTextTransformer) or type(tok.model).__name__ != "BPE":
    raise NotImplementedError(f"save_pretrained writes CLIP and LDM BERT text encoders, not "
                              f"{type(m).__name__} with a {type(tok.model).__name__} tokenizer.")
  if m.clip_skip:
    raise ValueError(f"clip_skip={m.clip_skip} has no CLIPTextModel config key; save the pipeline "
                     "without it (the saved model gives the last layer's context).")
  out = os.path.join(folder, "text_encoder")
  os.makedirs(out, exist_ok=True)
  _write_json(os.path.join(out, "config.json"), {
      "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
      "vocab_size": m.vocab_size, "max_position_embeddings": m.max_length, "hidden_size": m.width,
      "num_hidden_layers": m.layers, "num_attention_heads": m.heads,
      "intermediate_size": m.mlp_dim, "hidden_act": m.activation,
      "layer_norm_eps": m.layer_norm_eps, "torch_dtype": "float32"})
  state = {"text_model." + k: np.asarray(v, np.float32)  # the key layout every version loads
           for k, v in torch_layout.flax_to_torch(encoder.params).items()}
  save_file(state, os.path.join(out, "model.safetensors"))
  out = os.path.join(folder, "tokenizer")
  os.makedirs(out, exist_ok=True)
  tok.model.save(out)  # vocab.json, merges.txt
  _write_json(os.path.join(out, "tokenizer_config.json"), {
      "tokenizer_class": "CLIPTokenizer", "model_max_length": tok.truncation["max_length"],
      "pad_token": tok.padding["pad_token"], "bos_token": "<|startoftext|>",
      "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
