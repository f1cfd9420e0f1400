"""A random-access source of examples: the interface the pipeline reads, and its in-memory form.

A source has `num_examples`, `num_classes` (None without labels), `class_names` (or None),
`description` (str), and `read(indices) -> (images, labels)`: images a list (or uint8 array
[n, H, W, C]) of uint8 [H, W, C] arrays and labels int32 [n] or None, for int64 dataset indices
[n]. Random access by index is what lets the pipeline define any batch from its position alone.
"""

import dataclasses

import numpy as np

# Datasets whose decoded images take at most this many bytes are read into memory once.
IN_MEMORY_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class InMemorySource:
  """All examples decoded in host memory; images uint8 [N, H, W, C] or a list of [H, W, C]."""

  images: object
  labels: np.ndarray | None
  num_classes: int | None
  class_names: tuple | None
  description: str

  @property
  def num_examples(self):
    return len(self.images)

  def read(self, indices):
    indices = np.asarray(indices, np.int64)
    if isinstance(self.images, np.ndarray):
      images = self.images[indices]
    else:
      images = [self.images[i] for i in indices]
    labels = None if self.labels is None else self.labels[indices]
    return images, labels


def stack_if_same_shape(images):
  """uint8 [N, H, W, C] when every image has one shape (fast gathers), else the list."""
  if images and all(im.shape == images[0].shape for im in images):
    return np.stack(images)
  return list(images)
