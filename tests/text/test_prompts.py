"""Tests for ldm_jax.text.prompts: prompts -> context end to end, against transformers + torch.

A diffusers-style pipeline folder (``tokenizer/`` + ``text_encoder/``, or ``tokenizer/`` +
``bert/`` for LDM txt2img) holds a tiny random torch text encoder with the full CLIP vocabulary;
``encode_prompts`` must equal transformers' tokenizer followed by the torch model.
"""

import json

import numpy as np
import pytest
import torch
import transformers
from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (LDMBertConfig,
                                                                            LDMBertModel)

from ldm_jax import text
from ldm_jax.text import clip_tokenizer as ct

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PROMPTS = ["a photo of a cat", "An astronaut riding a horse on Mars, 4k!", "",
           "a very long prompt " * 30]
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "horse",
              "on", "mars", ",", "!", "very", "long", "prompt", "an", "##s"]


def _randomize(model, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (0.1 if p.ndim == 1 else 0.0))
  return model.eval()


def _write_clip_tokenizer(path, pad):
  vocab, merges = ct.clip_vocab_from_bpe()
  path.mkdir()
  (path / "vocab.json").write_text(json.dumps(vocab))
  (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
  (path / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad}))
  (path / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77}))


def _assert_close(a, b):
  np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


@pytest.mark.parametrize("pad,act", [(ct.SD1_PAD_TOKEN, "quick_gelu"), (ct.SD2_PAD_TOKEN, "gelu")])
def test_stable_diffusion_folder(tmp_path, pad, act):
  _write_clip_tokenizer(tmp_path / "tokenizer", pad)
  config = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       max_position_embeddings=77, hidden_act=act)
  model = _randomize(transformers.CLIPTextModel(config), seed=5)
  model.save_pretrained(str(tmp_path / "text_encoder"))
  encoder = text.load_prompt_encoder(str(tmp_path))
  context = text.encode_prompts(encoder, PROMPTS)
  assert context.shape == (4, 77, 32) and context.dtype == np.float32
  tokenizer = transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
  ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                  return_tensors="pt").input_ids
  with torch.no_grad():
    _assert_close(context, model(ids).last_hidden_state.numpy())


def test_ldm_txt2img_folder(tmp_path):
  (tmp_path / "tokenizer").mkdir()
  (tmp_path / "tokenizer" / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n")
  config = LDMBertConfig(vocab_size=len(BERT_VOCAB), max_position_embeddings=77, encoder_layers=2,
                         encoder_ffn_dim=64, encoder_attention_heads=2, head_dim=16, d_model=32)
  model = _randomize(LDMBertModel(config), seed=6)
  model.save_pretrained(str(tmp_path / "bert"))
  encoder = text.load_prompt_encoder(str(tmp_path))
  context = text.encode_prompts(encoder, PROMPTS)
  tokenizer = transformers.BertTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
  ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True,
                  return_tensors="pt").input_ids
  with torch.no_grad():
    _assert_close(context, model(ids).last_hidden_state.numpy())


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"needs a tokenizer/ folder and one of "
                                              r"\('text_encoder', 'bert'\)"):
    text.load_prompt_encoder(str(tmp_path))
  from ldm_jax.models.clip_text import CLIP_TEXT_TINY  # vocabulary of 1000 < CLIP's 49408
  encoder = text.PromptEncoder(text.load_tokenizer(), CLIP_TEXT_TINY(), params=None)
  with pytest.raises(ValueError, match="outside the text encoder's vocabulary of 1000"):
    text.encode_prompts(encoder, ["a photo of a cat"])
  with pytest.raises(ValueError, match="must all be str"):
    text.encode_prompts(encoder, ["ok", None])
