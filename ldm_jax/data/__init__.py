"""Input data for ldm_jax: one entry point yielding resumable, per-host batches of host numpy.

  it = ldm_jax.data.create_iterator(
      {"name": "mnist_embedded", "split": "train", "image_size": 32},
      global_batch_size=128, seed=0)
  batch = next(it)        # {"image": uint8 [128 / P, 32, 32, 1], "label": int32 [128 / P]}
  x = to_float(batch["image"])   # inside the jitted step: float32 in [-1, 1]
  ckpt["data"] = it.state()      # {"position": int}; later: create_iterator(...,
                                 #   start_position=ckpt["data"]["position"]) or it.restore(...)

Importing this package registers the embedded TFDS builder "mnist_embedded" (see
mnist_builder.py), so `tfds.builder("mnist_embedded", data_dir=...)` works offline.
"""

from ldm_jax.data import mnist_builder  # registers "mnist_embedded" with TFDS
from ldm_jax.data.pipeline import create_iterator
from ldm_jax.data.pipeline import DataIterator
from ldm_jax.data.pipeline import SPEC_DEFAULTS
from ldm_jax.data.preprocess import to_float
from ldm_jax.data.sharding import check_batch_size
from ldm_jax.data.tfds_source import default_data_dir

__all__ = [
    "create_iterator", "DataIterator", "SPEC_DEFAULTS", "to_float", "check_batch_size",
    "default_data_dir", "mnist_builder",
]
