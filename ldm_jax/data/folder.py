"""A folder of images as a source: recursive *.png / *.jpg / *.jpeg, labels from subfolders.

Files are found recursively (extensions case-insensitive) and ordered by relative path. If every
image lies inside a subfolder of the root, its label is the index of its top-level subfolder in
the sorted list of subfolder names (class_names); otherwise the folder has no labels.

Splits ("train", "test" or "all"): a root holding both `train/` and `test/` subfolders is split by
them (labels from the subfolders of each, class_names shared); any other root is split by file,
deterministically: within each class, the ceil(holdout_fraction x n) files (at most n - 1) whose
SHA-1 of the relative path is smallest are "test", the rest "train". A file's split depends only on
its own path and its class's size, never on the seed; holdout_fraction 0 holds nothing out.

Validation happens when the source is opened, before any training: every file's header is read
with PIL. Then, if the decoded images fit in `source.IN_MEMORY_BYTES`, all are decoded into
memory at once, so any corrupt file is reported at creation; a larger folder is checked with PIL's
`verify()` (structure and PNG checksums) and decoded per batch, and a file that still fails to
decode raises a ValueError naming it.
"""

import hashlib
import math
import pathlib

import numpy as np
from PIL import Image

from ldm_jax.data import source as source_lib

EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test", "all")


def find_images(root):
  """Sorted image paths under root, and their top-level subfolder names (None at the root)."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise ValueError(f"image folder {str(root)!r} does not exist or is not a directory.")
  paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
  if not paths:
    raise ValueError(f"image folder {str(root)!r} contains no {'/'.join(EXTENSIONS)} files.")
  groups = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else None
            for p in paths]
  return paths, groups


def decode(path):
  """The image at path as uint8 [H, W, C]: C = 1 (grayscale), 3 (RGB) or 4 (RGBA)."""
  try:
    with Image.open(path) as im:
      im.load()
      if im.mode not in ("L", "RGB", "RGBA"):
        has_alpha = "A" in im.getbands() or "transparency" in im.info
        im = im.convert("L" if im.mode == "1" else "RGBA" if has_alpha else "RGB")
      array = np.asarray(im, dtype=np.uint8)
  except Exception as err:  # PIL raises several types (OSError, SyntaxError, ...)
    raise ValueError(f"cannot decode image file {str(path)!r}: {err}") from err
  return array[..., None] if array.ndim == 2 else array


def _header(path):
  """(width, height, bands) from the file header; ValueError naming a file PIL cannot open."""
  try:
    with Image.open(path) as im:
      return im.size[0], im.size[1], len(im.getbands())
  except Exception as err:
    raise ValueError(f"cannot read image file {str(path)!r}: {err}") from err


def _verify(path):
  try:
    with Image.open(path) as im:
      im.verify()
  except Exception as err:
    raise ValueError(f"corrupt image file {str(path)!r}: {err}") from err


class FolderSource:
  """Decodes images from their files on every read (for folders too large for memory)."""

  def __init__(self, paths, labels, class_names, description):
    self._paths, self._labels = paths, labels
    self.class_names = class_names
    self.num_classes = None if class_names is None else len(class_names)
    self.description = description

  @property
  def num_examples(self):
    return len(self._paths)

  def read(self, indices):
    images = [decode(self._paths[i]) for i in indices]
    labels = None if self._labels is None else self._labels[np.asarray(indices, np.int64)]
    return images, labels


def _groups_to_labels(groups, class_names=None):
  """(labels int32 [n], class_names) when every image has a group, else (None, None)."""
  if not all(g is not None for g in groups):
    return None, None
  class_names = tuple(sorted(set(groups))) if class_names is None else class_names
  return np.asarray([class_names.index(g) for g in groups], np.int32), class_names


def _held_out(root, paths, groups, holdout_fraction):
  """Boolean [n]: the files of the "test" split of an unsplit folder (see the module docstring)."""
  test = np.zeros(len(paths), bool)
  for g in set(groups):
    members = [i for i, gi in enumerate(groups) if gi == g]
    digest = lambda i: hashlib.sha1(paths[i].relative_to(root).as_posix().encode()).hexdigest()
    k = min(len(members) - 1, math.ceil(holdout_fraction * len(members)))
    test[sorted(members, key=digest)[:k]] = True
  return test


def split_files(root, split="all", holdout_fraction=0.0):
  """(paths, labels or None, class_names or None, how) of one split of the folder at root;
  `how` says in words where the split came from (for logs and eval summaries)."""
  if split not in SPLITS:
    raise ValueError(f"folder split {split!r} unknown; valid: {SPLITS}.")
  if not 0.0 <= holdout_fraction < 1.0:
    raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction!r}.")
  root = pathlib.Path(root)
  if (root / "train").is_dir() and (root / "test").is_dir():
    found = {s: find_images(root / s) for s in ("train", "test")}
    class_names = _groups_to_labels(found["train"][1] + found["test"][1])[1]
    names = ("train", "test") if split == "all" else (split,)
    paths = [p for s in names for p in found[s][0]]
    labels, _ = _groups_to_labels([g for s in names for g in found[s][1]], class_names)
    return paths, labels, class_names, f"{split}: {' and '.join(n + '/' for n in names)} of the folder"
  paths, groups = find_images(root)
  labels, class_names = _groups_to_labels(groups)
  if split == "all":
    return paths, labels, class_names, "all: every image"
  test = _held_out(root, paths, groups, holdout_fraction)
  if split == "test" and not test.any():
    raise ValueError(f"image folder {str(root)!r} has no held-out images: give "
                     "holdout_fraction > 0 (e.g. 0.1) or put the images in train/ and test/ "
                     "subfolders.")
  keep = test if split == "test" else ~test
  how = (f"{split}: {int(keep.sum())} of {len(paths)} images, split by file hash with "
         f"holdout_fraction={holdout_fraction}")
  return ([p for p, k in zip(paths, keep) if k], None if labels is None else labels[keep],
          class_names, how)


def open_folder(root, in_memory=None, split="all", holdout_fraction=0.0):
  """A source for one split of the images under `root` (`split_files`); in_memory None = when
  the decoded size is small."""
  paths, labels, class_names, how = split_files(root, split, holdout_fraction)
  decoded_bytes = sum(w * h * c for w, h, c in map(_header, paths))
  in_memory = decoded_bytes <= source_lib.IN_MEMORY_BYTES if in_memory is None else in_memory
  description = f"folder:{root} ({len(paths)} images, split {how})"
  if in_memory:
    images = source_lib.stack_if_same_shape([decode(p) for p in paths])
    return source_lib.InMemorySource(images, labels, None if class_names is None else
                                     len(class_names), class_names, description)
  for p in paths:
    _verify(p)
  return FolderSource(paths, labels, class_names, description)
