"""ldm_jax.data.mnist_pairs: canvases, captions and the held-out pairs of the MNIST-pairs task."""

import numpy as np
import pytest

from ldm_jax.data import create_iterator
from ldm_jax.data import mnist_builder
from ldm_jax.data import mnist_pairs as mp

N = 3000  # examples drawn per split below


@pytest.fixture(scope="module")
def sources():
  return {s: mp.MnistPairs(s) for s in mp.SPLITS}


@pytest.fixture(scope="module")
def raw():
  images, labels = mnist_builder.load_raw()
  return images, labels, {s: set(mnist_builder.split_indices(labels, s).tolist()) for s in ("train", "test")}


def test_canvas_puts_the_left_and_right_digits_in_their_halves(sources, raw):
  images, labels, _ = raw
  src = sources["train"]
  idx = np.arange(0, 40)
  canvas, pair = src.read(idx)
  assert canvas.shape == (40, 32, 64, 1) and canvas.dtype == np.uint8 and pair.dtype == np.int32
  for k, i in enumerate(idx):
    e = src.example(int(i))
    assert labels[e["left_index"]] == e["left"] and labels[e["right_index"]] == e["right"]
    assert pair[k] == 10 * e["left"] + e["right"]
    left, right = canvas[k, :, :32, 0], canvas[k, :, 32:, 0]
    np.testing.assert_array_equal(left[2:30, 2:30], images[e["left_index"]])
    np.testing.assert_array_equal(right[2:30, 2:30], images[e["right_index"]])
    for half in (left, right):  # 2-pixel zero border: the 28 -> 32 padding of mnist_embedded
      assert not half[:2].any() and not half[-2:].any() and not half[:, :2].any() and not half[:, -2:].any()


def test_examples_are_a_function_of_the_index_alone(sources):
  src = sources["train"]
  a, _ = src.read([5, 17, 2999])
  b, _ = mp.MnistPairs("train").read([2999, 5, 17])
  np.testing.assert_array_equal(a, b[[1, 2, 0]])
  assert src.captions([17, 5]) == mp.MnistPairs("train").captions([17, 5])
  assert src.captions([5]) != src.captions([6]) or not np.array_equal(*src.read([5, 6])[0])


def test_held_out_pairs_never_appear_in_training_in_any_phrasing(sources, raw):
  _, _, split_of = raw
  held = set(mp.HELD_OUT_PAIRS)
  assert held == {(d, (d + 3) % 10) for d in range(10)}
  seen, phrasings, forms = set(), set(), set()
  for i in range(N):
    e = sources["train"].example(i)
    pair = (e["left"], e["right"])
    assert pair not in held
    assert mp.parse_caption(e["caption"]) == pair  # the caption says exactly this pair
    assert e["left_index"] in split_of["train"] and e["right_index"] in split_of["train"]
    seen.add(pair)
    phrasings.add(e["phrasing"])
    forms.update("word" if w in mp.WORDS else "numeral" for w in e["caption"].split()
                 if w in mp.WORDS or w.isdigit())
  assert len(seen) == 90 and phrasings == set(range(len(mp.PHRASINGS))) and forms == {"word", "numeral"}
  for i in range(0, mp.SIZES["test"], 10):  # the evaluation splits: new (held-out MNIST) images
    h, t = sources["heldout"].example(i), sources["test"].example(i)
    assert (h["left"], h["right"]) in held and (t["left"], t["right"]) not in held
    for e in (h, t):
      assert e["left_index"] in split_of["test"] and e["right_index"] in split_of["test"]


def test_grammar_has_left_of_and_right_of_with_numerals_and_words():
  assert mp.caption(3, 7, 0, False, True) == "3 left of seven"
  assert mp.caption(3, 7, 1, False, True) == "seven right of 3"
  assert mp.parse_caption("seven right of 3") == (3, 7)
  assert mp.parse_caption("three to the left of 7") == (3, 7)
  assert set(mp.VOCABULARY) >= {"left", "right", "of", "3", "three"}
  for text in ("3 above 7", "thirteen left of 7", ""):
    with pytest.raises(ValueError, match="grammar|not a digit"):
      mp.parse_caption(text)


def test_bad_split_and_index_are_clear_errors(sources):
  with pytest.raises(ValueError, match="split 'val'.*train, test, heldout"):
    mp.MnistPairs("val")
  with pytest.raises(ValueError, match="index 2000 outside mnist_pairs/test"):
    sources["test"].example(2000)


def _iterator(split="train", **kw):
  spec = {"name": "mnist_pairs", "split": split, "image_size": (32, 64), "crop": "none"}
  return create_iterator(spec, global_batch_size=8, seed=3, num_devices=2, prefetch=0, **kw)


