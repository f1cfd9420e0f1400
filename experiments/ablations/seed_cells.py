"""Per-seed cells of the training ablations (3, 5, 7): where a cell's run lives, its cached scores,
the budget check and the report lines that say how the cells were made.

A cell is one variant trained and scored with one seed s (the LDM's training seed and its sampling
seed); it lives in `<root>/seed<s>/<tag>` (`seed_dir`). Its scores are kept beside the run in
`scores_seed<s>_<settings>.json`, keyed by the evaluation settings and the run's trained steps
(`cached_scores`), so a rerun, or a later session continuing a chunk of the seeds, reuses finished
cells without sampling again, and a run resumed to more steps is scored anew. Every scores file
and every run's eval.json record the git commit of the code that made them.

Budget (issue 18): the class-conditional baseline of each ablation, guided at w = BUDGET_W on the
same N, should reach class accuracy >= BUDGET_ACC; `budget_check` measures it in every report.
"""

import json
import os
import time

import jax

from experiments.ablations import evaluation
from experiments.ablations import report
from experiments.ablations import seeds as seeds_lib
from experiments.ablations import training


def seed_dir(root, seed, tag):
  """The run directory of the cell (seed, tag): <root>/seed<seed>/<tag>."""
  return os.path.join(root, f"seed{seed}", tag)


def settings_key(settings):
  """"steps2000_ema1_ddim20_w1_n1000": the file-name key of evaluation settings (in order)."""
  fmt = lambda v: f"{v:g}" if isinstance(v, float) else str(v)
  return "_".join(f"{k}{fmt(v)}" for k, v in settings.items())


def scores_path(workdir, seed, settings):
  """workdir/scores_seed<seed>_<settings key>.json: where `cached_scores` keeps a cell's scores."""
  return os.path.join(workdir, f"scores_seed{seed}_{settings_key(settings)}.json")


def cached_scores(workdir, seed, settings, compute):
  """compute()'s scores (a dict; "images" are dropped), kept in `scores_path` with the "commit"
  and "eval_seconds" of their making; a later call with the same seed and settings reads them
  back. Returns the scores plus "reused"."""
  path = scores_path(workdir, seed, settings)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return {**json.load(f), "reused": True}
  t0 = time.time()
  scores = {k: v for k, v in compute().items() if k != "images"}
  scores.update(settings=settings, commit=training.git_commit(), eval_seconds=time.time() - t0)
  if jax.process_index() == 0:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(scores, f, indent=1, default=float)
  return {**scores, "reused": False}


def eval_settings(scale, steps, **extra):
  """The settings a cell's scores depend on: its trained steps, EMA or raw weights, DDIM steps,
  N = 10 per_class, plus `extra` (e.g. w, a timestep grid)."""
  sc = training.TRAIN_SCALES[scale]
  return {"steps": int(steps), "ema": int(sc["use_ema"]), "ddim": sc["sample_steps"],
          "n": 10 * sc["per_class"], **extra}


def ldm_scores(judge, workdir, scale, seed, steps, guidance_scale=1.0):
  """The judge's scores of the LDM cell in workdir (trained to `steps`), sampled with seed at
  guidance w (`evaluation.evaluate_ldm`, the scale's EMA choice), cached (`cached_scores`)."""
  use_ema = training.TRAIN_SCALES[scale]["use_ema"]
  return cached_scores(
      workdir, seed, eval_settings(scale, steps, w=float(guidance_scale)),
      lambda: evaluation.evaluate_ldm(judge, workdir, scale, seed=seed, use_ema=use_ema,
                                      guidance_scale=guidance_scale))


def budget_check(judge, baseline, scale, label):
  """Class accuracy of the baseline cells guided at w = BUDGET_W over the seeds; baseline:
  [(seed, workdir, steps)]. Returns (its summary, "met" | "missed", the report's setup line):
  met iff the mean over the seeds reaches BUDGET_ACC."""
  w, target = training.BUDGET_W, training.BUDGET_ACC
  scores = [ldm_scores(judge, d, scale, s, steps, guidance_scale=w) for s, d, steps in baseline]
  acc = seeds_lib.summarize(sc["acc"] for sc in scores)
  met = "met" if acc["mean"] >= target else "missed"
  n = 10 * training.TRAIN_SCALES[scale]["per_class"]
  line = (f"Budget check: the baseline ({label}) guided at w = {w:g} on the same N = {n}: class "
          f"accuracy {seeds_lib.cell(acc)} (per seed {', '.join(f'{a:.3f}' for a in acc['values'])}"
          f"; target >= {target:.2f} on the mean: **{met}**).")
  print(line, flush=True)
  return acc, met, line


def seeds_line(seeds, root):
  """The setup line naming the seeds and what a seed varies."""
  many = len(seeds) > 1
  return (f"Seed{'s' if many else ''} {', '.join(map(str, seeds))}: a seed is an LDM's training "
          f"seed and its sampling seed (runs in `{root}/seed<s>/<tag>`)"
          + ("; cells: mean ± sd (sample sd) over the seeds, verdicts only on differences beyond "
             "sd_a + sd_b." if many else "; one seed, so no verdict is resolved."))


def eval_line(scale, clf_path, what="DDIM"):
  """The setup line of the evaluation: weights, N, sampler, classifier."""
  sc = training.TRAIN_SCALES[scale]
  weights = (f"EMA weights (decay {sc['ema_decay']:g})" if sc["use_ema"]
             else "raw (not EMA) weights")
  return (f"Evaluation: {weights}, {sc['per_class']} samples per digit "
          f"(N = {10 * sc['per_class']}), {what} {sc['sample_steps']} steps, w = 1; classifier "
          f"`{clf_path}`.")


def provenance_line(cells, wall):
  """The setup line of where the numbers come from; cells: [(run summary, scores)] of every cell.
  Names the commits that trained / scored them, how many were reused, the training wall time and
  this invocation's wall time."""
  commits = sorted({r.get("commit") or "unrecorded" for r, _ in cells}
                   | {s.get("commit") or "unrecorded" for _, s in cells})
  reused = sum(bool(r.get("reused")) and bool(s.get("reused")) for r, s in cells)
  secs = [r.get("seconds") for r, _ in cells]
  total = "n/a" if None in secs else f"{sum(secs):.0f} s"
  return (f"Commit of this report {training.git_commit()}; cells trained / scored at "
          f"{', '.join(commits)}; {reused} of {len(cells)} cells reused from earlier runs; "
          f"training wall time {total} over the cells (each cell's in the train s column); this "
          f"invocation's wall time {wall:.0f} s on {report.devices_line()}.")
