"""The input pipeline: a resumable iterator of host batches {"image": uint8, "label": int32}
(and "caption": str [b] for captioned sources such as "mnist_pairs").

Batch k (the position) is a pure function of (dataset, spec, seed, global batch size, k): its
examples come from `sharding` (a (seed, epoch) permutation per epoch, this process's slice of the
global batch) and its random crops / flips from `hashing` keyed by (seed, epoch, example index).
So the only state is the position, an int the training checkpoint stores; `restore` (or
`start_position`) gives exactly the batches an uninterrupted run would have produced, across
epoch boundaries, with any process count. A full permutation per epoch replaces a shuffle buffer
(uniform mixing, no warm-up); epochs repeat forever unless num_epochs is given; a thread pool
prefetches the next batches. Every error about the spec, the dataset or the batch size is raised
by `create_iterator`, before training starts.
"""

import collections
import concurrent.futures
import threading

import numpy as np

from ldm_jax.data import folder
from ldm_jax.data import mnist_pairs
from ldm_jax.data import preprocess
from ldm_jax.data import sharding
from ldm_jax.data import tfds_source

SOURCES = ("tfds", "folder")
# Keys of a dataset spec and their defaults (a dict or an ml_collections.ConfigDict).
SPEC_DEFAULTS = {
    "source": "tfds",  # "tfds" (any TFDS name, including "mnist_embedded") or "folder"
    "name": "mnist_embedded",  # TFDS name, e.g. "cifar10", "celeb_a_hq/256"; unused for folders;
                               # "mnist_pairs": captioned digit pairs (mnist_pairs.py), offline
    "split": "train",  # TFDS split, slicing allowed ("train[:90%]"); folders: train|test|all;
                       # mnist_pairs: train|test|heldout
    "data_dir": None,  # TFDS data_dir (None: see tfds_source.default_data_dir) or the folder
    "image_size": 32,  # S: batches are [b, S, S, C]; or (H, W): [b, H, W, C]
    "channels": None,  # 1 or 3; None keeps the dataset's (1 if grayscale, else 3)
    "crop": "center",  # "center" | "random" | "none": square crop of side min(H, W)
    "resize": "auto",  # "auto" | "pad" | "resize": how the crop becomes S x S (preprocess.py)
    "flip": False,  # random horizontal flips
    "shuffle": True,  # a new permutation each epoch; False: dataset order (evaluation)
    "holdout_fraction": 0.0,  # folders without train/ + test/: share of files held out as "test"
    "in_memory": None,  # decode everything once; None: when decoded images take <= 1 GiB
    "download": True,  # prepare a TFDS dataset that is not prepared yet
    "caption_style": "grammar",  # mnist_pairs: "grammar" (its phrasings) | "digits" ("3 7")
}


