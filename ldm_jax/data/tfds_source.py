"""Any TFDS image dataset by name and split (including the embedded `mnist_embedded`) as a source.

Storage and reading (TFDS 4.9.10):
  * A dataset that is not prepared yet is prepared in the array_record format (the embedded MNIST
    locally and in seconds; others by TFDS's own download), under a file lock so that concurrent
    processes build it once; TFDS writes into a temporary folder and renames it, so a killed
    build leaves nothing half-made.
  * array_record gives random access (`builder.as_data_source`); small datasets (decoded images
    <= `source.IN_MEMORY_BYTES`, e.g. MNIST, CIFAR-10) are read into memory once, larger ones are
    read batch by batch by index.
  * A dataset already prepared only as tfrecord (the TFDS default) has no random access: if small
    it is read once into memory through tf.data (deterministic file order), otherwise a ValueError
    explains how to prepare it as array_record.
TensorFlow is imported only to build a downloaded dataset or to read tfrecord, and is then made
CPU-only first; reading array_record (and building the embedded MNIST) never imports it.
"""

import contextlib
import fcntl
import io
import os
import pathlib
import re

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from ldm_jax.data import mnist_builder  # pylint: disable=unused-import  (registers it)
from ldm_jax.data import source as source_lib

EMBEDDED_NAME = "mnist_embedded"
_NO_GCS = dict(try_download_gcs=False)


def default_data_dir(name):
  """$LDM_JAX_DATA_DIR, else ~/.cache/ldm_jax/datasets for mnist_embedded, else TFDS's default."""
  if os.environ.get("LDM_JAX_DATA_DIR"):
    return os.environ["LDM_JAX_DATA_DIR"]
  if name.split("/")[0].split(":")[0] == EMBEDDED_NAME:
    return str(pathlib.Path.home() / ".cache" / "ldm_jax" / "datasets")
  return None


