"""Tests of the image-folder source on PNG / JPEG files written by the test."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from ldm_jax import data


def make(root, spec=None, **kw):
  kw = {"global_batch_size": 2, "seed": 0, "process_index": 0, "process_count": 1,
        "num_devices": 1, **kw}
  return data.create_iterator({"source": "folder", "data_dir": str(root), **(spec or {})}, **kw)


def write_images(root, rng):
  """cat/ 3 RGB PNGs 20x16, dog/ 1 PNG + 1 JPEG in dog/sub/ (nested): labels cat=0, dog=1."""
  arrays = {}
  for name in ("cat/a.png", "cat/b.png", "cat/c.PNG", "dog/d.png", "dog/sub/e.jpg"):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    array = rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)
    Image.fromarray(array).save(path, quality=95)
    arrays[name] = np.asarray(Image.open(path))  # what a decoder returns (JPEG is lossy)
  return arrays


def all_batches(it):
  batches = [it.batch_at(k) for k in range(it.steps_per_epoch)]
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_folder_labels_center_crop_and_channels(tmp_path):
  arrays = write_images(tmp_path, np.random.default_rng(0))
  it = make(tmp_path, {"image_size": 16, "crop": "center", "shuffle": False},
            global_batch_size=1)
  assert it.class_names == ("cat", "dog") and it.num_classes == 2
  got = all_batches(it)
  np.testing.assert_array_equal(got["label"], [0, 0, 0, 1, 1])
  for k, name in enumerate(sorted(arrays)):  # files are ordered by relative path
    np.testing.assert_array_equal(got["image"][k], arrays[name][2:18])  # centre 16x16 of 20x16
  gray = make(tmp_path, {"image_size": 16, "channels": 1, "shuffle": False}, global_batch_size=1)
  expected = np.asarray(Image.fromarray(arrays["cat/a.png"][2:18]).convert("L"))
  np.testing.assert_array_equal(gray.batch_at(0)["image"][0, ..., 0], expected)  # PIL's luma


def test_folder_random_crop_flip_and_resize(tmp_path):
  arrays = write_images(tmp_path, np.random.default_rng(1))
  spec = {"image_size": 8, "crop": "random", "flip": True, "resize": "resize"}
  it = make(tmp_path, spec, global_batch_size=5, seed=7)
  batch = it.batch_at(0)
  names = sorted(arrays)
  options = []  # one of the 5 squares of a 20x16 image, resized, maybe flipped
  for k, i in enumerate(it.indices_at(0)):
    src = Image.fromarray(arrays[names[i]])
    crops = [np.asarray(src.crop((0, o, 16, o + 16)).resize((8, 8), Image.Resampling.BICUBIC))
             for o in range(5)]
    matches = [(o, f) for o in range(5) for f in (0, 1)
               if np.array_equal(batch["image"][k], crops[o][:, ::-1] if f else crops[o])]
    assert len(matches) == 1
    options.append(matches[0])
  assert len(set(options)) > 1  # the choices vary between examples
  again = make(tmp_path, spec, global_batch_size=5, seed=7).batch_at(0)
  np.testing.assert_array_equal(again["image"], batch["image"])  # a function of (seed, index)


def test_flat_folder_has_no_labels_and_grayscale_becomes_rgb(tmp_path):
  for i in range(4):
    Image.fromarray(np.full((12, 12), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
  it = make(tmp_path, {"image_size": 16, "channels": 3, "shuffle": False})
  batch = next(it)
  assert set(batch) == {"image"} and it.num_classes is None
  assert batch["image"].shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(batch["image"][1, 2:14, 2:14], 40)  # 12 -> 16 by zero padding
  assert batch["image"][1, :2].max() == 0


@pytest.mark.parametrize("in_memory", [None, False])
def test_corrupt_image_is_named_when_the_iterator_is_created(tmp_path, in_memory):
  write_images(tmp_path, np.random.default_rng(2))
  good = (tmp_path / "cat" / "a.png").read_bytes()
  (tmp_path / "dog" / "broken.png").write_bytes(good[:len(good) // 2])  # truncated PNG
  with pytest.raises(ValueError, match=r"broken\.png"):
    make(tmp_path, {"in_memory": in_memory})
  (tmp_path / "dog" / "broken.png").write_bytes(b"not an image at all")
  with pytest.raises(ValueError, match=r"cannot read image file .*broken\.png"):
    make(tmp_path, {"in_memory": in_memory})


def test_folder_errors(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    make(tmp_path / "missing")
  with pytest.raises(ValueError, match=r"contains no \.png/\.jpg/\.jpeg files"):
    make(tmp_path)
  with pytest.raises(ValueError, match="needs data_dir"):
    data.create_iterator({"source": "folder"}, global_batch_size=2, seed=0, process_index=0,
                         process_count=1, num_devices=1)
  with pytest.raises(ValueError, match=r"source 'hdf5' unknown; valid: \('tfds', 'folder'\)"):
    make(tmp_path, {"source": "hdf5"})


def test_spec_may_be_a_config_dict(tmp_path):
  write_images(tmp_path, np.random.default_rng(3))
  spec = ml_collections.ConfigDict({"source": "folder", "data_dir": str(tmp_path),
                                    "image_size": 8, "resize": "resize", "channels": 1})
  it = data.create_iterator(spec, global_batch_size=4, seed=0, process_index=0,
                            process_count=1, num_devices=4)
  assert next(it)["image"].shape == (4, 8, 8, 1)


def _files(it):
  """The relative paths of an iterator's images, recovered from their pixels."""
  return sorted(tuple(b.ravel()[:4]) for b in all_batches(it)["image"])


