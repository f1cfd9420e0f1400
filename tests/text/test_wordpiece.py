"""Tests for ldm_jax.text.wordpiece against transformers' BertTokenizer on a synthetic vocab.txt."""

import os
import random

import numpy as np
import pytest
import transformers

from ldm_jax.text import wordpiece as wp
from ldm_jax.text.token_ids import tokenize

_WORDS = ["a", "the", "photo", "of", "cat", "dog", "un", "##aff", "##able", "##s", "##ing",
          "paint", "##er", "cafe", "naive", "resume", "ein", "hund", "猫", "日", "本", "play",
          "##ed", "run", "##ner", "1", "2", "##3", "42", "x", "##y", "red", "blue", "on", "mars",
          "astronaut", "riding", "horse", "h", "##e", "##l", "##o"]
_PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
VOCAB = [*wp.SPECIAL_TOKENS, *_WORDS, *_PUNCT]
PROMPTS = [
    "", "a photo of a cat", "A PHOTO OF A CAT!", "unaffable cats", "Café naïve résumé",
    "painter painting played runner", "ein Hund, 日本の猫", "hello", "42 123 1.5", "x-y z",
    "[CLS] inside [SEP] text [PAD] [MASK] [UNK]", "tabs\tand\nnewlines", "\x00control\x07",
    "an astronaut riding a horse on mars " * 12, "emoji 😀 here", "dog" + "s" * 120,
]


def _more_prompts():
  rng = random.Random(1)
  pool = ["cat", "Dogs", "unaffable", "CAFÉ", "猫", "日本", "42", "!", "?", "...", "red-blue",
          "zzz", "played", "the", "Hund", "😀", "résumé", "'s"]
  return [" ".join(rng.choice(pool) for _ in range(rng.randint(1, 40))) for _ in range(60)]


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("wordpiece")
  with open(path / "vocab.txt", "w", encoding="utf-8") as f:
    f.write("\n".join(VOCAB) + "\n")
  return str(path)


def test_equals_transformers(vocab_dir):
  ref = transformers.BertTokenizer.from_pretrained(vocab_dir)
  prompts = PROMPTS + _more_prompts()
  expected = np.asarray(ref(prompts, padding="max_length", max_length=77,
                            truncation=True).input_ids)
  got = tokenize(wp.load_wordpiece_tokenizer(vocab_dir), prompts)
  assert got.shape == (len(prompts), 77)
  bad = [i for i in range(len(prompts)) if not np.array_equal(got[i], expected[i])]
  assert not bad, f"{len(bad)} prompts differ, e.g. {prompts[bad[0]]!r}"
  assert (got[:, 0] == VOCAB.index("[CLS]")).all()


def test_layout_and_file_path(vocab_dir):
  tok = wp.load_wordpiece_tokenizer(os.path.join(vocab_dir, "vocab.txt"), max_length=8)
  ids = tokenize(tok, ["Unaffable cat!", "hello"])
  v = VOCAB.index
  np.testing.assert_array_equal(ids[0], [v("[CLS]"), v("un"), v("##aff"), v("##able"), v("cat"),
                                         v("!"), v("[SEP]"), 0])
  np.testing.assert_array_equal(ids[1, :6], [v("[CLS]"), v("h"), v("##e"), v("##l"), v("##l"),
                                             v("##o")])


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="has no vocab.txt"):
    wp.load_wordpiece_tokenizer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    wp.load_wordpiece_tokenizer(str(tmp_path / "vocab.txt"))
  with pytest.raises(ValueError, match=r"lacks the special tokens \['\[MASK\]'\]"):
    wp.wordpiece_tokenizer({t: i for i, t in enumerate(VOCAB) if t != "[MASK]"})
