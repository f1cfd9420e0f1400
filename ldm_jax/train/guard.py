"""Non-finite guard: a step whose loss or gradient is not finite leaves the state untouched.

Inside the compiled step `all_finite` decides, `select_tree` keeps the old params / EMA /
optimizer state, and `count_bad` updates the counters; outside, `check_bad_steps` stops the run
after too many consecutive bad steps.
"""

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


class NonFiniteError(RuntimeError):
  """Raised when too many consecutive steps had a non-finite loss or gradient."""


def all_finite(*trees: PyTree) -> jax.Array:
  """bool []: every element of every leaf is finite (NaN and +-inf are not).

  Exact for any finite magnitude: x * 0 is 0 for finite x and NaN for NaN and +-inf, so the sum
  over all leaves is 0 or NaN (a sum of squares would overflow). The sqrt is for the compiler:
  XLA's fusion pass copies a chain of cheap scalar ops (one per leaf) into every consumer, here
  the per-leaf `select_tree` updates of the train step, (number of leaves)^2 ops in all; it does
  not duplicate an expensive op such as sqrt, so the flag is computed once. Measured on XLA:CPU:
  the 464-leaf text LDM step compiled in 47 s instead of 8 min (the former `jnp.all` of per-leaf
  flags); tests/train/test_train_guard.py checks the compiled size grows linearly."""
  leaves = [jnp.sum(x * 0, dtype=jnp.float32) for t in trees for x in jax.tree.leaves(t)]
  return jnp.isfinite(jnp.sqrt(sum(leaves))) if leaves else jnp.array(True)


def select_tree(ok: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  """`new` where ok, else `old`, leaf by leaf (a NaN in `new` never leaks through)."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def count_bad(ok: jax.Array, bad_steps: jax.Array, consecutive_bad: jax.Array):
  """Updated (bad_steps, consecutive_bad) counters after a step that was `ok` or not."""
  bad = jnp.logical_not(ok).astype(jnp.int32)
  return bad_steps + bad, (consecutive_bad + bad) * bad


def check_bad_steps(consecutive_bad: int, max_consecutive_bad: int, step: int) -> None:
  """Host side: raises NonFiniteError once `consecutive_bad` reaches the limit (0 = no limit)."""
  if max_consecutive_bad > 0 and consecutive_bad >= max_consecutive_bad:
    raise NonFiniteError(
        f"{consecutive_bad} consecutive steps had a non-finite loss or gradient (up to step "
        f"{step}); each was skipped, the limit is max_consecutive_bad={max_consecutive_bad}. "
        f"Lower the learning rate, check the data for NaN/inf, or raise the limit.")
