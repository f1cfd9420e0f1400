"""Tests for ldm_jax.text.word_level: vocabulary from captions, unknown-word policies, save/load."""

import numpy as np
import pytest
from tokenizers import Tokenizer

from ldm_jax.text import word_level as wl
from ldm_jax.text.token_ids import tokenize

CAPTIONS = ["A red circle, left.", "a blue square", "zebra apple apple", "Blue circle"]


def test_vocabulary_from_captions():
  tok = wl.train_word_level(CAPTIONS, max_length=10)
  vocab = tok.get_vocab()
  # specials, then by count (a, apple, blue, circle: 2 each), ties in byte order
  order = sorted(vocab, key=vocab.get)
  assert order == ["<pad>", "<unk>", "<start>", "<end>", "a", "apple", "blue", "circle", ",", ".",
                   "left", "red", "square", "zebra"]
  ids = tokenize(tok, ["A blue CIRCLE.", "a green circle"])
  np.testing.assert_array_equal(ids, [[2, 4, 6, 7, 9, 3, 0, 0, 0, 0],
                                      [2, 4, 1, 7, 3, 0, 0, 0, 0, 0]])
  assert wl.unknown_policy(tok) == "unk"


def test_min_count_max_words_and_truncation():
  tok = wl.train_word_level(CAPTIONS, min_count=2, max_length=4)
  assert sorted(tok.get_vocab()) == sorted([*wl.SPECIAL_TOKENS, "a", "apple", "blue", "circle"])
  assert len(wl.train_word_level(CAPTIONS, max_words=2).get_vocab()) == 6
  np.testing.assert_array_equal(tokenize(tok, "a blue circle a"), [[2, 4, 6, 3]])


def test_error_policy_survives_save(tmp_path):
  tok = wl.word_level_tokenizer(["a", "blue", "circle"], unknown="error", max_length=6)
  np.testing.assert_array_equal(tokenize(tok, "A blue circle"), [[2, 4, 5, 6, 3, 0]])
  tok.save(str(tmp_path / "tokenizer.json"))
  loaded = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
  assert wl.unknown_policy(loaded) == "error"
  with pytest.raises(ValueError, match=r"prompt \[1\] 'a green zebra'.*\['green', 'zebra'\]"):
    tokenize(loaded, ["a blue", "a green zebra"])


def test_errors():
  with pytest.raises(ValueError, match=r"policy 'drop' is not one of \('unk', 'error'\)"):
    wl.train_word_level(CAPTIONS, unknown="drop")
  with pytest.raises(ValueError, match="duplicates"):
    wl.word_level_tokenizer(["a", "a"])
  with pytest.raises(ValueError, match="max_words"):
    wl.train_word_level(CAPTIONS, max_words=0)
  with pytest.raises(ValueError, match="not a word-level tokenizer"):
    from ldm_jax.text.clip_tokenizer import load_clip_tokenizer
    wl.unknown_policy(load_clip_tokenizer())
