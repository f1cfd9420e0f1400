"""Prompts -> the cross-attention context [N, L, D]: a tokenizer plus a Flax text encoder.

``PromptEncoder`` holds the three things needed (tokenizer, module, params);
``encode_prompts(encoder, prompts)`` tokenizes and runs the encoder in one compiled program per
batch size. Loaders:
  ``load_prompt_encoder(model_folder)``       a diffusers pipeline folder: ``tokenizer/`` plus
                                              ``text_encoder/`` (SD) or ``bert/`` (LDM txt2img);
  ``prompt_encoder_from_checkpoint(ckpt)``    an original single file: its text encoder, with the
                                              embedded CLIP tokenizer padded as the layout needs
                                              (SD 1.x: <|endoftext|>, SD 2.x: id 0); LDM's BERT
                                              needs a WordPiece ``tokenizer`` (vocab.txt) passed in.
"""

import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ldm_jax.convert.text_checkpoint import load_text_encoder_from_checkpoint
from ldm_jax.convert.text_encoders import load_text_encoder
from ldm_jax.text import clip_tokenizer
from ldm_jax.text.loading import load_tokenizer
from ldm_jax.text.token_ids import tokenize

TEXT_ENCODER_FOLDERS = ("text_encoder", "bert")  # diffusers: SD pipelines, LDMTextToImagePipeline


class PromptEncoder(NamedTuple):
  """A tokenizer (``tokenizers.Tokenizer``, fixed length) and a text encoder with its params.

  The loaders put ``params`` on the default device once, so encoding does not copy them again.
  """
  tokenizer: Any
  module: Any  # CLIPTextTransformer or BERTEmbedder
  params: Any


def split_prompts(text: str) -> list:
  """The prompts of a ';'-separated string (the CLI's --prompts, a run's sample.prompts), stripped,
  empty ones dropped."""
  return [p.strip() for p in text.split(";") if p.strip()]


@functools.partial(jax.jit, static_argnums=0)
def _encode(module, params, ids):
  return module.apply({"params": params}, ids)


def prompt_ids(encoder: PromptEncoder, prompts):
  """int32 token ids [N, L] of prompts, checked against the encoder's positions and vocabulary."""
  ids = tokenize(encoder.tokenizer, prompts)
  if ids.shape[1] > encoder.module.max_length:
    raise ValueError(f"tokenizer gives {ids.shape[1]} tokens but the text encoder has "
                     f"{encoder.module.max_length} positions")
  vocab = encoder.module.vocab_size
  if ids.max() >= vocab:
    raise ValueError(f"token id {int(ids.max())} is outside the text encoder's vocabulary of "
                     f"{vocab}: tokenizer and encoder do not match")
  return ids


def encode_prompts(encoder: PromptEncoder, prompts):
  """float32 context [N, L, D] of prompts (a str or a sequence of str); L = tokenizer length."""
  return _encode(encoder.module, encoder.params, jnp.asarray(prompt_ids(encoder, prompts)))


def load_prompt_encoder(path, *, variant=None, max_length=None, **overrides):
  """PromptEncoder from a diffusers pipeline folder (``tokenizer/`` + ``text_encoder/`` or ``bert/``).

  overrides: text encoder module fields (dtype, remat, attention_impl, clip_skip, ...).
  """
  path = os.fspath(path)
  folders = [n for n in TEXT_ENCODER_FOLDERS if os.path.isdir(os.path.join(path, n))]
  if not folders or not os.path.isdir(os.path.join(path, "tokenizer")):
    found = sorted(os.listdir(path)) if os.path.isdir(path) else "the folder does not exist"
    raise FileNotFoundError(f"{path!r} needs a tokenizer/ folder and one of "
                            f"{TEXT_ENCODER_FOLDERS}; found: {found}")
  module, params = load_text_encoder(os.path.join(path, folders[0]), variant=variant,
                                     **overrides)
  tokenizer = load_tokenizer(os.path.join(path, "tokenizer"), max_length=max_length)
  return PromptEncoder(tokenizer, module, jax.device_put(params))


def prompt_encoder_from_checkpoint(checkpoint, *, tokenizer=None, heads=None, **overrides):
  """PromptEncoder of an original single file (path or state dict), see the module docstring.

  tokenizer: a fixed-length tokenizer to use instead of the embedded CLIP one (required for
  LDM's BERT, e.g. ``load_tokenizer(vocab_txt, kind="wordpiece")``).
  """
  module, params, layout = load_text_encoder_from_checkpoint(checkpoint, heads=heads,
                                                             **overrides)
  if tokenizer is None:
    if layout == "ldm_bert":
      raise ValueError("the checkpoint's text encoder is LDM's BERT, whose WordPiece vocabulary "
                       "is not shipped: pass tokenizer=load_tokenizer('<vocab.txt>', "
                       "kind='wordpiece') (bert-base-uncased's vocab.txt)")
    pad = clip_tokenizer.SD2_PAD_TOKEN if layout == "sd2_openclip" else clip_tokenizer.END_TOKEN
    tokenizer = clip_tokenizer.load_clip_tokenizer(pad_token=pad)
  return PromptEncoder(tokenizer, module, jax.device_put(params))
