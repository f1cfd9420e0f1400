"""The embedded MNIST dataset as a real TFDS builder, `mnist_embedded`, buildable offline.

The package ships the 10,000-image MNIST test set (LeCun, Cortes and Burges; CC BY-SA 3.0, see
`embedded/mnist/README.md`) as gzipped IDX files. This builder splits it into two parts by a fixed
stratified rule:

  Within each digit class, take the images in their original file order and number them
  0, 1, 2, ...; image number k goes to "test" if k % 6 == 0, otherwise to "train".

So a class with n images puts ceil(n / 6) in "test" and the rest in "train": 8,328 train and
1,672 test images in total, every class in the same 5:1 proportion. `split_counts()` returns the
exact per-class numbers the rule gives. Examples keep their original index in the "index" feature.

Defining the class registers it with TFDS, so after `import ldm_jax.data`,
`tfds.builder("mnist_embedded", data_dir=...)` and `tfds.load("mnist_embedded")` work without a
network. It is written in the array_record format by default (random access for
`tfds.data_source`, which the pipeline needs for an exact, resumable order); TFDS cannot read
array_record through tf.data, so for `tfds.load` build it as tfrecord in its own data_dir:
`tfds.load("mnist_embedded", data_dir=d, builder_kwargs={"file_format": "tfrecord"})`.
"""

import gzip
import hashlib
import pathlib

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

EMBEDDED_DIR = pathlib.Path(__file__).parent / "embedded" / "mnist"
IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
TEST_EVERY = 6  # image k (within its class) is held out when k % TEST_EVERY == 0
NUM_CLASSES = 10

_CITATION = """@article{lecun1998gradient,
  title={Gradient-based learning applied to document recognition},
  author={LeCun, Yann and Bottou, L{\\'e}on and Bengio, Yoshua and Haffner, Patrick},
  journal={Proceedings of the IEEE}, volume={86}, number={11}, pages={2278--2324}, year={1998}}"""


def _check_sha256(path):
  """Compares a packaged file with its line in SHA256SUMS; a damaged copy fails loudly."""
  sums = dict(
      reversed(line.split()) for line in (EMBEDDED_DIR / "SHA256SUMS").read_text().splitlines()
      if line.strip())
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  if sums.get(path.name) != digest:
    raise ValueError(f"embedded MNIST file {path} has sha256 {digest}, expected "
                     f"{sums.get(path.name)} (from {EMBEDDED_DIR / 'SHA256SUMS'}).")


def _read_idx(path, magic, ndim):
  """Reads a gzipped IDX file (big-endian header: magic, then one uint32 per dimension)."""
  _check_sha256(path)
  raw = gzip.decompress(path.read_bytes())
  header = np.frombuffer(raw[:4 * (1 + ndim)], dtype=">u4")
  if header[0] != magic:
    raise ValueError(f"{path}: IDX magic {header[0]:#010x}, expected {magic:#010x}.")
  shape = tuple(int(d) for d in header[1:])
  return np.frombuffer(raw[4 * (1 + ndim):], dtype=np.uint8).reshape(shape)


def load_raw():
  """Returns the packaged (images uint8 [10000, 28, 28], labels uint8 [10000]) in file order."""
  images = _read_idx(EMBEDDED_DIR / IMAGES_FILE, 0x00000803, 3)
  labels = _read_idx(EMBEDDED_DIR / LABELS_FILE, 0x00000801, 1)
  if len(images) != len(labels):
    raise ValueError(f"embedded MNIST: {len(images)} images but {len(labels)} labels.")
  return images, labels


def split_indices(labels, split):
  """Indices (file order) of `split` under the stratified rule; split: "train" or "test"."""
  if split not in ("train", "test"):
    raise ValueError(f"mnist_embedded split {split!r} unknown; available: 'train', 'test'.")
  labels = np.asarray(labels)
  rank = np.empty(len(labels), np.int64)  # position of each image within its own class
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    rank[members] = np.arange(len(members))
  held_out = rank % TEST_EVERY == 0
  return np.flatnonzero(held_out if split == "test" else ~held_out)


def split_counts(split):
  """Per-class example counts int64 [10] of `split` that the stratified rule gives."""
  _, labels = load_raw()
  return np.bincount(labels[split_indices(labels, split)], minlength=NUM_CLASSES)


class MnistEmbedded(tfds.core.GeneratorBasedBuilder):
  """MNIST test set shipped with ldm_jax, split 5:1 per class into "train" and "test"."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified split: within-class index k % 6 == 0 -> test."}
  # TFDS finds a builder's source through `importlib_resources`, which this environment lacks;
  # naming the file directly is equivalent and needs no extra package.
  code_path = epath.Path(__file__)

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format, **kwargs)
    if file_format is None and not self.is_prepared():  # build as array_record by default
      self.info.set_file_format("array_record", override=True)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "The 10,000-image MNIST test set, embedded in ldm_jax, split per class into train "
            "and test: the k-th image of each class (file order) is in test iff k % 6 == 0."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1), encoding_format="png"),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "index": tfds.features.Scalar(dtype=np.int64, doc="index in t10k file order"),
        }),
        supervised_keys=("image", "label"),
        homepage="http://yann.lecun.com/exdb/mnist/",
        citation=_CITATION,
        license="CC BY-SA 3.0",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is packaged; nothing is downloaded
    images, labels = load_raw()
    return {s: self._generate_examples(images, labels, s) for s in ("train", "test")}

  def _generate_examples(self, images, labels, split):
    for i in split_indices(labels, split):  # PIL encodes the PNG: faster than TF, no TF import
      image = Image.fromarray(images[i], mode="L")
      yield int(i), {"image": image, "label": int(labels[i]), "index": int(i)}
