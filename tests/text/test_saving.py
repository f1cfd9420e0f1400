"""Tests for ldm_jax.text.save_prompt_encoder: a prompt encoder written as the text half of a
diffusers folder reads back identically (ldm_jax) and loads in the reference libraries
(transformers' AutoTokenizer, diffusers' LDMBertModel) with the same ids and context."""

import jax
import numpy as np
import pytest
import torch
import transformers
from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel

from ldm_jax import text
from ldm_jax.data import mnist_pairs
from ldm_jax.models.bert_text import BERTEmbedder
from ldm_jax.models.clip_text import CLIPTextTransformer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PROMPTS = ["3 left of seven", "two right of 1", "", "5 followed by 5"]


def _word_level_bert(max_length=12):
  tok = text.word_level_tokenizer(list(mnist_pairs.VOCABULARY), unknown="error",
                                  max_length=max_length)
  module = BERTEmbedder(vocab_size=tok.get_vocab_size(), max_length=max_length, width=32,
                        layers=2, heads=2, head_dim=16, mlp_dim=64)
  params = module.init(jax.random.key(3), text.tokenize(tok, PROMPTS[:1]))["params"]
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(4), p.shape), params)
  return text.PromptEncoder(tok, module, params)


def test_word_level_bert_round_trip_and_reference_loaders(tmp_path):
  enc = _word_level_bert()
  folder = text.save_prompt_encoder(enc, str(tmp_path / "enc"))
  assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["bert", "tokenizer"]
  back = text.load_prompt_encoder(folder)
  assert isinstance(back.module, BERTEmbedder) and back.module.max_length == 12
  ids = np.asarray(text.tokenize(enc.tokenizer, PROMPTS))
  np.testing.assert_array_equal(np.asarray(text.tokenize(back.tokenizer, PROMPTS)), ids)
  context = np.asarray(text.encode_prompts(enc, PROMPTS))
  np.testing.assert_array_equal(np.asarray(text.encode_prompts(back, PROMPTS)), context)
  # the unknown-word policy survives the folder
  with pytest.raises(ValueError, match="above"):
    text.tokenize(back.tokenizer, ["3 above 7"])
  # transformers: the same ids; diffusers' LDMBertModel: the same context
  hf_tok = transformers.AutoTokenizer.from_pretrained(folder + "/tokenizer")
  hf_ids = hf_tok(PROMPTS, padding="max_length", max_length=12, truncation=True)["input_ids"]
  np.testing.assert_array_equal(np.asarray(hf_ids), ids)
  model = LDMBertModel.from_pretrained(folder + "/bert").eval()
  with torch.no_grad():
    ref = model(torch.as_tensor(ids)).last_hidden_state.numpy()
  np.testing.assert_allclose(context, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_clip_round_trip(tmp_path):
  tok = text.load_tokenizer(kind="clip", max_length=16)
  module = CLIPTextTransformer(vocab_size=tok.get_vocab_size(), max_length=16, width=32, layers=1,
                               heads=2, mlp_dim=64)
  params = module.init(jax.random.key(0), text.tokenize(tok, ["a cat"]))["params"]
  enc = text.PromptEncoder(tok, module, params)
  back = text.load_prompt_encoder(text.save_prompt_encoder(enc, str(tmp_path / "clip")))
  assert (tmp_path / "clip" / "text_encoder" / "config.json").exists()
  np.testing.assert_array_equal(np.asarray(text.encode_prompts(back, ["a cat", "a dog"])),
                                np.asarray(text.encode_prompts(enc, ["a cat", "a dog"])))


def test_bert_with_a_bpe_tokenizer_is_refused(tmp_path):
  enc = _word_level_bert()
  bad = text.PromptEncoder(text.load_tokenizer(kind="clip", max_length=12), enc.module, enc.params)
  with pytest.raises(NotImplementedError, match=r"WordPiece.*WordLevel.*not a BPE"):
    text.save_prompt_encoder(bad, str(tmp_path / "bad"))
