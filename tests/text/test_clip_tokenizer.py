"""Tests for ldm_jax.text.clip_tokenizer: token-for-token equality with transformers' CLIPTokenizer.

The reference is ``transformers.CLIPTokenizer`` (as installed by requirements-test.txt) loaded from a
``tokenizer/`` folder written from the vocabulary derived from the embedded merges, with the
SD 1.x (<|endoftext|>) and SD 2.x ("!", id 0) pad tokens, on 200+ prompts.
"""

import json
import os
import random

import numpy as np
import pytest
import transformers

from ldm_jax.text import clip_tokenizer as ct
from ldm_jax.text.token_ids import tokenize

_HAND = [
    "", " ", "a photo of a cat", "A Photo Of A CAT", "an astronaut riding a horse on mars",
    "hello!", "hello!!!", "!", "!!", "wow! such prompt! many tokens!", "what's up? it's fine, we'll see",
    "don't stop: I'm here, they're there, you've won, he'd go", "It'S A tEsT's",
    "  leading and trailing spaces  ", "tabs\tand\nnewlines\r\nand\u00a0nbsp", "many     spaces",
    "café naïve résumé Ångström façade", "cafe\u0301 (decomposed accent)", "Straße groß",
    "ﬁne ligature ＡＢＣ fullwidth", "emoji 😀🎉🚀 and 👩‍👩‍👧‍👦 family", "❤️ red heart",
    "日本語のテキスト", "中文提示词 一只猫", "한국어 고양이", "Ελληνικά κείμενο", "русский текст",
    "עברית", "العربية", "हिन्दी", "ไทย", "numbers 1234567890 3.14159 -42 1e10 0x1F",
    "2024-01-01 12:30:45", "$100 €50 £20 ¥1000", "100% of 50%", "a+b=c; x*y/z",
    "email@example.com http://example.com/path?q=1&r=2", "C++ and C# and F#",
    "((masterpiece)), [best quality], {detailed}", "(photo:1.2), <lora:foo:0.8>",
    "ultra-detailed, 8k, trending on artstation --ar 16:9", "a_b_c snake_case CamelCase",
    "'quoted' \"double\" `back`", "…ellipsis — em dash – en dash", "«guillemets» „quotes“",
    "<|startoftext|>", "<|endoftext|>", "a <|endoftext|> b", "<|startoftext|>x<|endoftext|>y",
    "<|ENDOFTEXT|>", "<|endoftext", "\u200bzero\u200bwidth", "control\x01\x02chars", "\x00null",
    "a" * 300, "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "ÀÉÎÕÜ uppercase accents", "İstanbul ı dotless", "ǅ titlecase", "ﬀ ﬃ ligatures",
    "tab\t\ttab", "x" + "!" * 90, " ".join(["word"] * 80), " ".join(str(i) for i in range(60)),
    "😀" * 40, "日本" * 50, "a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, t, u" * 3,
]
_WORDS = ["cat", "dog", "photo", "portrait", "Castle", "neon", "cyberpunk", "oil", "painting",
          "of", "a", "the", "by", "Greg", "Rutkowski", "4k", "HDR", "bokeh", "sunset", "über",
          "naïve", "日本", "猫", "😀", "🎨", "—", "...", ",", "!", "?", "'s", "(", ")", "[", "]",
          ":", "1.5", "2", "#tag", "@user", "x", "mr.", "don't", "ÉLAN", "\t", "  "]


def _prompts():
  rng = random.Random(0)
  generated = []
  for i in range(180):
    n = rng.randint(1, 12) if i % 6 else rng.randint(60, 120)  # every 6th longer than 77
    joiners = [" ", "", ", ", "  "]
    generated.append("".join(rng.choice(_WORDS) + rng.choice(joiners) for _ in range(n)))
  return _HAND + generated


PROMPTS = _prompts()


def write_folder(path, vocab, merges, pad):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  special = {"bos_token": ct.START_TOKEN, "eos_token": ct.END_TOKEN, "unk_token": ct.END_TOKEN,
             "pad_token": pad}
  with open(os.path.join(path, "special_tokens_map.json"), "w", encoding="utf-8") as f:
    json.dump(special, f)
  with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
               "do_lower_case": True}, f)
  return path


@pytest.fixture(scope="module")
def derived():
  return ct.clip_vocab_from_bpe()


