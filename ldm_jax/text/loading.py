"""One entry point for tokenizers: a kind ("clip", "wordpiece", "word_level") or a folder's files.

``load_tokenizer(path)`` reads a diffusers / transformers ``tokenizer/`` folder and picks the kind
from its tokenizer_config.json ("tokenizer_class") or else from its files (vocab.json +
merges.txt: CLIP; vocab.txt: WordPiece; tokenizer.json: whatever it describes).
``load_tokenizer(kind="clip")`` without a path is CLIP from the embedded merges (no files needed).
"""

import json
import os

from tokenizers import Tokenizer

from ldm_jax.text import clip_tokenizer, wordpiece
from ldm_jax.text.token_ids import fixed_length

TOKENIZER_KINDS = ("clip", "wordpiece", "word_level")
# transformers tokenizer classes -> kind
_CLASSES = {"CLIPTokenizer": "clip", "CLIPTokenizerFast": "clip", "BertTokenizer": "wordpiece",
            "BertTokenizerFast": "wordpiece",
            "PreTrainedTokenizerFast": "word_level"}  # a tokenizer.json (save_prompt_encoder's)


def tokenizer_kind(path):
  """The kind of the tokenizer in folder ``path`` (see the module docstring)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer folder {path!r} does not exist")
  config_file = os.path.join(path, "tokenizer_config.json")
  if os.path.exists(config_file):
    with open(config_file, encoding="utf-8") as f:
      cls = json.load(f).get("tokenizer_class")
    if cls is not None:
      if cls not in _CLASSES:
        raise ValueError(f"{config_file}: tokenizer_class {cls!r} is not supported; supported: "
                         f"{sorted(_CLASSES)}")
      return _CLASSES[cls]
  files = set(os.listdir(path))
  if {"vocab.json", "merges.txt"} <= files:
    return "clip"
  if wordpiece.VOCAB_FILE in files:
    return "wordpiece"
  if "tokenizer.json" in files:
    return "word_level"
  raise FileNotFoundError(f"{path!r} holds no tokenizer: expected vocab.json + merges.txt (CLIP), "
                          f"vocab.txt (WordPiece) or tokenizer.json; found {sorted(files)}")


def load_tokenizer(path=None, *, kind=None, max_length=None, pad_token=None):
  """A fixed-length ``tokenizers.Tokenizer`` (use with ``ldm_jax.text.token_ids``).

  path: a tokenizer folder; for "wordpiece" also a vocab.txt file; for "word_level" a
  tokenizer.json saved by ``tokenizer.save`` (or a folder holding it); None only for "clip"
  (the embedded merges). kind: one of TOKENIZER_KINDS, or None to infer it from the folder.
  max_length / pad_token: override the folder's (or the kind's default) settings.
  """
  if kind is not None and kind not in TOKENIZER_KINDS:
    raise ValueError(f"unknown tokenizer kind {kind!r}; valid kinds: {TOKENIZER_KINDS}")
  if path is None:
    if kind not in (None, "clip"):
      raise ValueError(f"tokenizer kind {kind!r} needs a path (only 'clip' ships its vocabulary)")
    return clip_tokenizer.load_clip_tokenizer(pad_token=pad_token, max_length=max_length)
  path = os.fspath(path)
  if kind is None:
    kind = tokenizer_kind(path)
  if kind == "clip":
    return clip_tokenizer.load_clip_tokenizer(path, pad_token=pad_token, max_length=max_length)
  if kind == "wordpiece":
    tok = wordpiece.load_wordpiece_tokenizer(path, max_length=max_length or wordpiece.MAX_LENGTH)
    return tok if pad_token is None else fixed_length(tok, max_length=tok.padding["length"],
                                                      pad_token=pad_token)
  file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise FileNotFoundError(f"word-level tokenizer file {file!r} does not exist (save one with "
                            "ldm_jax.text.train_word_level(...).save(path))")
  tok = Tokenizer.from_file(file)
  if max_length is None and pad_token is None and tok.padding and tok.truncation:
    return tok
  padding = tok.padding or {}
  return fixed_length(tok, max_length=max_length or padding.get("length") or 77,
                      pad_token=pad_token if pad_token is not None else padding.get("pad_id", 0))
