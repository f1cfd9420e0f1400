"""Input-pipeline throughput (images/s) of ldm_jax.data on this machine, for comparison with the
images/s a training step consumes.

  python -m experiments.benchmarks.data_throughput [--data_dir=/tmp/ldm_bench]

Builds the embedded MNIST (TFDS, array_record) into data_dir if needed and prints one row per
(configuration, global batch size): the embedded MNIST read into memory (the default for small
datasets) with and without random flips, the same split decoded from array_record on every batch
(the path of datasets too large for memory), and a folder of 64x64 RGB PNGs resized to 32.
"""

import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

from ldm_jax import data


def images_per_second(it, seconds):
  """Consumes batches from `it` for about `seconds` (after one warm-up batch); images/s."""
  next(it)
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    n += len(next(it)["image"])
  return n / (time.perf_counter() - start)


def write_folder(root, count=512, size=64):
  rng = np.random.default_rng(0)
  for i in range(count):
    path = os.path.join(root, f"class{i % 4}", f"{i}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "ldm_bench"))
  parser.add_argument("--seconds", type=float, default=3.0)
  args = parser.parse_args()
  folder = os.path.join(args.data_dir, "png_folder")
  if not os.path.isdir(folder):
    write_folder(folder)
  mnist = {"name": "mnist_embedded", "data_dir": args.data_dir, "image_size": 32}
  configs = [
      ("mnist_embedded, in memory, pad 28->32", mnist),
      ("mnist_embedded, in memory, pad + flip", {**mnist, "flip": True}),
      ("mnist_embedded, decode PNG per batch", {**mnist, "in_memory": False}),
      ("folder 64x64 RGB PNG -> 32, in memory", {"source": "folder", "data_dir": folder,
                                                  "resize": "resize"}),
      ("folder 64x64 RGB PNG -> 32, per batch", {"source": "folder", "data_dir": folder,
                                                  "resize": "resize", "in_memory": False}),
  ]
  print(f"{'pipeline':42s} {'batch':>6s} {'images/s':>10s}")
  for name, spec in configs:
    for batch in (64, 256):
      it = data.create_iterator(spec, global_batch_size=batch, seed=0, process_index=0,
                                process_count=1, num_devices=1)
      rate = images_per_second(it, args.seconds)
      it.close()
      print(f"{name:42s} {batch:6d} {rate:10.0f}", flush=True)


if __name__ == "__main__":
  main()
