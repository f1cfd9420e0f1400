"""Metric logging: JSON lines, and TensorBoard event files (`event_writer`, no TensorFlow).

Only process 0 writes. `metrics.jsonl` holds one {"step": s, name: value, ...} object per call,
so runs can be compared without TensorBoard (the tests read it).
"""

import json
import os

import jax
import numpy as np

from ldm_jax.train.event_writer import EventFileWriter


class MetricWriter:
  """write_scalars(step, {name: float}); write_images(step, {name: uint8 image(s)}); close()."""

  def __init__(self, logdir: str, *, tensorboard: bool = True):
    self.logdir, self.active = logdir, jax.process_index() == 0
    self._tb = None
    if not self.active:
      return
    os.makedirs(logdir, exist_ok=True)
    self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a", buffering=1,
                       encoding="utf-8")  # line-buffered: readable while running
    if tensorboard:
      self._tb = EventFileWriter(logdir)

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.scalar(k, float(v), int(step))

  def write_images(self, step: int, images: dict) -> None:
    """images: {name: uint8 [H, W, C] or [N, H, W, C]} (TensorBoard; JSONL records shapes)."""
    if not self.active:
      return
    shapes = {f"{k}_shape": list(np.shape(v)) for k, v in images.items()}
    self._jsonl.write(json.dumps({"step": int(step), **shapes}) + "\n")
    if self._tb is not None:
      for k, v in images.items():
        v = np.asarray(v)
        if v.ndim == 3:
          self._tb.image(k, v, int(step))
        else:
          for i, im in enumerate(v):
            self._tb.image(f"{k}/{i}", im, int(step))

  def flush(self) -> None:
    if self.active:
      self._jsonl.flush()
      if self._tb is not None:
        self._tb.flush()

  def close(self) -> None:
    if self.active:
      self.flush()
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def read_jsonl(logdir: str) -> list[dict]:
  """All rows of `<logdir>/metrics.jsonl` in order."""
  with open(os.path.join(logdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
