"""TensorBoard event files through tensorboardX (its `Event`/`Summary` protos and TFRecord writer).

No TensorFlow import. Scalars use `Summary.Value.simple_value` and images `Summary.Value.image`
(PNG), the fields TensorBoard has always read; tensorboardX's `RecordWriter` frames each `Event`
as a TFRecord (length, masked CRC-32C, data, masked CRC-32C).
"""

import io
import os
import socket
import time

import numpy as np
from tensorboardX import RecordWriter
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import Summary


def _png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  buf = io.BytesIO()
  Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, "PNG")
  return buf.getvalue()


class EventFileWriter:
  """scalar(tag, value, step); image(tag, uint8 [H, W, C], step); flush(); close()."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._records = RecordWriter(self.path)
    self._write(Event(wall_time=time.time(), step=0, file_version="brain.Event:2"))

  def _write(self, event: Event) -> None:
    self._records.write(event.SerializeToString())

  def _summary(self, step: int, value: Summary.Value) -> None:
    self._write(Event(wall_time=time.time(), step=int(step), summary=Summary(value=[value])))

  def scalar(self, tag: str, value: float, step: int) -> None:
    self._summary(step, Summary.Value(tag=tag, simple_value=float(value)))

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    """image: uint8 [H, W, C], C in (1, 3, 4) (grey, RGB, RGBA), stored as PNG."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
      raise ValueError(f"image {tag!r}: got {image.dtype} {image.shape}; expected uint8 "
                       "[H, W, C] with C in (1, 3, 4)")
    h, w, c = image.shape
    img = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=_png(image))
    self._summary(step, Summary.Value(tag=tag, image=img))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    self._records.close()