def hide_accelerators_from_tensorflow():
  """Imports TensorFlow and makes it CPU-only, so it never allocates GPU memory JAX needs."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (lazy: costs seconds)
  tf.config.set_visible_devices([], "GPU")
  return tf


def _unknown_name_error(name, err):
  import difflib  # pylint: disable=g-import-not-at-top
  names = tfds.list_builders(with_community_datasets=False)
  # Each name once (list_builders can repeat a name, and the embedded one may be listed too).
  close = difflib.get_close_matches(name.split("/")[0], sorted(set(names) | {EMBEDDED_NAME}), n=5)
  return ValueError(
      f"unknown dataset {name!r} ({type(err).__name__}). Name one as: a TFDS name such as "
      "'mnist', 'cifar10', 'celeb_a_hq/256' or 'imagenet2012' (see tfds.list_builders()); "
      f"'{EMBEDDED_NAME}' for the MNIST packaged with ldm_jax (offline); or use "
      "source='folder' with data_dir=<a folder of images>."
      + (f" Close matches: {close}." if close else ""))


@contextlib.contextmanager
def _lock(data_dir, name):
  path = pathlib.Path(data_dir) / f".{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lock"
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepared_builder(name, data_dir=None, download=True):
  """The TFDS builder of `name`, prepared (array_record when it builds it) in data_dir."""
  data_dir = data_dir or default_data_dir(name)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as err:
    raise _unknown_name_error(name, err) from None
  _check_image_features(builder)  # known from the builder's code: fail before any download
  if builder.is_prepared():
    return builder
  if not download:
    raise ValueError(f"dataset {name!r} is not prepared in {builder.data_dir} and download=False.")
  with _lock(builder.data_dir_root, name):
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      if builder.name != EMBEDDED_NAME:  # the embedded build encodes with PIL, without TF
        hide_accelerators_from_tensorflow()
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(**_NO_GCS))
  return builder


def _check_image_features(builder):
  """Raises ValueError for a dataset without a uint8 tfds.features.Image called 'image'."""
  features = builder.info.features
  names = sorted(features.keys()) if hasattr(features, "keys") else [type(features).__name__]
  image = features["image"] if "image" in names else None
  if not isinstance(image, tfds.features.Image):
    raise ValueError(f"dataset {builder.name!r} is not an image dataset: it needs an 'image' "
                     f"feature of type tfds.features.Image; its features are {names}.")
  if np.dtype(image.np_dtype) != np.uint8:
    raise ValueError(f"dataset {builder.name!r}: 'image' has dtype {image.np_dtype}; "
                     "only uint8 images are supported.")


def _check_split(builder, split):
  """Raises ValueError for a split (or the split of a slice like 'train[:10%]') not in builder."""
  splits = sorted(builder.info.splits.keys())
  base = re.split(r"[\[+]", split, maxsplit=1)[0].strip()
  if base not in splits:
    raise ValueError(f"dataset {builder.name!r} has no split {split!r}; available: {splits}.")


def _label_info(builder):
  """(has_label, num_classes, class_names) of the 'label' feature, if any."""
  features = builder.info.features
  label = features["label"] if "label" in features.keys() else None
  class_names = tuple(label.names) if hasattr(label, "names") else None
  return label is not None, getattr(label, "num_classes", None), class_names


def _decode_image(encoded):
  """PNG / JPEG bytes -> uint8 [H, W, C] with PIL (2x faster than TFDS's numpy decoding)."""
  array = np.asarray(Image.open(io.BytesIO(encoded)))
  return array[..., None] if array.ndim == 2 else array


class TfdsSource:
  """Reads examples of an array_record TFDS split by index (decoding on every read).

  data_source: `builder.as_data_source` with the image feature left encoded (SkipDecoding).
  """

  def __init__(self, data_source, has_label, num_classes, class_names, description):
    self._ds = data_source
    self._has_label = has_label
    self.num_classes, self.class_names, self.description = num_classes, class_names, description

  @property
  def num_examples(self):
    return len(self._ds)

  def read(self, indices):
    examples = self._ds.__getitems__([int(i) for i in indices])
    images = [_decode_image(e["image"]) for e in examples]
    labels = (np.asarray([e["label"] for e in examples], np.int32)
              if self._has_label else None)
    return images, labels


def _read_all(read, n, chunk=1024):
  images, labels = [], []
  for start in range(0, n, chunk):
    ims, lab = read(np.arange(start, min(n, start + chunk)))
    images.extend(ims)
    labels.append(lab)
  labels = None if labels and labels[0] is None else np.concatenate(labels).astype(np.int32)
  return source_lib.stack_if_same_shape(images), labels


def _read_tfrecord(builder, split, has_label):
  tf = hide_accelerators_from_tensorflow()
  del tf
  ds = builder.as_dataset(split=split, shuffle_files=False)
  images, labels = [], []
  for ex in tfds.as_numpy(ds):
    images.append(ex["image"])
    labels.append(ex["label"] if has_label else 0)
  return (source_lib.stack_if_same_shape(images),
          np.asarray(labels, np.int32) if has_label else None)


def open_tfds(name, split, data_dir=None, download=True, in_memory=None):
  """A source for `split` of TFDS dataset `name`; in_memory None = when decoded size is small."""
  builder = prepared_builder(name, data_dir, download)
  _check_split(builder, split)
  shape = builder.info.features["image"].shape
  has_label, num_classes, class_names = _label_info(builder)
  description = f"tfds:{builder.name}/{split} ({builder.data_dir})"
  num_examples = builder.info.splits[split].num_examples
  fixed = all(d is not None for d in shape)
  small = fixed and num_examples * int(np.prod(shape)) <= source_lib.IN_MEMORY_BYTES
  in_memory = small if in_memory is None else in_memory
  formats = {f.value for f in builder.info.available_file_formats()}
  if "array_record" not in formats:
    if not in_memory:
      raise ValueError(
          f"dataset {name!r} in {builder.data_dir} is stored as {sorted(formats)}, which has no "
          "random access, and is too large to read into memory. Prepare it as array_record: "
          f"tfds.builder({name!r}, data_dir=<new dir>, file_format='array_record')"
          ".download_and_prepare(), or `tfds build --file_format=array_record`.")
    images, labels = _read_tfrecord(builder, split, has_label)
    return source_lib.InMemorySource(images, labels, num_classes, class_names, description)
  encoded = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  reader = TfdsSource(encoded, has_label, num_classes,
                      class_names, description)
  if not in_memory:
    return reader
  images, labels = _read_all(reader.read, reader.num_examples)
  return source_lib.InMemorySource(images, labels, num_classes, class_names, description)

