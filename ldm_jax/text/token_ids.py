"""Prompts -> fixed-length int32 token ids, with any ``tokenizers.Tokenizer`` of this package.

Every tokenizer built in ``ldm_jax.text`` is a HF ``tokenizers.Tokenizer`` set to a fixed length
(``fixed_length``): start/end tokens added by its post-processor, truncated to ``max_length``
(the end token kept, as transformers does) and padded with its pad token, so a batch of prompts
is one [N, max_length] array that a jitted text encoder sees with one shape.
"""

import numpy as np
from tokenizers import AddedToken, Tokenizer
from tokenizers.models import WordLevel


def token_id(tokenizer: Tokenizer, token):
  """The id of ``token`` (a vocabulary string or an int id) in ``tokenizer``; ValueError if absent."""
  vocab_size = tokenizer.get_vocab_size()
  if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
    if not 0 <= int(token) < vocab_size:
      raise ValueError(f"token id {token} is outside the vocabulary [0, {vocab_size})")
    return int(token)
  if not isinstance(token, str):
    raise ValueError(f"token must be a vocabulary string or an int id, got {token!r}")
  i = tokenizer.token_to_id(token)
  if i is None:
    raise ValueError(f"token {token!r} is not in the tokenizer's vocabulary ({vocab_size} "
                     "entries)")
  return i


def fixed_length(tokenizer: Tokenizer, *, max_length, pad_token):
  """Sets ``tokenizer`` (in place, and returns it) to truncate and pad every prompt to max_length.

  pad_token: a vocabulary string or id. Like transformers, the pad token becomes a special added
  token, so the same string inside a prompt maps to its id (matters for SD 2.x's "!" pad).
  """
  if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
    raise ValueError(f"max_length must be an int >= 2 (room for the start and end tokens), "
                     f"got {max_length!r}")
  pad_id = token_id(tokenizer, pad_token)
  pad = tokenizer.id_to_token(pad_id)
  tokenizer.add_special_tokens([AddedToken(pad, special=True, normalized=False)])
  tokenizer.enable_truncation(max_length)
  tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad)
  return tokenizer


def check_prompts(prompts):
  """A list of str from a str or a sequence of str; ValueError naming any non-string entry."""
  if isinstance(prompts, str):
    return [prompts]
  if isinstance(prompts, bytes) or not hasattr(prompts, "__iter__"):
    raise ValueError(f"prompts must be a str or a sequence of str, got {type(prompts).__name__}: "
                     f"{prompts!r:.80}")
  prompts = list(prompts)
  bad = [(i, p) for i, p in enumerate(prompts) if not isinstance(p, str)]
  if bad:
    shown = ", ".join(f"[{i}] {type(p).__name__} {p!r:.40}" for i, p in bad[:5])
    raise ValueError(f"prompts must all be str; {len(bad)} are not: {shown}")
  return prompts


def _unknown_words(tokenizer, prompt):
  """Words of ``prompt`` a WordLevel vocabulary lacks (for the error of the "error" policy)."""
  text = tokenizer.normalizer.normalize_str(prompt) if tokenizer.normalizer else prompt
  words = [w for w, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text)]
  return [w for w in words if tokenizer.token_to_id(w) is None]


def tokenize(tokenizer: Tokenizer, prompts):
  """Token ids of ``prompts`` (a str or a sequence of str) -> int32 [N, max_length] numpy array.

  The tokenizer must be fixed-length (``fixed_length``; every loader in ``ldm_jax.text`` returns
  one). Raises ValueError for non-string prompts, and for a prompt the tokenizer refuses (a
  word-level tokenizer with the "error" unknown-word policy), naming the prompt and its unknown
  words.
  """
  prompts = check_prompts(prompts)
  padding = tokenizer.padding
  if padding is None or padding.get("length") is None or tokenizer.truncation is None:
    raise ValueError("tokenizer is not fixed-length (no fixed padding length or no truncation); "
                     "build it with ldm_jax.text loaders or call fixed_length(tokenizer, ...)")
  try:
    encodings = tokenizer.encode_batch(prompts)
  except Exception as e:  # tokenizers raises its own exception type; find the prompt at fault
    for i, prompt in enumerate(prompts):
      try:
        tokenizer.encode(prompt)
      except Exception:  # pylint: disable=broad-except
        unknown = (_unknown_words(tokenizer, prompt)
                   if isinstance(tokenizer.model, WordLevel) else [])
        detail = f"words not in the vocabulary: {unknown}" if unknown else str(e)
        raise ValueError(f"prompt [{i}] {prompt!r:.200} cannot be tokenized: {detail}") from e
    raise
  ids = np.asarray([e.ids for e in encodings], dtype=np.int32)
  return ids.reshape(len(prompts), padding["length"])
