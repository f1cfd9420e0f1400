"""MNIST pairs: two embedded-MNIST digits side by side, and a caption that says which is where.

The CPU-scale text-to-image task (issue 13): does per-token cross-attention compose a prompt
("3 left of seven") into an image, also for digit pairs it never saw? Example i of a split is a
pure function of (split, i), so any batch can be rebuilt from its position alone:

  image    uint8 [32, 64, 1]: the left digit a in columns 0-31, the right digit b in columns 32-63,
           each 28 x 28 MNIST digit zero-padded (centred) to 32 x 32, as mnist_embedded with
           resize="pad" gives it;
  caption  one of PHRASINGS with a and b filled in, each written as a numeral ("3") or an English
           word ("three"), both chosen per example; with caption_style="digits", always "{a} {b}"
           in numerals ("3 7"): two tokens that say the left and the right digit by position
           alone (the diagnostic run of experiments/mnist_text_to_image.py);
  label    the ordered pair as one int, a * 10 + b (NAME = "mnist_pairs"  # the dataset spec's name (ldm_jax.data.create_iterator)
NUM_CLASSES = 100).

Splits:
  "train"    digits from mnist_embedded's train split; the pair is uniform over the 90 ordered
             pairs that are not HELD_OUT_PAIRS (a = b included).
  "test"     digits from the held-out MNIST images; the same 90 seen pairs (new images).
  "heldout"  digits from the held-out MNIST images; only the 10 HELD_OUT_PAIRS (d, (d + 3) % 10),
             which no "train" example shows in any phrasing.
Sizes (SIZES) are fixed virtual lengths: an epoch of "train" is 60,000 draws.

  source = MnistPairs("train")
  images, labels = source.read([0, 1, 2])   # uint8 [3, 32, 64, 1], int32 [3]
  source.captions([0, 1, 2])                # ["3 left of seven", ...]
  MnistPairs("train", caption_style="digits").captions([0])   # ["3 7"]: the same pair
  parse_caption("seven right of 3")         # (3, 7): (left, right); also "3 7"
"""

import numpy as np

from ldm_jax.data import mnist_builder

NAME = "mnist_pairs"  # the dataset spec's name (ldm_jax.data.create_iterator)
NUM_CLASSES = 100  # label = 10 * left + right
HEIGHT, WIDTH = 32, 64
HELD_OUT_PAIRS = tuple((d, (d + 3) % 10) for d in range(10))  # (left, right), never trained on
SEEN_PAIRS = tuple((a, b) for a in range(10) for b in range(10) if (a, b) not in HELD_OUT_PAIRS)
SPLITS = ("train", "test", "heldout")
SIZES = {"train": 60_000, "test": 2_000, "heldout": 2_000}
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {a} is the left digit, {b} the right one.
PHRASINGS = (
    "{a} left of {b}",
    "{b} right of {a}",
    "{a} to the left of {b}",
    "{b} to the right of {a}",
    "{a} followed by {b}",
    "{b} after {a}",
)
# caption_style="digits": the left digit, then the right one, as numerals (no words, no syntax).
DIGITS_CAPTION = "{a} {b}"
CAPTION_STYLES = ("grammar", "digits")
# Every word a caption can contain (for a word-level tokenizer).
VOCABULARY = tuple(sorted({*WORDS, *(str(d) for d in range(10)),
                           *(w for p in PHRASINGS for w in p.split() if not w.startswith("{"))}))
# The phrasings that name the right digit first ("{b} right of {a}", ...).
RIGHT_FIRST = tuple(i for i, p in enumerate(PHRASINGS) if p.startswith("{b}"))
_SPLIT_SEED = {"train": 0, "test": 1, "heldout": 2}
_SEED = 20_221_209  # fixed: the dataset is the same everywhere


def digit_name(d: int, as_word: bool) -> str:
  return WORDS[d] if as_word else str(d)


def caption(a: int, b: int, phrasing: int, a_word: bool, b_word: bool) -> str:
  """The caption of left digit `a` and right digit `b` in PHRASINGS[phrasing]."""
  return PHRASINGS[phrasing].format(a=digit_name(a, a_word), b=digit_name(b, b_word))


def check_caption_style(style: str) -> None:
  if style not in CAPTION_STYLES:
    raise ValueError(f"mnist_pairs caption_style {style!r} unknown; valid choices: "
                     f"{', '.join(CAPTION_STYLES)}.")


