"""End-to-end runs of tiny versions of every ablation script (experiments/ablations/): each writes its
markdown table with the expected rows and a PNG plot.

conftest.py's `ablation_tiny` trains a quick digit classifier, a tiny KL autoencoder and a tiny
class-conditional LDM (2 steps each), once per worker; the sampling ablations read that LDM and the
training ablations reuse its autoencoder. The training ablations run a subset of their variants.
"""

import json
import os

import numpy as np
import pytest

from experiments.ablations import autoencoders
from experiments.ablations import downsampling
from experiments.ablations import guidance
from experiments.ablations import prediction_weighting
from experiments.ablations import samplers
from experiments.ablations import sampling
from experiments.ablations import scale_factor
from experiments.ablations import schedules
from experiments.ablations import seeds
from experiments.ablations import training

pytestmark = pytest.mark.slow  # end-to-end runs of every ablation script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny(ablation_tiny):  # conftest.py: one set per worker
  return ablation_tiny


def _run(module, tiny, name, *extra, workdir="work"):
  out = str(tiny["root"] / "results")
  argv = ["--scale=tiny", f"--out={out}", f"--workdir={tiny['root'] / workdir}",
          f"--classifier={tiny['classifier']}", *extra]
  results = module.main(argv)
  with open(os.path.join(out, f"{name}.md"), encoding="utf-8") as f:
    md = f.read()
  with open(os.path.join(out, f"{name}.png"), "rb") as f:
    assert f.read(8) == PNG_MAGIC
  return results, md


def _table_rows(md):
  """First-column cells of the markdown table body."""
  lines = [l for l in md.splitlines() if l.startswith("| ")]
  return [l.split("|")[1].strip() for l in lines[1:]]


def _check_report(md):
  for heading in ("**Paper claim tested.**", "**Setup.**", "**Does this reproduction agree?**",
                  "wall time", "seed"):
    assert heading in md


def test_samplers(tiny):
  results, md = _run(samplers, tiny, "samplers", f"--ldm={tiny['ldm']}", "--nfe=4")
  _check_report(md)
  assert _table_rows(md) == [lab for lab, _, _ in samplers.SAMPLERS] + ["real (floor)"]
  steps = {lab: (nfe, s) for lab, _, nfe, s, _, _ in results}
  assert steps["Heun"] == (3, 2)  # S = 2 grid steps -> 2S - 1 = 3 evaluations within budget 4
  assert steps["DDIM eta=0"] == (4, 4)
  # DDPM (fixed-small variance) and DDIM eta = 1 are the same update on the same grid and noise.
  fd = {lab: s["fd"]["mean"] for lab, _, _, _, s, _ in results}
  np.testing.assert_allclose(fd["DDPM"], fd["DDIM eta=1"], rtol=1e-3)
  assert abs(fd["DDIM eta=0"] - fd["DDIM eta=1"]) > 1e-6  # eta matters
  for *_, s, _ in results:
    assert 0.0 <= s["acc"]["mean"] <= 1.0 and s["fd"]["mean"] > 0 and s["fd"]["sd"] is None
  assert "one seed, so no verdict is resolved" in md
  assert "DISAGREES" not in md and "agrees" not in md.split("reproduction agree?**")[1], md


def test_sample_conditional_is_the_pipelines_unguided_sample(tiny):
  """The samplers / schedules ablations' shortcut (the conditional model alone) draws what
  `pipe.sample` draws at w = 1 (which also evaluates the unconditional half) from the same seed."""
  pipe = sampling.load_pipeline(tiny["ldm"], use_ema=False)
  ours, labels, _ = sampling.sample_conditional(pipe, 3, 1, method="ddim", num_steps=3)
  ref, ref_labels, _ = sampling.sample_classes(pipe, 3, 1, method="ddim", num_steps=3,
                                               guidance_scale=1.0)
  np.testing.assert_array_equal(labels, ref_labels)
  assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1  # float rounding only


def test_guidance(tiny):
  results, md = _run(guidance, tiny, "guidance", f"--ldm={tiny['ldm']}", "--seeds=0,1")
  _check_report(md)
  assert _table_rows(md) == ["0.000", "1.000", "3.000", "real (floor)"]
  assert [w for w, _, _ in results] == [0.0, 1.0, 3.0]
  for _, s, _ in results:  # two seeds per cell: different noise, so different scores
    assert s["fd"]["n"] == 2 and s["fd"]["values"][0] != s["fd"]["values"][1]
    assert np.isfinite(s["diversity"]["mean"]) and s["diversity"]["mean"] > 0
  body = [l for l in md.splitlines() if l.startswith("| 1.000")]
  assert body and body[0].count("±") == 5, md  # acc, FD, precision, recall, diversity
  verdict = md.split("**Does this reproduction agree?**")[1]
  assert verdict.count("agrees") + verdict.count("DISAGREES") + verdict.count(
      "not resolved at this scale") >= 4, verdict
  assert "seeds 0, 1 for every w" in md


