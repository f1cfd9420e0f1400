"""A word-level tokenizer built from a caption vocabulary, for small text-to-image experiments.

One id per word: captions are NFKC-normalised and lower-cased, split on whitespace and
punctuation (each punctuation mark is a word), and the vocabulary holds the words seen in the
training captions (``train_word_level``: tokenizers' ``WordLevelTrainer``, most frequent first,
ties in byte order), or a given word list (``word_level_tokenizer``). Ids 0..3 are the special
tokens <pad>, <unk>, <start>, <end>; a prompt becomes <start> words <end> <pad>... .

Unknown-word policy (``unknown``, stored in the tokenizer, so it survives ``tokenizer.save`` /
``Tokenizer.from_file``):
  "unk"    a word outside the vocabulary becomes <unk> (id 1);
  "error"  ``ldm_jax.text.token_ids`` raises ValueError naming the prompt and its unknown words
           (the model's unknown token is then a string no word can equal, so tokenizers refuses).
"""

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer

from ldm_jax.text.token_ids import check_prompts, fixed_length

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
SPECIAL_TOKENS = (PAD, UNK, START, END)
UNKNOWN_POLICIES = ("unk", "error")
MAX_LENGTH = 77
# The model's unknown token under the "error" policy: contains spaces, so no pre-token equals it.
_REFUSE = "<unknown words refused>"


def _check_policy(unknown):
  if unknown not in UNKNOWN_POLICIES:
    raise ValueError(f"unknown-word policy {unknown!r} is not one of {UNKNOWN_POLICIES}")


def _assemble(model, vocab, max_length):
  tok = Tokenizer(model)
  tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.add_special_tokens(list(SPECIAL_TOKENS))
  tok.post_processor = processors.TemplateProcessing(
      single=f"{START} $A {END}", special_tokens=[(START, vocab[START]), (END, vocab[END])])
  return fixed_length(tok, max_length=max_length, pad_token=PAD)


def word_level_tokenizer(words, *, unknown="unk", max_length=MAX_LENGTH):
  """Fixed-length word-level tokenizer of a word list; ids 0..3 special, then ``words`` in order.

  Words are taken as given (already lower case, without spaces); duplicates are an error.
  """
  _check_policy(unknown)
  words = check_prompts(words)
  dupes = sorted({w for w in words if words.count(w) > 1})
  bad = [w for w in words if not w or w != w.strip() or " " in w or w in SPECIAL_TOKENS]
  if dupes or bad:
    raise ValueError(f"word list has duplicates {dupes[:10]} / empty, spaced or special entries "
                     f"{bad[:10]}")
  vocab = {t: i for i, t in enumerate((*SPECIAL_TOKENS, *words))}
  return _assemble(WordLevel(vocab, unk_token=UNK if unknown == "unk" else _REFUSE), vocab,
                   max_length)


def train_word_level(captions, *, min_count=1, max_words=None, unknown="unk",
                     max_length=MAX_LENGTH):
  """Word-level tokenizer whose vocabulary is the words of ``captions`` seen >= min_count times.

  max_words: keep only that many of the most frequent words (None: all). Deterministic.
  """
  _check_policy(unknown)
  captions = check_prompts(captions)
  if max_words is not None and (not isinstance(max_words, int) or max_words < 1):
    raise ValueError(f"max_words must be a positive int or None, got {max_words!r}")
  size = len(SPECIAL_TOKENS) + (max_words if max_words is not None else 10**9)
  trainer = WordLevelTrainer(vocab_size=size, min_frequency=min_count,
                             special_tokens=list(SPECIAL_TOKENS), show_progress=False)
  tok = Tokenizer(WordLevel(unk_token=UNK))
  tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.train_from_iterator(captions, trainer)
  vocab = tok.get_vocab()
  words = sorted((w for w in vocab if w not in SPECIAL_TOKENS), key=vocab.get)
  return word_level_tokenizer(words, unknown=unknown, max_length=max_length)


def unknown_policy(tokenizer):
  """The unknown-word policy ("unk" / "error") of a word-level tokenizer built here."""
  if not isinstance(tokenizer.model, WordLevel):
    raise ValueError(f"not a word-level tokenizer: model is {type(tokenizer.model).__name__}")
  return "unk" if tokenizer.model.unk_token == UNK else "error"