def pair_prompts(pairs, per_pair, caption_style: str = "grammar"):
  """(captions, left digits, right digits, phrasing indices) for evaluating `pairs`: per_pair
  captions per pair, the phrasings and numeral / word forms cycling so that every pair gets each
  form about equally ("digits" style: every caption "{a} {b}", phrasing index -1)."""
  check_caption_style(caption_style)
  captions, lefts, rights, phrasings = [], [], [], []
  for k, (a, b) in enumerate(pairs):
    for j in range(per_pair):
      p = (k + j) % len(PHRASINGS)
      form = (k + j // len(PHRASINGS)) % 4
      if caption_style == "digits":
        p = -1
        captions.append(DIGITS_CAPTION.format(a=a, b=b))
      else:
        captions.append(caption(a, b, p, bool(form & 1), bool(form & 2)))
      lefts.append(a)
      rights.append(b)
      phrasings.append(p)
  return captions, np.asarray(lefts), np.asarray(rights), np.asarray(phrasings)


def _digit(token: str) -> int:
  if token in WORDS:
    return WORDS.index(token)
  if len(token) == 1 and token.isdigit():
    return int(token)
  raise ValueError(f"{token!r} is not a digit; expected 0-9 or one of {', '.join(WORDS)}.")


def parse_caption(text: str) -> tuple[int, int]:
  """(left, right) digits a caption describes; ValueError for text outside the grammar."""
  words = text.split()
  for p in (*PHRASINGS, DIGITS_CAPTION):
    pattern = p.split()
    if len(pattern) != len(words):
      continue
    found, ok = {}, True
    for want, got in zip(pattern, words):
      if want in ("{a}", "{b}"):
        try:
          found[want] = _digit(got)
        except ValueError:
          ok = False
          break
      elif want != got:
        ok = False
        break
    if ok:
      return found["{a}"], found["{b}"]
  raise ValueError(f"caption {text!r} is outside the MNIST-pairs grammar; phrasings: "
                   f"{'; '.join((*PHRASINGS, DIGITS_CAPTION))}.")


def pad_digit(image: np.ndarray) -> np.ndarray:
  """uint8 [28, 28] -> uint8 [32, 32], centred zero padding."""
  return np.pad(image, ((2, 2), (2, 2)))


class MnistPairs:
  """The random-access source of one split (the interface `ldm_jax.data.source` describes),
  plus `captions(indices)` and `example(i)`."""

  def __init__(self, split: str = "train", caption_style: str = "grammar"):
    if split not in SPLITS:
      raise ValueError(f"mnist_pairs split {split!r} unknown; valid choices: {', '.join(SPLITS)}.")
    check_caption_style(caption_style)
    self.split, self.caption_style = split, caption_style
    images, labels = mnist_builder.load_raw()
    digits = mnist_builder.split_indices(labels, "train" if split == "train" else "test")
    self._images, self._labels = images, labels
    self._by_class = [digits[labels[digits] == c] for c in range(10)]  # file indices per digit
    self._pairs = np.asarray(HELD_OUT_PAIRS if split == "heldout" else SEEN_PAIRS, np.int64)
    self.num_classes, self.class_names = NUM_CLASSES, tuple(f"{a}{b}" for a in range(10) for b in range(10))
    self.description = (f"mnist_pairs/{split} ({SIZES[split]:,} examples: {len(self._pairs)} ordered "
                        f"pairs of mnist_embedded/{'train' if split == 'train' else 'test'} digits)")

  @property
  def num_examples(self) -> int:
    return SIZES[self.split]

  def example(self, i: int) -> dict:
    """Example i: {"left", "right" (digits), "left_index", "right_index" (MNIST file indices),
    "phrasing" (index into PHRASINGS), "caption"}."""
    if not 0 <= i < self.num_examples:
      raise ValueError(f"index {i} outside mnist_pairs/{self.split} [0, {self.num_examples}).")
    rng = np.random.default_rng([_SEED, _SPLIT_SEED[self.split], int(i)])
    a, b = (int(v) for v in self._pairs[rng.integers(len(self._pairs))])
    left = int(self._by_class[a][rng.integers(len(self._by_class[a]))])
    right = int(self._by_class[b][rng.integers(len(self._by_class[b]))])
    phrasing = int(rng.integers(len(PHRASINGS)))
    a_word, b_word = (bool(v) for v in rng.integers(2, size=2))
    text = (DIGITS_CAPTION.format(a=a, b=b) if self.caption_style == "digits"
            else caption(a, b, phrasing, a_word, b_word))
    return {"left": a, "right": b, "left_index": left, "right_index": right, "phrasing": phrasing,
            "caption": text}

  def read(self, indices):
    """(images uint8 [n, 32, 64, 1], labels int32 [n] = 10 * left + right) of `indices`."""
    examples = [self.example(int(i)) for i in np.asarray(indices, np.int64)]
    images = np.zeros((len(examples), HEIGHT, WIDTH, 1), np.uint8)
    for k, e in enumerate(examples):
      images[k, :, :32, 0] = pad_digit(self._images[e["left_index"]])
      images[k, :, 32:, 0] = pad_digit(self._images[e["right_index"]])
    labels = np.asarray([10 * e["left"] + e["right"] for e in examples], np.int32)
    return images, labels

  def captions(self, indices) -> list[str]:
    return [self.example(int(i))["caption"] for i in np.asarray(indices, np.int64)]
