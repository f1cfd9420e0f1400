"""Preemption: a SIGTERM asks the loop to save the current step and exit non-zero.

Single process: `PreemptionWatcher` installs a SIGTERM handler that only sets a flag; the loop
polls `should_stop(step)` between steps (never inside a save), saves, and raises `Preempted`.
Multi-process (after `jax.distributed.initialize`): JAX's preemption service receives the
signal and agrees on a common step across hosts, so the watcher leaves SIGTERM to JAX and asks
`multihost_utils.reached_preemption_sync_point(step)` (a per-process flag could stop one host
and hang the others in the next collective).
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a SIGTERM death: 143


class Preempted(SystemExit):
  """Raised after the preemption checkpoint is written; exits the process with code 143."""

  def __init__(self, step: int):
    super().__init__(PREEMPTED_EXIT_CODE)
    self.step = step

  def __str__(self):
    return f"preempted: saved step {self.step}, exiting with code {PREEMPTED_EXIT_CODE}"


class PreemptionWatcher:
  """Context manager; `should_stop(step)` is True once a SIGTERM arrived (or JAX agrees)."""

  def __init__(self, signals=(signal.SIGTERM,)):
    self.signals, self.received, self._previous = tuple(signals), False, {}

  def _handler(self, signum, frame):
    del frame
    self.received = True

  def __enter__(self):
    in_main = threading.current_thread() is threading.main_thread()
    if in_main and not jax.distributed.is_initialized():
      for s in self.signals:
        self._previous[s] = signal.signal(s, self._handler)
    return self

  def __exit__(self, *exc):
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous.clear()
    return False

  def should_stop(self, step: int) -> bool:
    if jax.distributed.is_initialized() and jax.process_count() > 1:
      try:
        return bool(multihost_utils.reached_preemption_sync_point(int(step)))
      except RuntimeError:  # the preemption service is disabled
        return self.received
    return self.received
