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
  """bool []: every element of every leaf is finite (NaN and +-inf are not)."""
  leaves = [jnp.all(jnp.isfinite(x)) for t in trees for x in jax.tree.leaves(t)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


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
