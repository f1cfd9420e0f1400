"""Several seeds per ablation cell: the mean and spread of each metric, and verdicts only beyond it.

A cell (one variant, one metric) is measured once per seed. `summarize(values)` gives its mean,
sample standard deviation (ddof 1; None for a single seed) and count; `cell(summary)` the table
text "0.953 ± 0.004". `compare(a, b)` says whether two cells differ beyond their spread:

  resolved  iff  |mean_a - mean_b| > sd_a + sd_b   (the mean ± sd intervals do not overlap)

and never from a single seed (no spread is known). A verdict calls a paper's claim "agrees" or
"disagrees" only on resolved differences, else "not resolved at this scale" (`verdict`).
"""

import math

import numpy as np

NOT_RESOLVED = "not resolved at this scale"


def parse_seeds(spec: str, default: int) -> tuple:
  """The seeds of a --seeds flag value ("0,1,2": distinct ints >= 0), or (default,) when empty."""
  if not spec:
    return (int(default),)
  try:
    seeds = tuple(int(s) for s in spec.split(","))
  except ValueError:
    raise ValueError(f"--seeds={spec!r} is not a comma-separated list of integers "
                     "(e.g. --seeds=0,1,2).") from None
  if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
    raise ValueError(f"--seeds={spec!r}: the seeds must be distinct integers >= 0.")
  return seeds


def summarize(values) -> dict:
  """{"mean", "sd" (None for one value), "n", "values"} of one cell's per-seed values."""
  v = np.asarray(list(values), np.float64)
  if v.size == 0:
    raise ValueError("summarize needs at least one value.")
  sd = float(v.std(ddof=1)) if v.size > 1 else None
  return {"mean": float(v.mean()), "sd": sd, "n": int(v.size), "values": v.tolist()}


def _numeric(x) -> bool:
  return isinstance(x, (int, float, np.floating)) and not isinstance(x, bool)


def summarize_scores(per_seed: list) -> dict:
  """Per-seed score dicts (same keys) -> {key: summarize(...)} over the keys numeric in every
  seed (a value missing or None in any seed, e.g. an unrecorded time, leaves its key out)."""
  keys = [k for k in per_seed[0] if all(_numeric(s.get(k)) for s in per_seed)]
  return {k: summarize(s[k] for s in per_seed) for k in keys}


def cell(summary: dict | None, digits: int = 3) -> str:
  """"mean ± sd" (the mean alone for one seed; "n/a" for no summary)."""
  if summary is None:
    return "n/a"
  if summary["sd"] is None:
    return f"{summary['mean']:.{digits}f}"
  return f"{summary['mean']:.{digits}f} ± {summary['sd']:.{digits}f}"


def compare(a: dict, b: dict) -> int:
  """+1 if cell a is above cell b beyond their spread, -1 if below, 0 if not resolved (module
  docstring)."""
  if a["sd"] is None or b["sd"] is None:
    return 0
  diff = a["mean"] - b["mean"]
  if abs(diff) > a["sd"] + b["sd"] and not math.isclose(abs(diff), a["sd"] + b["sd"]):
    return 1 if diff > 0 else -1
  return 0


def verdict(direction: int, expected: int) -> str:
  """"agrees" if a resolved `direction` (compare's) is the `expected` sign, "DISAGREES" if it is
  the opposite, else NOT_RESOLVED."""
  if direction == 0:
    return NOT_RESOLVED
  return "agrees" if direction == expected else "DISAGREES"
