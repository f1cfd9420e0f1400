"""TensorBoard event files written directly (TFRecord of `Event` protos), no TensorFlow needed.

Scalars use `Summary.Value.simple_value` and images `Summary.Value.image` (PNG), the fields
TensorBoard has always read. The few protobuf fields are encoded by hand:
  Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5 }
  Summary { repeated Value value = 1 }
  Value   { string tag = 1; float simple_value = 2; Image image = 4 }
  Image   { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded = 4 }
A TFRecord is  uint64 length | masked crc32c(length) | data | masked crc32c(data)  (little end.).
"""

import io
import os
import socket
import struct
import time

import numpy as np


def _crc32c_table():
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), as TFRecord uses."""
  c = 0xFFFFFFFF
  for b in data:
    c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
  c = crc32c(data)
  return struct.pack("<I", (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1
  out = bytearray()
  while True:
    b, n = n & 0x7F, n >> 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _key(field: int, wire: int) -> bytes:
  return _varint((field << 3) | wire)


def _bytes_field(field: int, data: bytes) -> bytes:
  return _key(field, 2) + _varint(len(data)) + data


def _event(step: int, *, summary_values=(), file_version: str | None = None) -> bytes:
  msg = _key(1, 1) + struct.pack("<d", time.time()) + _key(2, 0) + _varint(int(step))
  if file_version is not None:
    msg += _bytes_field(3, file_version.encode())
  if summary_values:
    msg += _bytes_field(5, b"".join(_bytes_field(1, v) for v in summary_values))
  return msg


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
    self._f = open(self.path, "ab")
    self._record(_event(0, file_version="brain.Event:2"))

  def _record(self, data: bytes) -> None:
    header = struct.pack("<Q", len(data))
    self._f.write(header + _masked_crc(header) + data + _masked_crc(data))

  def scalar(self, tag: str, value: float, step: int) -> None:
    v = _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", float(value))
    self._record(_event(step, summary_values=[v]))

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
      raise ValueError(f"image {tag!r}: got {image.dtype} {image.shape}; expected uint8 "
                       "[H, W, C] with C in (1, 3, 4)")
    h, w, c = image.shape
    img = (_key(1, 0) + _varint(h) + _key(2, 0) + _varint(w) + _key(3, 0) + _varint(c)
           + _bytes_field(4, _png(image)))
    v = _bytes_field(1, tag.encode()) + _bytes_field(4, img)
    self._record(_event(step, summary_values=[v]))

  def flush(self) -> None:
    self._f.flush()

  def close(self) -> None:
    self._f.close()