def test_held_out_split_by_file_and_by_train_test_subfolders(tmp_path):
  rng = np.random.default_rng(4)
  for cls in ("cat", "dog"):
    for i in range(6 if cls == "cat" else 2):
      (tmp_path / cls).mkdir(exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
  spec = {"image_size": 8, "shuffle": False, "holdout_fraction": 0.25}
  split = {s: make(tmp_path, {**spec, "split": s}, global_batch_size=1) for s in ("train", "test", "all")}
  # Per class ceil(0.25 n) files held out (at most n - 1): cat 2 of 6, dog 1 of 2; disjoint, and
  # together every image, with the labels of the whole folder.
  assert [split[s].num_examples for s in ("train", "test", "all")] == [5, 3, 8]
  assert sorted(all_batches(split["test"])["label"]) == [0, 0, 1]
  assert not set(_files(split["train"])) & set(_files(split["test"]))
  assert sorted(_files(split["train"]) + _files(split["test"])) == _files(split["all"])
  assert "3 of 8 images, split by file hash with holdout_fraction=0.25" in split["test"].source.description
  # Deterministic: a function of the files alone, not of the seed.
  again = make(tmp_path, {**spec, "split": "test"}, global_batch_size=1, seed=5)
  assert _files(again) == _files(split["test"])
  # Nothing held out: "train" is every image, and "test" is an error that says what to do.
  assert make(tmp_path, {"image_size": 8}, global_batch_size=1).num_examples == 8
  with pytest.raises(ValueError, match="no held-out images: give holdout_fraction > 0"):
    make(tmp_path, {"image_size": 8, "split": "test"})
  with pytest.raises(ValueError, match=r"folder split 'val' unknown; valid: \('train', 'test', 'all'\)"):
    make(tmp_path, {"image_size": 8, "split": "val"})
  # train/ and test/ subfolders are the split (classes from their subfolders, one list for both).
  for s, cls in (("train", "cat"), ("train", "dog"), ("test", "dog")):
    (tmp_path / "sub" / s / cls).mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "sub" / s / cls / "x.png")
  test = make(tmp_path / "sub", {**spec, "split": "test"}, global_batch_size=1)
  assert test.num_examples == 1 and test.class_names == ("cat", "dog")
  assert all_batches(test)["label"].tolist() == [1] and "test/ of the folder" in test.source.description
  assert make(tmp_path / "sub", {**spec, "split": "train"}, global_batch_size=1).num_examples == 2
