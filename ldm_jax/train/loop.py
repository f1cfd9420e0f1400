"""The generic training loop `fit`: data -> step -> metrics, checkpoints, resume, preemption.

Data protocol (the data pipeline implements it; a plain iterator also works, see below):

  class ResumableIterator(Protocol):
    def __next__(self) -> dict[str, np.ndarray]   # this process's host batch [b, ...]
    def get_state(self) -> JSON-serialisable       # position after the batches yielded so far
    def set_state(self, state) -> None             # continue exactly after that position

`fit` calls `next(data)` exactly once per step and `data.get_state()` right after step s when it
saves step s, so get_state() must describe what has been *yielded* (a prefetching iterator
counts batches handed out, not batches read ahead). On resume `fit` calls set_state() with the
saved value; an iterator without set_state is instead advanced by `next()` step times (it must
then be a fresh iterator that replays the same order). In a multi-process run every process
feeds its own part of the global batch and saves/restores its own data state only through
process 0's JSON, so the state must be the same on all processes (e.g. a global position).
"""

import time
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np

from ldm_jax import xla_cpu
from ldm_jax.train import guard
from ldm_jax.train import preemption
from ldm_jax.train.parallel import DataParallel
from ldm_jax.train.state import count_params


class ResumableIterator(Protocol):
  def __next__(self) -> dict: ...
  def get_state(self) -> Any: ...
  def set_state(self, state: Any) -> None: ...


class FitResult(NamedTuple):
  state: Any            # final state in the layout of `dp`
  step: int             # steps done (== num_steps unless stopped)
  metrics: dict         # host metrics of the last step
  restored_from: int | None  # the checkpoint step the run resumed from, if any
  metadata: dict        # metadata restored from the checkpoint (empty when starting fresh)


def _data_state(data, step):
  return data.get_state() if hasattr(data, "get_state") else {"position": step}


def _resume(dp, state, data, checkpoints):
  g = dp.to_global(state)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), g)
  del g
  restored = checkpoints.restore(target)
  if restored is None:
    return state, None, {}
  if hasattr(data, "set_state"):
    data.set_state(restored.data_state)
  else:
    for _ in range(restored.step):
      next(data)
  return dp.from_global(restored.state), restored.step, restored.metadata


def summary(dp: DataParallel, state) -> str:
  """Parameter count, devices and layout, printed at the start of `fit`."""
  g = dp.to_global(state)
  devices = jax.devices()
  line = (f"params: {count_params(g.params):,} | mode: {dp.mode} | mesh: "
          f"{dict(dp.mesh.shape)} | devices: {len(devices)} x {devices[0].device_kind} "
          f"({devices[0].platform}) on {jax.process_count()} process(es)")
  if devices[0].platform == "cpu":
    line += f" | convolutions: {xla_cpu.name(dp.compiler_options)}"
  return line


def fit(dp: DataParallel, state, data, *, num_steps: int, checkpoints=None,
        save_every: int = 0, metadata: dict | None = None, config: Any = None,
        writer=None, log_every: int = 10, max_consecutive_bad: int = 10,
        progress: bool = True, resume: bool = True, images_fn=None,
        images_every: int = 0) -> FitResult:
  """Runs `dp.step` until `num_steps`, resuming from and saving to `checkpoints`.

  Args:
    dp: the parallel mode (`ldm_jax.train.parallel.data_parallel`).
    state: the initial state in dp's layout (ignored where a checkpoint is restored).
    data: host batches, ideally a `ResumableIterator` (module docstring).
    num_steps: total steps of the run (a resumed run continues up to it).
    checkpoints: `ldm_jax.train.checkpoint.Checkpoints` or None.
    save_every: async save every this many steps (0: only at the end / on preemption).
    metadata, config: JSON-able extras saved with every checkpoint (e.g. latent_scale_factor).
    writer: `ldm_jax.train.metrics.MetricWriter` or None.
    log_every: write metrics every this many steps (the last step is always written).
    max_consecutive_bad: raise `guard.NonFiniteError` after this many skipped steps in a row.
    images_fn: optional `images_fn(step, global_state) -> {name: uint8 image}` (e.g. sample grids,
      `ldm_jax.stages.previews`), written to `writer` every `images_every` steps and at the last
      step (0: never). Every process calls it (it may run collective programs).
  Raises:
    preemption.Preempted (a SystemExit, code 143) after saving on SIGTERM.
    guard.NonFiniteError on too many consecutive non-finite steps.
  """
  restored_from, restored_meta = None, {}
  if checkpoints is not None and resume:
    state, restored_from, restored_meta = _resume(dp, state, data, checkpoints)
  step = int(np.asarray(dp.fetch_metrics({"s": state.step})["s"]))
  if jax.process_index() == 0:
    print(summary(dp, state) + f" | start step {step} of {num_steps}", flush=True)

  def save(at):
    if checkpoints is not None:
      checkpoints.save(at, dp.to_global(state), data_state=_data_state(data, at),
                       metadata=metadata, config=config)

  bar = None
  if progress and jax.process_index() == 0:
    import tqdm  # pylint: disable=import-outside-toplevel
    bar = tqdm.tqdm(total=num_steps, initial=step, unit="step", dynamic_ncols=True)
  metrics, t_last, s_last = {}, time.perf_counter(), step
  try:
    with preemption.PreemptionWatcher() as watcher:
      while step < num_steps:
        if watcher.should_stop(step):
          save(step)
          raise preemption.Preempted(step)
        state, device_metrics = dp.step(state, dp.put_batch(next(data)), at=step)
        step += 1
        metrics = dp.fetch_metrics(device_metrics)
        if bar is not None:
          bar.update(1)
          bar.set_postfix(loss=f"{metrics['loss']:.4g}", refresh=False)
        if writer is not None and (step % log_every == 0 or step == num_steps):
          now = time.perf_counter()
          metrics["steps_per_sec"] = (step - s_last) / max(now - t_last, 1e-9)
          t_last, s_last = now, step
          writer.write_scalars(step, metrics)
        guard.check_bad_steps(int(metrics["consecutive_bad"]), max_consecutive_bad, step)
        if images_fn is not None and images_every and (step % images_every == 0 or step == num_steps):
          images = images_fn(step, dp.to_global(state))
          if writer is not None:
            writer.write_images(step, images)
        if save_every and step % save_every == 0:
          save(step)
      save(step)
  finally:
    if bar is not None:
      bar.close()
    if writer is not None:
      writer.flush()
    if checkpoints is not None:
      checkpoints.wait_until_finished()
  return FitResult(state, step, metrics, restored_from, restored_meta)