def test_scale_factor(tiny):
  results, md = _run(scale_factor, tiny, "scale_factor", f"--ae={tiny['ae']}", "--variants=1")
  _check_report(md)
  assert _table_rows(md) == [scale_factor.VARIANTS[0][0], scale_factor.VARIANTS[1][0], "real (floor)"]
  assert results[1][1] == 1.0  # "none": s = 1
  assert 0 < results[0][1] != 1.0  # 1/std estimated from the autoencoder's latents


def _body_row(md, label):
  (row,) = [l for l in md.splitlines() if l.startswith(f"| {label} |")]
  return row


def _verdict_text(md):
  return md.split("**Does this reproduction agree?**")[1].split("**Notes.**")[0]


def _check_seed_cells(root, seeds_, tags, md, key="steps2_ema1_ddim3_n20_w1"):
  """Per-seed run dirs with the commit and wall time in eval.json and cached scores beside them;
  the report's budget line says met / missed as the cached w = 2 accuracies say."""
  w2 = []
  for s in seeds_:
    for tag in tags:
      cell = root / f"seed{s}" / tag
      with open(cell / "eval.json", encoding="utf-8") as f:
        ev = json.load(f)
      assert ev["commit"] and ev["train_seconds"] > 0, ev
      assert (cell / f"scores_seed{s}_{key}.json").exists(), list(cell.iterdir())
    (budget,) = (root / f"seed{s}" / tags[0]).glob(f"scores_seed{s}_steps*_w2.json")
    with open(budget, encoding="utf-8") as f:
      w2.append(json.load(f)["acc"])
  met = "met" if np.mean(w2) >= training.BUDGET_ACC else "missed"
  assert "Budget check: the baseline" in md and f"**{met}**" in md, md


def test_scale_factor_seeds(tiny):
  """--seeds=0,1: mean ± sd cells, verdicts that follow the cells' spread, per-seed run dirs and
  cached scores; a rerun reuses every cell (same numbers, nothing trained or sampled again)."""
  argv = (f"--ae={tiny['ae']}", "--variants=1", "--seeds=0,1")
  results, md = _run(scale_factor, tiny, "scale_factor", *argv, workdir="work_seeds")
  _check_report(md)
  labels = [scale_factor.VARIANTS[0][0], scale_factor.VARIANTS[1][0]]
  assert _table_rows(md) == labels + ["real (floor)"]
  for label, _, _, summ in results:  # s, std, loss, FD, acc, precision, recall, train s
    assert _body_row(md, label).count("±") == 8, md
    assert summ["fd"]["n"] == 2 and summ["fd"]["values"][0] != summ["fd"]["values"][1]
  assert results[1][1] == 1.0 and results[0][3]["s"]["sd"] > 0  # 1/std estimated per seed
  word = seeds.verdict(seeds.compare(results[0][3]["fd"], results[1][3]["fd"]), -1)
  assert f"1/std vs {labels[1]}: FD {seeds.cell(results[0][3]['fd'])} vs " \
         f"{seeds.cell(results[1][3]['fd'])}: {word} (1/std lower)." in _verdict_text(md), md
  assert "Seeds 0, 1: a seed is an LDM's training seed and its sampling seed" in md
  assert "EMA weights (decay 0.99)" in md and "0 of 4 cells reused" in md
  _check_seed_cells(tiny["root"] / "work_seeds" / "scale_factor" / "tiny", (0, 1),
                    ("inv_std", "none"), md)

  again, md2 = _run(scale_factor, tiny, "scale_factor", *argv, workdir="work_seeds")
  assert "4 of 4 cells reused" in md2, md2
  assert [r[3]["fd"]["values"] for r in again] == [r[3]["fd"]["values"] for r in results]
  assert _verdict_text(md2) == _verdict_text(md)