@pytest.fixture(scope="module")
def folders(derived, tmp_path_factory):
  root = tmp_path_factory.mktemp("clip_tokenizer")
  return {"sd1": write_folder(str(root / "sd1"), *derived, ct.SD1_PAD_TOKEN),
          "sd2": write_folder(str(root / "sd2"), *derived, ct.SD2_PAD_TOKEN)}


def test_prompt_set_is_varied():
  assert len(PROMPTS) >= 200 and len(set(PROMPTS)) >= 200
  assert sum(len(p) > 200 for p in PROMPTS) >= 20  # truncated at 77 tokens, see below
  assert sum(not p.isascii() for p in PROMPTS) >= 100


def test_derived_vocab_structure(derived):
  vocab, merges = derived
  assert len(vocab) == ct.VOCAB_SIZE == 49408 and len(merges) == ct.NUM_MERGES == 48894
  assert sorted(vocab.values()) == list(range(49408))
  symbols = ct.byte_symbols()
  assert len(set(symbols)) == 256 and symbols[0] == "!" and vocab["!"] == 0
  assert all(vocab[s] == i and vocab[s + "</w>"] == 256 + i for i, s in enumerate(symbols))
  assert vocab[ct.START_TOKEN] == 49406 and vocab[ct.END_TOKEN] == 49407
  assert vocab["".join(merges[0])] == 512


def test_golden_ids():
  """CLIP's well-known ids: a</w> 320, photo</w> 1125, of</w> 539, cat</w> 2368."""
  ids = tokenize(ct.load_clip_tokenizer(), "a photo of a cat")
  assert ids.dtype == np.int32 and ids.shape == (1, 77)
  np.testing.assert_array_equal(ids[0, :8], [49406, 320, 1125, 539, 320, 2368, 49407, 49407])
  sd2 = tokenize(ct.load_clip_tokenizer(pad_token=ct.SD2_PAD_TOKEN), "a photo of a cat")
  np.testing.assert_array_equal(sd2[0, 5:9], [2368, 49407, 0, 0])


@pytest.mark.parametrize("convention", ["sd1", "sd2"])
def test_equals_transformers(folders, convention):
  ref = transformers.CLIPTokenizer.from_pretrained(folders[convention])
  expected = np.asarray(ref(PROMPTS, padding="max_length", max_length=77,
                            truncation=True).input_ids)
  for tok in (ct.load_clip_tokenizer(folders[convention]),
              ct.load_clip_tokenizer(pad_token=ref.pad_token)):  # folder and embedded merges
    got = tokenize(tok, PROMPTS)
    assert got.shape == (len(PROMPTS), 77)
    bad = [i for i in range(len(PROMPTS)) if not np.array_equal(got[i], expected[i])]
    assert not bad, f"{len(bad)} prompts differ, e.g. {PROMPTS[bad[0]]!r}"
  assert (expected[:, -1] == 49407).sum() >= 20  # truncated prompts keep their end token
  pad = ref.pad_token_id
  assert pad == {"sd1": 49407, "sd2": 0}[convention] and (expected[:, -1] == pad).any()


def test_folder_saved_by_transformers(folders, derived, tmp_path):
  """transformers >= 5 saves tokenizer.json + tokenizer_config.json only: that loads too."""
  transformers.CLIPTokenizer.from_pretrained(folders["sd2"]).save_pretrained(str(tmp_path))
  assert not os.path.exists(tmp_path / "vocab.json")
  tok = ct.load_clip_tokenizer(str(tmp_path))
  assert tok.get_vocab() == derived[0]
  expected = tokenize(ct.load_clip_tokenizer(folders["sd2"]), PROMPTS[:50])
  np.testing.assert_array_equal(tokenize(tok, PROMPTS[:50]), expected)


def test_max_length_and_pad_override(folders):
  tok = ct.load_clip_tokenizer(folders["sd1"], max_length=8, pad_token=0)
  ids = tokenize(tok, ["a photo of a cat in a hat on a mat", "cat"])
  np.testing.assert_array_equal(ids[0], [49406, 320, 1125, 539, 320, 2368, 530, 49407])
  np.testing.assert_array_equal(ids[1], [49406, 2368, 49407, 0, 0, 0, 0, 0])


def test_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ct.load_clip_tokenizer(str(tmp_path / "missing"))
  with pytest.raises(FileNotFoundError, match=r"vocab.json \+ merges.txt"):
    ct.load_clip_tokenizer(str(tmp_path))
  with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
    ct.load_clip_tokenizer(pad_token="<nope>")
  with pytest.raises(ValueError, match="lacks the special token"):
    ct.clip_bpe_tokenizer({"a": 0}, [])
