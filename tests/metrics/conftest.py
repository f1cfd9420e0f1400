"""Fixtures for the metric tests: the embedded MNIST test set read straight from its IDX files."""

import gzip
import pathlib

import numpy as np
import pytest

MNIST_DIR = pathlib.Path("/work/shared/data/mnist")


def read_idx(path) -> np.ndarray:
  """Reads a gzipped IDX file (uint8 data; header: 2 zero bytes, type, ndim, big-endian dims)."""
  with gzip.open(path, "rb") as f:
    raw = f.read()
  if raw[:3] != b"\x00\x00\x08":
    raise ValueError(f"{path} is not a uint8 IDX file (header {raw[:4]!r})")
  ndim = raw[3]
  dims = np.frombuffer(raw[4:4 + 4 * ndim], dtype=">u4").astype(int)
  return np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8).reshape(dims)


@pytest.fixture(scope="session")
def mnist():
  """(images uint8 [10000, 28, 28], labels int32 [10000]): the MNIST test split."""
  images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
  labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz").astype(np.int32)
  return images, labels
