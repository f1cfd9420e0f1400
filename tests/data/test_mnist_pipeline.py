"""Tests of ldm_jax.data on the embedded MNIST, built and read through TFDS (no mocks)."""

import ast

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ldm_jax import data
from ldm_jax.data import mnist_builder
from ldm_jax.data import pipeline
from ldm_jax.data import tfds_source

# Per-digit counts of the MNIST test set (from the embedded README): an independent reference.
T10K_COUNTS = np.array([980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
HELD_OUT = (T10K_COUNTS + 5) // 6  # ceil(n / 6): within-class ranks 0, 6, 12, ... are held out
G = 24  # divides the 8,328 training images (347 batches) and the 8 simulated devices


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  builder = tfds_source.prepared_builder("mnist_embedded", path)  # builds it, offline
  assert builder.is_prepared() and builder.info.file_format.value == "array_record"
  return path


@pytest.fixture(scope="module")
def train_source(data_dir):
  return tfds.data_source("mnist_embedded", split="train", data_dir=data_dir, download=False)


@pytest.fixture(scope="module")
def opened(data_dir):
  """The two splits decoded once, shared by the iterators of this module."""
  return {split: pipeline.open_source(pipeline.resolve_spec(
      {"data_dir": data_dir, "split": split})) for split in ("train", "test")}


def make(data_dir, spec=None, *, opened=None, **kw):
  """create_iterator, or iterator_for_source on the already decoded split when `opened`."""
  kw = {"global_batch_size": G, "seed": 0, "process_index": 0, "process_count": 1,
        "num_devices": 8, **kw}
  spec = {"data_dir": data_dir, **(spec or {})}
  if opened is None:
    return data.create_iterator(spec, **kw)
  spec = pipeline.resolve_spec(spec)
  return pipeline.iterator_for_source(opened[spec["split"]], spec, **kw)


def take(it, n):
  return [next(it) for _ in range(n)]


def test_builder_splits_follow_the_stratified_rule(data_dir):
  builder = tfds.builder("mnist_embedded", data_dir=data_dir)
  assert builder.info.splits["train"].num_examples == 8328
  assert builder.info.splits["test"].num_examples == 1672 == HELD_OUT.sum()
  raw_images, raw_labels = mnist_builder.load_raw()
  seen = {c: 0 for c in range(10)}  # rank of each image within its class, by a plain loop
  expected_test = set()
  for i, c in enumerate(raw_labels):
    if seen[int(c)] % 6 == 0:
      expected_test.add(i)
    seen[int(c)] += 1
  for split in ("train", "test"):
    ds = tfds.data_source("mnist_embedded", split=split, data_dir=data_dir, download=False,
                          decoders={"image": tfds.decode.SkipDecoding()})  # labels only
    examples = ds.__getitems__(list(range(len(ds))))
    index = np.array([e["index"] for e in examples])
    labels = np.array([e["label"] for e in examples])
    counts = np.bincount(labels, minlength=10)
    np.testing.assert_array_equal(counts, HELD_OUT if split == "test" else T10K_COUNTS - HELD_OUT)
    np.testing.assert_array_equal(counts, mnist_builder.split_counts(split))  # documented API
    assert (set(index.tolist()) == expected_test) == (split == "test")
    if split == "train":
      assert set(index.tolist()) == set(range(10000)) - expected_test
    np.testing.assert_array_equal(labels, raw_labels[index])
    decoded = tfds.data_source("mnist_embedded", split=split, data_dir=data_dir, download=False)
    for e in decoded.__getitems__(list(range(0, len(ds), 97))):  # TFDS's own image decoding
      np.testing.assert_array_equal(e["image"][..., 0], raw_images[e["index"]])


def test_batch_shapes_dtypes_padding_and_to_float(data_dir, train_source):
  it = make(data_dir)
  assert (it.steps_per_epoch, it.num_classes, it.image_shape) == (347, 10, (32, 32, 1))
  batch = next(it)
  assert set(batch) == {"image", "label"}
  assert batch["image"].shape == (G, 32, 32, 1) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (G,) and batch["label"].dtype == np.int32
  indices = it.indices_at(0)
  for k, i in enumerate(indices):
    raw = train_source[int(i)]
    assert batch["label"][k] == raw["label"]
    np.testing.assert_array_equal(batch["image"][k, 2:30, 2:30], raw["image"])  # 28 -> 32 pad
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert not batch["image"][:, border].any()
  x = np.asarray(data.to_float(batch["image"]))
  assert x.dtype == np.float32 and x.min() == -1.0 and x.max() <= 1.0
  np.testing.assert_allclose(x, batch["image"] / 127.5 - 1.0, atol=1e-6)


def test_epoch_label_distribution_matches_the_rule(data_dir, opened):
  it = make(data_dir, opened=opened)
  labels = np.concatenate([b["label"] for b in take(it, it.steps_per_epoch)])
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), T10K_COUNTS - HELD_OUT)
  test_it = make(data_dir, {"split": "test", "shuffle": False}, opened=opened,
                 global_batch_size=8, num_epochs=1, drop_remainder=False)
  labels = np.concatenate([b["label"] for b in test_it])
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), HELD_OUT)


def test_order_is_deterministic_per_seed_and_differs_between_seeds_and_epochs(data_dir, opened):
  a, b, c = (make(data_dir, opened=opened, seed=s) for s in (3, 3, 4))
  for x, y in zip(take(a, 4), take(b, 4)):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not np.array_equal(a.indices_at(0), c.indices_at(0))
  epoch0 = np.concatenate([a.indices_at(k) for k in range(a.steps_per_epoch)])
  epoch1 = np.concatenate([a.indices_at(k + a.steps_per_epoch) for k in range(a.steps_per_epoch)])
  assert sorted(epoch0) == sorted(epoch1) == list(range(8328))
  assert not np.array_equal(epoch0, epoch1)


