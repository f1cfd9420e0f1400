"""TensorBoard event files written through tensorboardX (no TensorFlow) are read back by TensorFlow."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ldm_jax.train import event_writer, metrics

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_writer_imports_no_tensorflow():
  code = ("import sys; import ldm_jax.train.event_writer; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=_ROOT)


def test_tensorflow_reads_scalars_and_images(tmp_path):
  w = metrics.MetricWriter(str(tmp_path), tensorboard=True)
  w.write_scalars(3, {"loss": 0.25, "grad_norm": 1.5})
  w.write_scalars(70000, {"loss": -2.0})
  grid = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 1), dtype=np.uint8)
  w.write_images(9, {"samples": grid})
  w.close()
  tf = pytest.importorskip("tensorflow")
  events = list(tf.compat.v1.train.summary_iterator(w._tb.path))  # checks the CRCs too
  assert events[0].file_version == "brain.Event:2"
  scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value
             if v.HasField("simple_value")]
  assert scalars == [(3, "loss", 0.25), (3, "grad_norm", 1.5), (70000, "loss", -2.0)]
  images = [(e.step, v.tag, v.image) for e in events for v in e.summary.value
            if v.HasField("image")]
  assert [(s, t) for s, t, _ in images] == [(9, "samples/0"), (9, "samples/1")]
  for i, (_, _, im) in enumerate(images):
    assert (im.height, im.width, im.colorspace) == (5, 7, 1)
    decoded = np.asarray(Image.open(io.BytesIO(im.encoded_image_string)))
    np.testing.assert_array_equal(decoded, grid[i, ..., 0])
  assert [r["step"] for r in metrics.read_jsonl(str(tmp_path))] == [3, 70000, 9]


def test_bad_image_shape_raises(tmp_path):
  w = event_writer.EventFileWriter(str(tmp_path))
  with pytest.raises(ValueError, match=r"expected uint8 \[H, W, C\]"):
    w.image("x", np.zeros((4, 4), np.uint8), 0)
  w.close()