def test_prediction_weighting(tiny):
  """--seeds=0,1 with variant 4 (and eps + simple, the budget baseline, which always runs) at two
  checkpoints; a rerun reuses each checkpoint's scores (the run only keeps its latest step, so
  retraining or re-scoring would report step 2's model at step 1)."""
  argv = (f"--ae={tiny['ae']}", "--variants=4", "--checkpoints=1,2", "--seeds=0,1")
  results, md = _run(prediction_weighting, tiny, "prediction_weighting", *argv,
                     workdir="work_seeds")
  _check_report(md)
  many = prediction_weighting.ANCESTRAL_STEPS["tiny"]
  assert _table_rows(md) == (["eps, simple"] * 2 + ["v, simple"] * 2
                             + [f"eps, simple: DDPM {many} steps", "real (floor)"])
  # the sampler check: the final eps model sampled by DDPM (x0 did not run, so no comparison)
  check = [l for l in md.splitlines() if l.startswith(f"| eps, simple: DDPM {many} steps | 2 |")]
  assert len(check) == 1 and check[0].count("±") == 4, md  # FD, acc, precision, recall
  assert "Sampled as DDPM did" not in md
  for seed in (0, 1):
    ddpm = (tiny["root"] / "work_seeds" / "prediction_weighting" / "tiny" / f"seed{seed}"
            / "epsilon_simple" / f"scores_seed{seed}_steps2_ema1_ddpm{many}_n20_w1_decay2.json")
    ddim = ddpm.parent / f"scores_seed{seed}_steps2_ema1_ddim3_n20_w1_decay2.json"
    assert json.loads(ddpm.read_text())["fd"] != json.loads(ddim.read_text())["fd"]
  assert [(label, step) for label, step, _ in results] == [
      ("eps, simple", 1), ("eps, simple", 2), ("v, simple", 1), ("v, simple", 2)]
  assert results[2][2]["fd"]["values"] != results[3][2]["fd"]["values"]  # different models
  assert "bpd" not in results[2][2] and np.isfinite(results[3][2]["bpd"]["mean"])  # final only
  assert results[3][2]["bpd"]["n"] == 2 and results[3][2]["bpd_se"]["mean"] > 0
  rows = [l for l in md.splitlines() if l.startswith("| v, simple |")]
  assert [r.count("±") for r in rows] == [6, 8], md  # loss, FD, acc, prec., recall, (bpd, se,) s
  assert "0 of 10 cells reused" in md
  _check_seed_cells(tiny["root"] / "work_seeds" / "prediction_weighting" / "tiny", (0, 1),
                    ("epsilon_simple", "v_prediction_simple"), md,
                    key="steps2_ema1_ddim3_n20_w1_decay2")
  again, md2 = _run(prediction_weighting, tiny, "prediction_weighting", *argv,
                    workdir="work_seeds")
  assert "10 of 10 cells reused" in md2, md2
  assert [s["fd"]["values"] for _, _, s in again] == [s["fd"]["values"] for _, _, s in results]
  assert [s["train_s"]["values"] for _, _, s in again] == [
      s["train_s"]["values"] for _, _, s in results]
  assert _table_rows(md2) == _table_rows(md)


def test_schedules(tiny):
  """--seeds=0,1 with variant 4 (and the LDM recipe, the budget baseline, which always runs): both
  timestep grids per cell, mean ± sd cells, cached scores reused by a rerun."""
  argv = (f"--ae={tiny['ae']}", "--variants=4", "--seeds=0,1")
  results, md = _run(schedules, tiny, "schedules", *argv, workdir="work_seeds")
  _check_report(md)
  base, label = schedules.VARIANTS[schedules.BASELINE][0], schedules.VARIANTS[4][0]
  assert _table_rows(md) == [base, base, label, label, "real (floor)"]
  assert [r[1] for r in results] == ["leading", "trailing"] * 2
  assert results[2][2] < 1e-6 < results[0][2]  # zero terminal SNR: abar_T = 0; LDM's is not
  for lab, spacing, _, s in results:  # FD, acc, recall, brightness, train s
    row = [l for l in md.splitlines() if l.startswith(f"| {lab} | {spacing} |")]
    assert len(row) == 1 and row[0].count("±") == 5, md
    assert s["fd"]["n"] == 2 and 0.0 <= s["brightness"]["mean"] <= 1.0
  assert "0 of 8 cells reused" in md and "EMA weights" in md
  _check_seed_cells(tiny["root"] / "work_seeds" / "schedules" / "tiny", (0, 1),
                    ("ldm", "sd_ztsnr_v"), md, key="steps2_ema1_ddim3_n20_gridleading")

  again, md2 = _run(schedules, tiny, "schedules", *argv, workdir="work_seeds")
  assert "8 of 8 cells reused" in md2, md2
  assert [r[3]["fd"]["values"] for r in again] == [r[3]["fd"]["values"] for r in results]


