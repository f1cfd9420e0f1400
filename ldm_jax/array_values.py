"""Checks of array *contents* at the public edges (finite, in range), on concrete host values only.

Shapes and dtypes are checked by each edge itself; this module checks the values, which are known
only for concrete arrays: under `jax.jit` an argument is a tracer and the check is skipped (the
caller of the jitted function is then responsible for the values).

  check_values(images, "images", lo=-1.25, hi=1.25, expected="float in [-1, 1]")
  -> ValueError("images: 3 values are NaN, 2 lie outside [-1.25, 1.25] (min -7, max 3.5);
                 expected float in [-1, 1].")
"""

import jax
import numpy as np


def host_values(x):
  """x as a numpy array, or None when x is a tracer (values unknown at trace time) or a global
  array whose shards live partly on other hosts."""
  if isinstance(x, jax.core.Tracer) or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return None
  return np.asarray(x)


def _plural(n, one, many):
  return f"{n} {'value' if n == 1 else 'values'} {one if n == 1 else many}"


def problems(x, lo=None, hi=None, *, lo_open=False, hi_open=False) -> list[str]:
  """Descriptions of the non-finite and out-of-range entries of a host array (empty: all good)."""
  x = np.asarray(x)
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    return []
  x = x.astype(np.float64)
  out = []
  for what, bad in (("NaN", np.isnan(x)), ("+inf", np.isposinf(x)), ("-inf", np.isneginf(x))):
    if bad.any():
      out.append(_plural(int(bad.sum()), f"is {what}", f"are {what}"))
  finite = x[np.isfinite(x)]
  below = (finite <= lo if lo_open else finite < lo) if lo is not None else np.zeros(finite.shape, bool)
  above = (finite >= hi if hi_open else finite > hi) if hi is not None else np.zeros(finite.shape, bool)
  outside = finite[below | above]
  if outside.size:
    interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    out.append(f"{_plural(outside.size, 'lies', 'lie')} outside {interval} "
               f"(min {outside.min():.6g}, max {outside.max():.6g})")
  return out


def check_values(x, name: str, *, expected: str, lo=None, hi=None, lo_open=False,
                 hi_open=False) -> None:
  """Raises ValueError naming `name`, the bad values and `expected` unless every entry of x is
  finite and within [lo, hi] (open ends with lo_open / hi_open; None: unbounded). Tracers pass."""
  values = host_values(x)
  if values is None:
    return
  found = problems(values, lo, hi, lo_open=lo_open, hi_open=hi_open)
  if found:
    raise ValueError(f"{name}: {', '.join(found)}; expected {expected}.")
