"""Checkpoints: Orbax async saves of the train state with a verified content fingerprint.

A step folder holds two Orbax items: "state" (the TrainState in its global layout, any sharding)
and "meta" (JSON: step, data-iterator state, free-form metadata such as the latent scale factor,
the config, and the fingerprint). Orbax does not checksum array data, so the fingerprint
(sha256 of dtype, shape and host bytes of every leaf) is recomputed after each restore. A step
that fails to restore (empty or partial folder, truncated file) or whose fingerprint differs is
skipped with a warning and the next older one is tried; newer bad steps are then moved aside to
`<directory>.bad/` so that the resumed run can save those step numbers again.

Restoring takes a target of ShapeDtypeStructs with shardings, so a checkpoint written on one
device count or mesh restores onto any other.
"""

import hashlib
import json
import os
import shutil
import time
import warnings
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

PyTree = Any


def host_value(x: jax.Array) -> np.ndarray:
  """The full global value of an array on this host (gathers across processes if needed)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def fingerprint(tree: PyTree) -> dict[str, str]:
  """{leaf path: sha256 hex of its dtype, shape and C-order bytes}; layout-independent."""
  out = {}
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    v = np.ascontiguousarray(host_value(x))
    h = hashlib.sha256(f"{v.dtype.str}{v.shape}".encode())
    h.update(v.tobytes())
    out[jax.tree_util.keystr(path)] = h.hexdigest()
  return out


class Restored(NamedTuple):
  step: int
  state: PyTree
  data_state: Any
  metadata: dict
  config: Any


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class Checkpoints:
  """An Orbax CheckpointManager with fingerprints and fall-back to the last good step.

  save(step, state, data_state=None, metadata=None, config=None)   async; returns at once
  restore(target) -> Restored | None         newest good step; None when there is none
  read_meta(step=None) -> dict | None        the JSON of a step (newest by default)
  wait_until_finished(); close()             always call one before the process exits
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._max_to_keep, self._async = max_to_keep, async_save
    self._open()

  def _open(self):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=self._max_to_keep, enable_async_checkpointing=self._async,
        cleanup_tmp_directories=True, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: PyTree, *, data_state: Any = None,
           metadata: dict | None = None, config: Any = None) -> bool:
    """Starts an async save of `state` (global layout) at `step`; False if it already exists."""
    step = int(step)
    if step in self.manager.all_steps():
      return False
    if hasattr(config, "to_json_best_effort"):
      config = json.loads(config.to_json_best_effort())
    meta = {"step": step, "data_state": data_state, "metadata": dict(metadata or {}),
            "config": config, "fingerprint": fingerprint(state)}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    return True

  def read_meta(self, step: int | None = None) -> dict | None:
    step = self.manager.latest_step() if step is None else step
    if step is None:
      return None
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def _try_restore(self, step: int, target: PyTree) -> Restored | str:
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - any failure to read marks the step as bad
      return f"restore failed: {type(e).__name__}: {str(e)[:300]}"
    meta = out.meta or {}
    got, want = fingerprint(out.state), meta.get("fingerprint")
    if want != got:
      bad = sorted(k for k in set(got) | set(want or {}) if (want or {}).get(k) != got.get(k))
      return f"content fingerprint mismatch in {len(bad)} leaves, e.g. {bad[:3]}"
    return Restored(step, out.state, meta.get("data_state"), meta.get("metadata", {}),
                    meta.get("config"))

  def restore(self, target: PyTree) -> Restored | None:
    """Restores the newest good step onto `target` (ShapeDtypeStructs with shardings)."""
    self.manager.wait_until_finished()
    steps = self.all_steps()
    errors, bad = [], []
    for step in reversed(steps):
      result = self._try_restore(step, target)
      if isinstance(result, Restored):
        if bad:
          self._quarantine(bad)
        return result
      warnings.warn(f"checkpoint step {step} in {self.directory} is unusable ({result}); "
                    "falling back to the previous step", RuntimeWarning, stacklevel=2)
      errors.append(f"step {step}: {result}")
      bad.append(step)
    if steps:
      raise RuntimeError(f"no usable checkpoint among steps {steps} in {self.directory} (if "
                         "all fail, the target may not match the saved state):\n"
                         + "\n".join(errors))
    return None

  def _quarantine(self, steps: list[int]) -> None:
    """Moves bad step folders to `<directory>.bad/` (kept for inspection, out of the way)."""
    if jax.process_index() == 0:
      dest = self.directory + ".bad"
      os.makedirs(dest, exist_ok=True)
      for step in steps:
        src = os.path.join(self.directory, str(step))
        if os.path.exists(src):
          shutil.move(src, os.path.join(dest, f"{step}-{time.time_ns()}"))
    _sync("ldm_jax_checkpoint_quarantine")
    self.manager.close()
    self._open()

  def wait_until_finished(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
