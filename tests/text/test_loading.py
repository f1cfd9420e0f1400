"""Tests for ldm_jax.text.loading and ldm_jax.text.token_ids: kinds, folders and input errors."""

import json

import numpy as np
import pytest

from ldm_jax import text
from ldm_jax.text import clip_tokenizer as ct


def test_kinds_from_folders(tmp_path):
  clip = tmp_path / "clip"
  clip.mkdir()
  vocab, merges = ct.clip_vocab_from_bpe()
  (clip / "vocab.json").write_text(json.dumps(vocab))
  (clip / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
  (clip / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "!"}}))
  bert = tmp_path / "bert"
  bert.mkdir()
  (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat"]))
  words = tmp_path / "words.json"
  text.train_word_level(["a cat"], max_length=5).save(str(words))
  assert text.tokenizer_kind(str(clip)) == "clip" and text.tokenizer_kind(str(bert)) == "wordpiece"
  np.testing.assert_array_equal(text.tokenize(text.load_tokenizer(str(clip)), "cat")[0, :4],
                                [49406, 2368, 49407, 0])  # pad "!" read from the folder
  np.testing.assert_array_equal(text.tokenize(text.load_tokenizer(str(bert)), "cat")[0, :4],
                                [2, 5, 3, 0])
  np.testing.assert_array_equal(text.tokenize(text.load_tokenizer(words, kind="word_level"),
                                              "a cat"), [[2, 4, 5, 3, 0]])
  assert text.load_tokenizer().padding["pad_id"] == 49407  # embedded CLIP, SD 1.x pad


def test_errors(tmp_path):
  with pytest.raises(ValueError, match=r"unknown tokenizer kind 'bpe'; valid kinds: \('clip', "
                                       r"'wordpiece', 'word_level'\)"):
    text.load_tokenizer(str(tmp_path), kind="bpe")
  with pytest.raises(ValueError, match="needs a path"):
    text.load_tokenizer(kind="wordpiece")
  with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
    text.load_tokenizer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    text.load_tokenizer(str(tmp_path / "nope"))
  with pytest.raises(FileNotFoundError, match="has no vocab.txt"):
    text.load_tokenizer(str(tmp_path), kind="wordpiece")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))
  with pytest.raises(ValueError, match="T5Tokenizer.*supported"):
    text.load_tokenizer(str(tmp_path))


def test_prompt_errors():
  tok = text.load_tokenizer()
  for bad in (None, 3, b"bytes"):
    with pytest.raises(ValueError, match="must be a str or a sequence of str"):
      text.tokenize(tok, bad)
  with pytest.raises(ValueError, match=r"1 are not: \[1\] int 7"):
    text.tokenize(tok, ["ok", 7])
  assert text.tokenize(tok, ()).shape == (0, 77)
  tok.no_padding()
  with pytest.raises(ValueError, match="not fixed-length"):
    text.tokenize(tok, "a")
  with pytest.raises(ValueError, match="max_length must be an int >= 2"):
    text.fixed_length(tok, max_length=1, pad_token=0)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    text.fixed_length(tok, max_length=77, pad_token=10**6)