def test_autoencoders_then_downsampling(tiny):
  """Ablation 2 trains the f = 4 autoencoder that ablation 1 then reuses (not retrained), both over
  two seeds (ablation 2: the autoencoder's training seed; ablation 1: the LDM's, on seed 0's
  autoencoder). KL f4 c3 is ablation 2's convergence baseline (also trained for twice the steps)
  and LDM-4 ablation 1's budget baseline, so both checks run."""
  results, md = _run(autoencoders, tiny, "autoencoders", "--configs=KL:4:3,VQ:2:2", "--seeds=0,1")
  _check_report(md)
  assert _table_rows(md) == ["KL", "VQ"]
  kind, f, c, s = results[0]
  assert (kind, f, c) == ("KL", 4, 3) and s["psnr"]["n"] == 2
  assert s["psnr"]["values"][0] != s["psnr"]["values"][1]  # two training seeds
  assert results[1][3]["rate"]["mean"] == 4.0 * 16 * 16 / (32 * 32)  # VQ bound: log2(16 codes) per 16x16 position
  assert np.isfinite(s["psnr"]["mean"]) and -1 <= s["ssim"]["mean"] <= 1 and s["rfd"]["mean"] > 0
  assert 0.0 <= s["acc"]["mean"] <= 1.0 and s["rate"]["mean"] > 0
  assert _body_row(md, "KL").count("±") == 7, md
  ae_steps = training.TRAIN_SCALES["tiny"]["ae_steps"]
  long_psnr = []
  for seed in (0, 1):
    seed_root = tiny["root"] / "work" / "autoencoders" / "tiny" / f"seed{seed}"
    assert (seed_root / "KL_f4_c3" / "eval.json").exists()
    long_eval = json.loads((seed_root / f"KL_f4_c3_steps{2 * ae_steps}" / "eval.json").read_text())
    assert long_eval["steps"] == 2 * ae_steps
    long_psnr.append(long_eval["psnr"])
  check = [l for l in md.splitlines() if "Convergence check:" in l]
  gain = np.mean(long_psnr) - s["psnr"]["mean"]
  assert len(check) == 1 and f"trained for {2 * ae_steps} instead of {ae_steps} steps" in check[0]
  assert f"a gain of {gain:.2f} ± " in check[0], (check, gain)
  assert ("**flattened**" if gain < autoencoders.FLAT_DB else "**not flattened**") in check[0]
  assert "0 of 6 cells reused" in md, md  # 2 seeds x (2 configs + the doubled baseline)

  results, md = _run(downsampling, tiny, "downsampling", "--factors=4", "--seeds=0,1")
  _check_report(md)
  assert _table_rows(md) == ["LDM-4", "real (floor)"]
  (r,) = results
  assert r["s"]["throughput"]["mean"] > 0 and r["steps"] == training.TRAIN_SCALES["tiny"]["ldm_steps"]
  assert r["reused_autoencoder"] and r["psnr"] == s["psnr"]["values"][0]  # seed 0's autoencoder
  assert r["s"]["fd"]["n"] == 2 and _body_row(md, "LDM-4").count("±") == 6, md
  assert "Budget check: the baseline (LDM-4) guided at w = 2" in md and "0 of 2 cells reused" in md
  again, md2 = _run(downsampling, tiny, "downsampling", "--factors=4", "--seeds=0,1")
  assert "2 of 2 cells reused" in md2 and again[0]["s"]["fd"] == r["s"]["fd"], md2


def test_downsampling_at_equal_wall_clock(tiny):
  """With a budget each f trains budget x (its calibration run's steps/s) steps, calibrated once
  (before any LDM) and reused by a rerun."""
  argv = ("--factors=8,4", "--seeds=0", "--budget_s=3")
  results, md = _run(downsampling, tiny, "downsampling", *argv, workdir="work_budget")
  root = tiny["root"] / "work_budget" / "downsampling" / "tiny"
  n = downsampling.CALIBRATION_STEPS["tiny"]
  calib_time = {}
  for r in results:
    calib = json.loads((root / f"calib_f{r['f']}" / "eval.json").read_text())
    assert calib["steps"] == n
    assert r["steps"] == max(n, int(3.0 * calib["final_metrics"]["steps_per_sec"])), (r, calib)
    cell = json.loads((root / "seed0" / f"ldm_f{r['f']}" / "eval.json").read_text())
    assert cell["steps"] == r["steps"]
    assert r["s"]["train_s"]["values"] == [cell["train_seconds"]]  # measured, not steps / rate
    calib_time[r["f"]] = (root / f"calib_f{r['f']}" / "eval.json").stat().st_mtime
    assert calib_time[r["f"]] < (root / "seed0" / "ldm_f8" / "eval.json").stat().st_mtime
  assert "every f calibrated back to back" in md and "Training budget per f: 3 s" in md
  again, _ = _run(downsampling, tiny, "downsampling", *argv, workdir="work_budget")
  assert [r["steps"] for r in again] == [r["steps"] for r in results]
  for f, t in calib_time.items():  # not calibrated again
    assert (root / f"calib_f{f}" / "eval.json").stat().st_mtime == t