def test_two_processes_read_disjoint_shards_covering_the_split(data_dir, opened):
  its = [make(data_dir, opened=opened, process_index=p, process_count=2, prefetch=0)
         for p in range(2)]
  single = make(data_dir, opened=opened)
  shards = [np.concatenate([it.indices_at(k) for k in range(it.steps_per_epoch)]) for it in its]
  assert all(len(s) == 8328 // 2 for s in shards)
  assert not set(shards[0].tolist()) & set(shards[1].tolist())
  assert set(shards[0].tolist()) | set(shards[1].tolist()) == set(range(8328))
  for _ in range(3):  # the global batch is the same whatever the process count
    parts, whole = [next(it) for it in its], next(single)
    assert parts[0]["image"].shape == (G // 2, 32, 32, 1)
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_resume_is_exact_including_across_an_epoch_boundary(data_dir, opened):
  spec = {"flip": True, "crop": "random"}
  reference = make(data_dir, spec, opened=opened)
  stream = take(reference, 352)  # crosses the epoch boundary at 347
  for k in (5, 345):  # inside epoch 0; just before the boundary
    it = make(data_dir, spec, opened=opened)
    it.restore({"position": k - 2})
    take(it, 2)  # prefetch runs ahead of the position
    state = it.state()
    assert state == {"position": k}
    resumed = make(data_dir, spec, opened=opened, start_position=state["position"])
    for j, batch in enumerate(take(resumed, 5)):
      np.testing.assert_array_equal(batch["image"], stream[k + j]["image"])
      np.testing.assert_array_equal(batch["label"], stream[k + j]["label"])
    it.restore(state)  # restoring the same iterator after prefetching also continues exactly
    np.testing.assert_array_equal(next(it)["image"], stream[k]["image"])
  flipped = [np.array_equal(b["image"], b["image"][:, :, ::-1]) for b in stream[:2]]
  assert not all(flipped)  # flips happen (a sanity check that the spec took effect)


def test_num_epochs_stops_the_iterator(data_dir, opened):
  it = make(data_dir, {"split": "test"}, opened=opened, global_batch_size=8 * 19, num_epochs=2)
  assert it.steps_per_epoch == 1672 // (8 * 19) == 11
  assert sum(1 for _ in it) == 22 and it.position == 22


def test_bad_inputs_raise_before_training(data_dir, opened):
  with pytest.raises(ValueError, match="mnist_embedded.*folder.*Close matches.*'mnist'"):
    make(data_dir, {"name": "mnistt"})
  with pytest.raises(ValueError, match="Close matches") as err:
    make(data_dir, {"name": "mnist_embeded"})  # registered with TFDS and named in the message
  close = ast.literal_eval(str(err.value).split("Close matches: ")[1].rstrip("."))
  assert close == ["mnist_embedded"], close  # each name once
  with pytest.raises(ValueError, match=r"no split 'validation'; available: \['test', 'train'\]"):
    make(data_dir, {"split": "validation"})
  with pytest.raises(ValueError, match="not divisible by the device count 8"):
    make(data_dir, global_batch_size=20)
  with pytest.raises(ValueError, match="not divisible by the process count 5"):
    make(data_dir, global_batch_size=84, process_count=5, num_devices=1)
  with pytest.raises(ValueError, match="unknown dataset spec keys.*image_sise"):
    make(data_dir, {"image_sise": 32})
  with pytest.raises(ValueError, match="crop 'middle' unknown"):
    make(data_dir, {"crop": "middle"})
  with pytest.raises(ValueError, match="cannot fit a 28x28 image into 16x16"):
    make(data_dir, {"image_size": 16, "resize": "pad"}, opened=opened)


class NoImages(tfds.core.GeneratorBasedBuilder):
  """A tiny TFDS dataset with a vector feature and no image, to test the non-image error."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = mnist_builder.MnistEmbedded.code_path  # see mnist_builder: no importlib_resources

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"x": tfds.features.Tensor(shape=(3,), dtype=np.float32)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(4):
      yield i, {"x": np.full(3, i, np.float32)}


def test_non_image_dataset_is_rejected(tmp_path):
  with pytest.raises(ValueError, match=r"not an image dataset.*features are \['x'\]"):
    data.create_iterator({"name": "no_images", "data_dir": str(tmp_path)}, global_batch_size=2,
                         seed=0, process_index=0, process_count=1, num_devices=1)


@pytest.mark.slow  # imports TensorFlow (about 5 s of CPU) to read tfrecord through tf.data
def test_a_tfrecord_prepared_dataset_gives_the_same_batches(data_dir, opened, tmp_path):
  """tfrecord (TFDS's default format) has no random access: read once into memory via tf.data."""
  tfds.builder("mnist_embedded", data_dir=tmp_path, file_format="tfrecord").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  from_tfrecord = make(str(tmp_path), {"split": "test", "flip": True}, global_batch_size=8)
  from_array_record = make(data_dir, {"split": "test", "flip": True}, opened=opened,
                           global_batch_size=8)
  for _ in range(3):
    a, b = next(from_tfrecord), next(from_array_record)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_reading_per_batch_from_array_record_equals_reading_into_memory(data_dir, opened):
  streamed = make(data_dir, {"in_memory": False, "flip": True})
  assert type(streamed.source).__name__ == "TfdsSource"  # decodes each batch from disk
  in_memory = make(data_dir, {"flip": True}, opened=opened)
  for _ in range(3):
    a, b = next(streamed), next(in_memory)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