def test_by_name_through_the_pipeline_with_captions_resumable_and_sharded_per_process(sources):
  it = _iterator(process_index=0, process_count=1)
  assert it.has_captions and it.image_shape == (32, 64, 1)
  batches = [next(it) for _ in range(3)]
  b = batches[1]
  assert b["image"].shape == (8, 32, 64, 1) and b["caption"].shape == (8,)
  # The rows are the source's examples at the batch's indices: image, label and caption agree.
  idx = it.indices_at(1)
  images, labels = sources["train"].read(idx)
  np.testing.assert_array_equal(b["image"], images)
  np.testing.assert_array_equal(b["label"], labels)
  assert list(b["caption"]) == sources["train"].captions(idx)
  # A restart at position 2 gives batch 2 again; two processes split each batch in halves.
  again = _iterator(process_index=0, process_count=1, start_position=2)
  assert list(next(again)["caption"]) == list(batches[2]["caption"])
  halves = [_iterator(process_index=p, process_count=2) for p in (0, 1)]
  for k in range(3):
    parts = [next(h) for h in halves]
    assert list(parts[0]["caption"]) + list(parts[1]["caption"]) == list(batches[k]["caption"])
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), batches[k]["image"])
  # A transform (the text stage's captions -> token ids) runs on every batch.
  tokens = _iterator(process_index=0, process_count=1,
                     transform=lambda b: {"image": b["image"], "n": np.asarray([len(c) for c in b["caption"]])})
  first = next(tokens)
  assert set(first) == {"image", "n"}
  np.testing.assert_array_equal(first["n"], [len(c) for c in batches[0]["caption"]])
  for i in (it, again, tokens, *halves):
    i.close()


def test_non_square_image_size_is_checked():
  with pytest.raises(ValueError, match="image_size"):
    create_iterator({"name": "mnist_pairs", "image_size": (32, 0)}, global_batch_size=8, seed=0,
                    num_devices=1, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="heldout"):  # the valid splits are listed
    _iterator(split="val", process_index=0, process_count=1)


def test_pair_prompts_name_their_pairs_in_every_phrasing_and_form():
  pairs = mp.SEEN_PAIRS[:7]
  per_pair = 4 * len(mp.PHRASINGS)
  captions, a, b, phrasing = mp.pair_prompts(pairs, per_pair)
  assert len(captions) == len(pairs) * per_pair
  for text, left, right, p in zip(captions, a, b, phrasing):
    assert mp.parse_caption(text) == (left, right), text
    assert text.split()[0] in {str(left if p not in mp.RIGHT_FIRST else right),
                               mp.WORDS[left if p not in mp.RIGHT_FIRST else right]}
  for k in range(len(pairs)):  # each pair: every phrasing with numerals and with words
    own = captions[k * per_pair:(k + 1) * per_pair]
    assert len(set(own)) == per_pair
    assert {int(i) for i in phrasing[k * per_pair:(k + 1) * per_pair]} == set(range(len(mp.PHRASINGS)))
  assert set(mp.RIGHT_FIRST) == {i for i, t in enumerate(mp.PHRASINGS) if t.startswith("{b}")}


def test_digits_caption_style_keeps_the_pairs_and_says_them_by_position(sources):
  digits = mp.MnistPairs("train", caption_style="digits")
  idx = np.arange(300)
  np.testing.assert_array_equal(digits.read(idx)[0], sources["train"].read(idx)[0])
  for i, (text, grammar) in enumerate(zip(digits.captions(idx), sources["train"].captions(idx))):
    e = sources["train"].example(i)
    assert text == f"{e['left']} {e['right']}"
    assert mp.parse_caption(text) == mp.parse_caption(grammar)
  captions, a, b, phrasing = mp.pair_prompts(mp.HELD_OUT_PAIRS, 3, "digits")
  assert captions[:3] == ["0 3"] * 3 and set(phrasing) == {-1}
  assert [mp.parse_caption(t) for t in captions] == list(zip(a, b))
  it = create_iterator({"name": "mnist_pairs", "image_size": (32, 64), "crop": "none",
                        "caption_style": "digits", "shuffle": False}, global_batch_size=4, seed=0,
                       num_devices=1, process_index=0, process_count=1)
  try:
    assert list(next(iter(it))["caption"]) == digits.captions(range(4))
  finally:
    it.close()
  with pytest.raises(ValueError, match="'words'.*grammar, digits"):
    mp.MnistPairs("train", caption_style="words")
  with pytest.raises(ValueError, match="grammar, digits"):
    mp.pair_prompts(mp.HELD_OUT_PAIRS, 1, "words")
  with pytest.raises(ValueError, match="caption_style='digits' is for name='mnist_pairs' only"):
    create_iterator({"name": "mnist_embedded", "caption_style": "digits"}, global_batch_size=4,
                    seed=0, num_devices=1, process_index=0, process_count=1)