def resolve_spec(spec):
  """A plain dict with every SPEC_DEFAULTS key; ValueError for unknown keys or source."""
  spec = dict(spec.to_dict() if hasattr(spec, "to_dict") else spec)
  unknown = sorted(set(spec) - set(SPEC_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown dataset spec keys {unknown}; valid keys: {sorted(SPEC_DEFAULTS)}.")
  spec = {**SPEC_DEFAULTS, **spec}
  if spec["source"] not in SOURCES:
    raise ValueError(f"dataset source {spec['source']!r} unknown; valid: {SOURCES}.")
  if spec["source"] == "folder" and not spec["data_dir"]:
    raise ValueError("source='folder' needs data_dir=<the folder of images>.")
  if spec["caption_style"] != "grammar" and spec["name"] != mnist_pairs.NAME:
    raise ValueError(f"caption_style={spec['caption_style']!r} is for name='mnist_pairs' only; "
                     f"dataset {spec['name']!r} takes the default 'grammar'.")
  return spec


def open_source(spec):
  """The random-access source a resolved spec names (see source.py for the interface)."""
  if spec["source"] == "folder":
    return folder.open_folder(spec["data_dir"], in_memory=spec["in_memory"], split=spec["split"],
                              holdout_fraction=spec["holdout_fraction"])
  if spec["name"] == mnist_pairs.NAME:
    return mnist_pairs.MnistPairs(spec["split"], caption_style=spec["caption_style"])
  return tfds_source.open_tfds(spec["name"], spec["split"], spec["data_dir"],
                               download=spec["download"], in_memory=spec["in_memory"])


class DataIterator:
  """Iterator of this process's batches; `position` = global batches consumed so far."""

  def __init__(self, source, spec, *, global_batch_size, seed, process_index, process_count,
               start_position, num_epochs, drop_remainder, prefetch, transform=None):
    self.source, self.spec, self.seed = source, spec, int(seed)
    self.transform = transform
    self.has_captions = hasattr(source, "captions")
    self.global_batch_size = global_batch_size
    self.process_index, self.process_count = process_index, process_count
    self.num_examples = source.num_examples
    self.num_classes, self.class_names = source.num_classes, source.class_names
    self.drop_remainder = drop_remainder
    self.steps_per_epoch = sharding.steps_per_epoch(
        self.num_examples, global_batch_size, drop_remainder)
    if self.steps_per_epoch == 0:
      raise ValueError(f"global batch size {global_batch_size} exceeds the {self.num_examples} "
                       f"examples of {source.description}.")
    self.num_batches = None if num_epochs is None else num_epochs * self.steps_per_epoch
    self.local_batch_size = global_batch_size // process_count
    self.image_shape = (*preprocess.image_hw(spec["image_size"]), spec["channels"])
    self._orders = collections.OrderedDict()  # epoch -> order, last 2 epochs
    self._lock = threading.Lock()
    self._prefetch = max(0, int(prefetch))
    self._pool = (concurrent.futures.ThreadPoolExecutor(max(1, self._prefetch))
                  if self._prefetch else None)
    self._pending = collections.deque()  # (position, future)
    self._position = 0
    self.restore({"position": start_position})

  @property
  def position(self):
    return self._position

  def state(self):
    """What a checkpoint stores to resume exactly: {"position": int}."""
    return {"position": self._position}

  def restore(self, state):
    """Continues from state["position"] (global batches already consumed)."""
    position = int(np.asarray(state["position"]))
    if position < 0:
      raise ValueError(f"data position must be >= 0, got {position}.")
    for _, future in self._pending:
      future.cancel()
    self._pending.clear()
    self._position = position

  # The names `ldm_jax.train.loop.fit` uses (its ResumableIterator protocol).
  def get_state(self):
    return self.state()

  def set_state(self, state):
    self.restore(state)

  def _order(self, epoch):
    with self._lock:
      if epoch not in self._orders:
        self._orders[epoch] = sharding.epoch_order(
            self.seed, epoch, self.num_examples, self.spec["shuffle"])
        while len(self._orders) > 2:
          self._orders.popitem(last=False)
      return self._orders[epoch]

  def indices_at(self, position):
    """Dataset indices int64 [b] of this process's part of global batch `position`."""
    epoch, j = divmod(position, self.steps_per_epoch)
    start = j * self.global_batch_size
    lo, hi = sharding.local_slice(self.global_batch_size, self.process_index, self.process_count)
    stop = min(start + hi, self.num_examples)
    return self._order(epoch)[start + lo:stop]

  def batch_at(self, position):
    """This process's batch at `position`: {"image": uint8 [b, H, W, C], "label": int32 [b]}
    (label when the source has labels; "caption": object array of str [b] when it has captions),
    passed through `transform` when one was given."""
    epoch = position // self.steps_per_epoch
    indices = self.indices_at(position)
    images, labels = self.source.read(indices)
    s = self.spec
    batch = {"image": preprocess.preprocess_batch(
        images, image_size=s["image_size"], channels=s["channels"], crop=s["crop"],
        resize=s["resize"], flip=s["flip"], seed=self.seed, epoch=epoch, indices=indices)}
    if labels is not None:
      batch["label"] = np.asarray(labels, np.int32)
    if self.has_captions:
      batch["caption"] = np.asarray(self.source.captions(indices), dtype=object)
    return batch if self.transform is None else self.transform(batch)

  def __iter__(self):
    return self

  def __next__(self):
    if self.num_batches is not None and self._position >= self.num_batches:
      raise StopIteration
    if self._pool is None:
      batch = self.batch_at(self._position)
    else:
      end = self._position + self._prefetch + 1
      if self.num_batches is not None:
        end = min(end, self.num_batches)
      nxt = self._pending[-1][0] + 1 if self._pending else self._position
      for p in range(nxt, end):
        self._pending.append((p, self._pool.submit(self.batch_at, p)))
      position, future = self._pending.popleft()
      assert position == self._position, (position, self._position)
      batch = future.result()
    self._position += 1
    return batch

  def close(self):
    """Stops the prefetch threads."""
    self.restore({"position": self._position})
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def create_iterator(spec, *, global_batch_size, seed, process_index=None, process_count=None,
                    num_devices=None, start_position=0, num_epochs=None, drop_remainder=True,
                    prefetch=2, transform=None):
  """Opens the dataset `spec` names and returns this process's DataIterator.

  Args:
    spec: dict or ConfigDict with keys of SPEC_DEFAULTS (missing keys take the defaults).
    global_batch_size: G, examples per step over all processes; each process gets G / P.
    seed: int; the order and the augmentations are functions of (seed, epoch, index).
    process_index, process_count: this process p and the count P (default: jax's).
    num_devices: devices G must divide over (default: jax.device_count()).
    start_position: global batches already consumed (from a checkpoint's `state()`).
    num_epochs: None repeats forever; an int stops after that many epochs.
    drop_remainder: False yields the last, smaller batch of an epoch (one process only).
    prefetch: batches prepared ahead in background threads (0: none).
    transform: batch dict -> batch dict, applied to every batch in the prefetch threads (e.g.
      captions -> token ids, so that only arrays reach the train step).

  Raises:
    ValueError: bad spec, unknown dataset or split, no image feature, unreadable image, or a
      batch size that does not divide over the devices and processes.
  """
  spec = resolve_spec(spec)
  kwargs = dict(global_batch_size=global_batch_size, seed=seed, process_index=process_index,
                process_count=process_count, num_devices=num_devices,
                start_position=start_position, num_epochs=num_epochs,
                drop_remainder=drop_remainder, prefetch=prefetch)
  _check_iteration(spec, **kwargs)  # cheap checks first, before a dataset is opened
  return iterator_for_source(open_source(spec), spec, transform=transform, **kwargs)


def _check_iteration(spec, *, global_batch_size, process_index, process_count, num_devices,
                     num_epochs, drop_remainder, **_):
  if process_index is None or process_count is None or num_devices is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    num_devices = jax.device_count() if num_devices is None else num_devices
  sharding.check_process(process_index, process_count)
  sharding.check_batch_size(global_batch_size, num_devices, process_count)
  if not drop_remainder and process_count > 1:
    raise ValueError("drop_remainder=False gives a ragged last batch; it needs process_count=1.")
  if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs <= 0):
    raise ValueError(f"num_epochs must be None or a positive int, got {num_epochs!r}.")
  preprocess.check_options(spec["image_size"], spec["crop"], spec["resize"],
                           3 if spec["channels"] is None else spec["channels"])
  return process_index, process_count


def iterator_for_source(source, spec, *, global_batch_size, seed, process_index=None,
                        process_count=None, num_devices=None, start_position=0,
                        num_epochs=None, drop_remainder=True, prefetch=2, transform=None):
  """create_iterator on an already opened source (`open_source(resolve_spec(spec))`).

  Opening decodes an in-memory dataset once; several iterators (e.g. one per simulated
  process in a test, or a re-created one after an evaluation) can share the source.
  """
  kwargs = dict(global_batch_size=global_batch_size, seed=seed, num_devices=num_devices,
                start_position=start_position, num_epochs=num_epochs,
                drop_remainder=drop_remainder, prefetch=prefetch)
  process_index, process_count = _check_iteration(
      spec, process_index=process_index, process_count=process_count, **kwargs)
  del kwargs["num_devices"]
  spec = dict(spec)
  if spec["channels"] is None:
    first = np.asarray(source.read(np.zeros(1, np.int64))[0][0])
    spec["channels"] = 1 if first.ndim == 2 or first.shape[-1] == 1 else 3
  it = DataIterator(source, spec, process_index=process_index, process_count=process_count,
                    transform=transform, **kwargs)
  it.batch_at(0)  # decode and preprocess once now: bad images or options fail here
  return it
