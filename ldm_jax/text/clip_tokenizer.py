"""CLIP's byte-level BPE tokenizer (Radford et al. 2021) built offline, equal to transformers' CLIPTokenizer.

The tokenizer is a HF ``tokenizers.Tokenizer`` assembled exactly as transformers' (>= 5)
``CLIPTokenizer`` assembles its backend:
  normalizer      NFC, every whitespace run -> one space, lower case;
  pre-tokenizer   CLIP's word pattern (the special tokens, 's 't 're 've 'm 'll 'd, letter runs,
                  single digits, runs of other non-space characters; the rest dropped), then
                  GPT-2's byte-to-unicode mapping (ByteLevel);
  model           BPE with "</w>" marking the end of a word, unknown -> <|endoftext|>;
  post-processor  <|startoftext|> ids <|endoftext|>;
and then fixed to 77 tokens (``ldm_jax.text.token_ids.fixed_length``). Stable Diffusion 1.x pads
with the end token (49407, ``SD1_PAD_TOKEN``); SD 2.x / OpenCLIP pads with id 0, the token "!"
(``SD2_PAD_TOKEN``). As in transformers, the pad token is a special token, so with the SD 2.x
pad a "!" in a prompt also becomes id 0 (open_clip's own tokenizer would give "!</w>", 256).
Unlike OpenAI's SimpleTokenizer there is no ftfy.fix_text / html.unescape (transformers >= 5
does neither), so mojibake or "&amp;" in a prompt stay as typed.

Vocabulary sources: a diffusers / transformers ``tokenizer/`` folder (vocab.json + merges.txt,
or tokenizer.json), or the merge list ``bpe_simple_vocab_16e6.txt.gz`` embedded in this package
(``ldm_jax/text/embedded``), from which vocab.json and merges.txt follow exactly
(``clip_vocab_from_bpe``). Nothing is downloaded.
"""

import gzip
import json
import os

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from ldm_jax.text.token_ids import fixed_length

EMBEDDED_BPE = os.path.join(os.path.dirname(__file__), "embedded", "bpe_simple_vocab_16e6.txt.gz")
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
SD1_PAD_TOKEN = END_TOKEN  # openai/clip-vit-large-patch14 (SD 1.x): pad id 49407
SD2_PAD_TOKEN = "!"        # OpenCLIP ViT-H/14 (SD 2.x): pad id 0
MAX_LENGTH = 77
NUM_MERGES = 48894         # 49408 = 2 * 256 byte symbols + 48894 merges + 2 special tokens
VOCAB_SIZE = 49408
# transformers' CLIPTokenizer word pattern (CLIP's SimpleTokenizer regex, case-folded input).
WORD_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
                r"|[^\s\p{L}\p{N}]+")


def byte_symbols():
  """GPT-2's 256 printable stand-ins for the bytes 0..255, in CLIP's vocabulary order."""
  bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in bs]  # control bytes, space, ...: chr(256 + k)
  return [chr(c) for c in bs] + [chr(256 + k) for k in range(len(others))]


def clip_vocab_from_bpe(path=EMBEDDED_BPE):
  """(vocab {token: id}, merges [(a, b)]) of CLIP from its merge list ``bpe_simple_vocab_16e6``.

  vocab = 256 byte symbols, the same with "</w>", the first 48,894 merges joined, then
  <|startoftext|> and <|endoftext|> (CLIP's SimpleTokenizer; = a tokenizer/ folder's vocab.json).
  """
  with gzip.open(path, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")
  merges = [tuple(line.split()) for line in lines[1:1 + NUM_MERGES]]
  if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
    raise ValueError(f"{path}: expected a header line and >= {NUM_MERGES} merges 'a b', got "
                     f"{len(merges)} lines, e.g. {merges[:1]}")
  symbols = byte_symbols()
  tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
  tokens += [START_TOKEN, END_TOKEN]
  return {t: i for i, t in enumerate(tokens)}, merges


def read_vocab_and_merges(folder):
  """(vocab, merges) from a tokenizer folder's vocab.json and merges.txt."""
  with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
    vocab = json.load(f)
  with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
    merges = [tuple(line.split()) for line in f.read().split("\n")
              if line and not line.startswith("#version")]
  return vocab, merges


def clip_bpe_tokenizer(vocab, merges, *, pad_token=SD1_PAD_TOKEN, max_length=MAX_LENGTH):
  """The fixed-length CLIP ``tokenizers.Tokenizer`` of a vocabulary and its merges."""
  for special in (START_TOKEN, END_TOKEN):
    if special not in vocab:
      raise ValueError(f"CLIP vocabulary lacks the special token {special!r} "
                       f"({len(vocab)} entries)")
  tok = Tokenizer(BPE(vocab=dict(vocab), merges=list(merges), dropout=None,
                      continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False,
                      unk_token=END_TOKEN))
  tok.normalizer = normalizers.Sequence(
      [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([START_TOKEN, END_TOKEN])
  tok.post_processor = processors.RobertaProcessing(
      (END_TOKEN, vocab[END_TOKEN]), (START_TOKEN, vocab[START_TOKEN]), trim_offsets=False,
      add_prefix_space=False)
  return fixed_length(tok, max_length=max_length, pad_token=pad_token)


def _special(value):
  """A special-token entry of a tokenizer config: "tok" or {"content": "tok", ...}."""
  return value.get("content") if isinstance(value, dict) else value


def folder_settings(folder):
  """(pad_token or None, model_max_length or None) from tokenizer_config / special_tokens_map."""
  pad, max_length = None, None
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    file = os.path.join(folder, name)
    if os.path.exists(file):
      with open(file, encoding="utf-8") as f:
        config = json.load(f)
      pad = _special(config.get("pad_token")) or pad
      n = config.get("model_max_length")
      if isinstance(n, int) and 0 < n < 1_000_000:  # transformers writes 1e30 for "unset"
        max_length = n
  return pad, max_length


def load_clip_tokenizer(path=None, *, pad_token=None, max_length=None):
  """CLIP tokenizer from a ``tokenizer/`` folder, or from the embedded merges when path is None.

  A folder needs vocab.json + merges.txt (or a transformers tokenizer.json); its pad token and
  model_max_length come from tokenizer_config.json / special_tokens_map.json unless given.
  Defaults: pad with <|endoftext|> (SD 1.x; pass ``SD2_PAD_TOKEN`` for SD 2.x), 77 tokens.
  """
  file_pad, file_len = (None, None) if path is None else folder_settings(path)
  pad_token = pad_token if pad_token is not None else (file_pad or SD1_PAD_TOKEN)
  max_length = max_length if max_length is not None else (file_len or MAX_LENGTH)
  if path is None:
    return clip_bpe_tokenizer(*clip_vocab_from_bpe(), pad_token=pad_token, max_length=max_length)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"CLIP tokenizer folder {path!r} does not exist")
  if all(os.path.exists(os.path.join(path, n)) for n in ("vocab.json", "merges.txt")):
    return clip_bpe_tokenizer(*read_vocab_and_merges(path), pad_token=pad_token,
                          max_length=max_length)
  if os.path.exists(os.path.join(path, "tokenizer.json")):
    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    return fixed_length(tok, max_length=max_length, pad_token=pad_token)
  raise FileNotFoundError(f"{path!r} has no vocab.json + merges.txt and no tokenizer.json "
                          f"(found: {sorted(os.listdir(path))})")
