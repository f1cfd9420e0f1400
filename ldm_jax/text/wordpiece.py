"""BERT's WordPiece tokenizer (Devlin et al. 2019), uncased, as LDM's txt2img BERTEmbedder uses it.

CompVis' ``BERTTokenizer`` is ``BertTokenizerFast.from_pretrained("bert-base-uncased")`` with
``truncation=True, max_length=77, padding="max_length"``: [CLS] ids [SEP] [PAD]... This builds the
same HF ``tokenizers.Tokenizer`` as transformers' ``BertTokenizer``: BertNormalizer (clean control
characters, spaces around CJK characters, lower case, strip accents), BertPreTokenizer (split on
whitespace and punctuation), WordPiece ("##" continuation, words over 100 characters -> [UNK]),
[CLS] $A [SEP], padded with [PAD]. The vocabulary (bert-base-uncased's vocab.txt, 30,522 lines) is
not shipped: pass the path of a vocab.txt (one token per line, id = line number) or of a folder
holding one (a diffusers txt2img ``tokenizer/`` folder).
"""

import json
import os

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from ldm_jax.text.token_ids import fixed_length

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_LENGTH = 77
VOCAB_FILE = "vocab.txt"


def _tokenizer_json_vocab(folder):
  """The WordPiece vocabulary of a folder's transformers tokenizer.json (transformers >= 5 saves
  BertTokenizer as tokenizer.json only), or None."""
  file = os.path.join(folder, "tokenizer.json")
  if not os.path.isfile(file):
    return None
  with open(file, encoding="utf-8") as f:
    model = json.load(f).get("model", {})
  return dict(model["vocab"]) if model.get("type") == "WordPiece" else None


def read_wordpiece_vocab(path):
  """{token: line number} of a vocab.txt, or of the vocab.txt inside a folder (else the WordPiece
  vocabulary of the folder's tokenizer.json)."""
  file = os.path.join(path, VOCAB_FILE) if os.path.isdir(path) else path
  if not os.path.isfile(file) and os.path.isdir(path):
    vocab = _tokenizer_json_vocab(path)
    if vocab:
      return vocab
  if not os.path.isfile(file):
    where = f"folder {path!r} has no {VOCAB_FILE}" if os.path.isdir(path) else "does not exist"
    raise FileNotFoundError(f"WordPiece vocabulary {file!r} {where}; pass a vocab.txt (one token "
                            "per line, e.g. bert-base-uncased's) or a folder holding one")
  with open(file, encoding="utf-8") as f:
    tokens = f.read().split("\n")
  if tokens and tokens[-1] == "":
    tokens = tokens[:-1]
  return {t: i for i, t in enumerate(tokens)}


def wordpiece_tokenizer(vocab, *, lowercase=True, strip_accents=None, max_length=MAX_LENGTH,
                        pad_token="[PAD]"):
  """Fixed-length BERT tokenizer of a vocabulary {token: id} holding the five special tokens.

  strip_accents None: strip when lowercase (original BERT), as transformers' default.
  """
  missing = [t for t in SPECIAL_TOKENS if t not in vocab]
  if missing:
    raise ValueError(f"WordPiece vocabulary ({len(vocab)} entries) lacks the special tokens "
                     f"{missing}; it needs all of {SPECIAL_TOKENS}")
  tok = Tokenizer(WordPiece(dict(vocab), unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                              strip_accents=strip_accents, lowercase=lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix="##")
  tok.add_special_tokens(list(SPECIAL_TOKENS))
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
      special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
  return fixed_length(tok, max_length=max_length, pad_token=pad_token)


def load_wordpiece_tokenizer(path, *, lowercase=True, max_length=MAX_LENGTH):
  """BERT (uncased) tokenizer from a vocab.txt or a folder holding one; 77 tokens by default."""
  return wordpiece_tokenizer(read_wordpiece_vocab(path), lowercase=lowercase,
                             max_length=max_length)
