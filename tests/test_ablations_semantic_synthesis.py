"""Ablation 10 (experiments/ablations/semantic_synthesis.py) at tiny scale with two seeds: the
report's rows and mean ± sd cells, a verdict that follows from the table, maps made as the training
loss makes c, the no-model references' known scores, reuse of the trained runs and their cached
scores on a rerun, and clear errors for bad flags before anything is trained.

The runs come from conftest.py's `ablation_tiny` (tests/ablation_runs.py: a quick digit classifier,
the tiny KL f = 4 autoencoder, 2 steps), trained once per worker for every ablation-script module.
"""

import os
import re

import numpy as np
import pytest

from experiments.ablations import seeds as seeds_lib
from experiments.ablations import semantic_synthesis as sem
from ldm_jax.data import mnist_pairs, to_float
from ldm_jax.diffusion import concat
from tests import ablation_runs

pytestmark = pytest.mark.slow  # end-to-end runs of the ablation script

GUIDED = sem.guided_label(2.0)
RELABELLED = sem.relabelled_label(2.0)


@pytest.fixture(scope="module")
def tiny(ablation_tiny):  # conftest.py: one set per worker
  return ablation_tiny


def test_held_out_canvases_and_their_maps_are_the_training_conditioning():
  """Half seen pairs ("test"), half the unseen (d, d + 3 mod 10) ("heldout"); the maps are the
  loss's own s (conditioning_map's one-hot is of exactly these classes)."""
  x, y, unseen = sem.held_out_canvases(6)
  assert x.shape == (6, 32, 64, 1) and unseen.tolist() == [False] * 3 + [True] * 3
  pairs = [(int(l) // 10, int(l) % 10) for l in y]
  assert all(p in mnist_pairs.HELD_OUT_PAIRS for p in pairs[3:])
  assert not any(p in mnist_pairs.HELD_OUT_PAIRS for p in pairs[:3])
  s = sem.segmentation_maps(x, y)
  c = concat.conditioning_map(sem.DEGRADATION, None, to_float(x), (32, 64), y)
  np.testing.assert_array_equal(np.argmax(np.asarray(c), -1), s)  # f = 1 grid: one-hot of s
  assert set(np.unique(s[:, :, :32][s[:, :, :32] > 0])) <= {p[0] + 1 for p in pairs}
  d, truth = sem.halves(x, y)
  assert d.shape == (12, 32, 32, 1)
  assert truth.tolist() == [a for a, _ in pairs] + [b for _, b in pairs]
  np.testing.assert_array_equal(d[7], x[1, :, 32:])  # the right half of canvas 1


def test_relabel_keeps_the_strokes_and_renames_every_digit():
  x, y, _ = sem.held_out_canvases(6)
  s = sem.segmentation_maps(x, y)
  r, y_r = sem.relabel(s, y)
  np.testing.assert_array_equal(r > 0, s > 0)  # the same stroke pixels
  np.testing.assert_array_equal(r[s > 0], (s[s > 0] - 1 + sem.RELABEL) % 10 + 1)
  assert y_r.tolist() == [10 * ((a // 10 + 5) % 10) + (a % 10 + 5) % 10 for a in y.tolist()]
  # The relabelled maps are what the degradation makes of the same canvases with the new labels.
  np.testing.assert_array_equal(sem.segmentation_maps(x, y_r), r)
  assert all(((b - a) % 10) == 3 for a, b in ((l // 10, l % 10) for l in y_r[3:]))  # still unseen


def test_two_seeds_report_verdict_and_reuse(tiny):
  results, md = ablation_runs.run_script(sem, tiny, "work_seeds", "--seeds=0,1")
  for heading in ("**Paper claim tested.**", "**Setup.**", "**Does this reproduction agree?**",
                  "wall time", "seeds 0, 1"):
    assert heading in md
  table = ablation_runs.table(md)
  assert list(table) == [sem.MODEL, GUIDED, RELABELLED, sem.MASK, sem.ORIGINALS, sem.FLOOR]
  for label in (sem.MODEL, GUIDED, RELABELLED, sem.MASK, sem.ORIGINALS):  # 8 metric columns
    assert sum("±" in c for c in table[label]) == 8, table[label]
  assert results["guided"]  # mnist_semantic trains p_drop 0.1: the zero map is the null c
  rows = results["rows"]
  # The references are known: the originals agree with their own maps exactly, and so does the
  # map drawn as an image; both are deterministic (sd 0).
  for label in (sem.MASK, sem.ORIGINALS):
    assert rows[label]["stroke"]["mean"] == rows[label]["background"]["mean"] == 1.0
    assert rows[label]["acc"]["sd"] == 0.0
  assert table[sem.ORIGINALS][5:7] == ["1.000 ± 0.000", "1.000 ± 0.000"]
  fd = rows[sem.MODEL]["fd"]["values"]
  assert len(fd) == 2 and fd[0] != fd[1]  # two models (and noises): two different scores
  assert rows[sem.MODEL]["stroke"]["mean"] < 1.0  # 2 training steps: not the map

  # The verdict follows from the table's own cells (region acc: column 0; stroke: column 5).
  verdict = md.split("**Does this reproduction agree?**")[1].split("**Notes.**")[0]
  model, guided = (table[l] for l in (sem.MODEL, GUIDED))
  _, y, _ = sem.held_out_canvases(sem.SCALES["tiny"]["n"])
  chance = max(np.mean(np.concatenate([y // 10, y % 10]) == d) for d in range(10))
  assert results["chance"] == chance >= 0.1 and f"vs chance {chance:.3f}" in verdict
  cell = ablation_runs.cell
  want = [seeds_lib.verdict(seeds_lib.compare(cell(model[0]), {"mean": chance, "sd": 0.0}), 1)]
  want += [seeds_lib.verdict(seeds_lib.compare(cell(guided[i]), cell(model[i])), 1)
           for i in (0, 5)]
  parts = re.findall(r": (agrees|DISAGREES|not resolved at this scale) \(the claim: ", verdict)
  assert parts == want, verdict
  # The control: a half is judged one digit, and the label's digit is never the shape's, so per
  # seed "follows the label" + "follows the shape" <= 1; the verdict names the larger beyond sd.
  control = rows[RELABELLED]
  for a, b in zip(control["acc"]["values"], control["shape_acc"]["values"]):
    assert a + b <= 1.0 + 1e-9
  assert table[RELABELLED][0] == seeds_lib.cell(control["acc"])  # region acc: vs the label
  follows = {1: "the class channels decide", -1: "the stroke shape decides",
             0: "neither decides"}[seeds_lib.compare(control["acc"], control["shape_acc"])]
  assert follows in verdict.split("Relabelled maps")[1]
  ceiling = seeds_lib.compare(cell(model[0]), cell(table[sem.ORIGINALS][0]))
  assert {1: "above it beyond", -1: "below it beyond", 0: "not resolved"}[ceiling] in verdict.split(
      "Against the ceiling")[1].split(";")[0]

  # One run per seed, trained now; a rerun reuses both runs and their cached scores.
  root = tiny["root"] / "work_seeds" / sem.NAME / "tiny"
  assert sorted(os.listdir(root)) == ["seed0", "seed1"]
  assert [r["reused"] for r in results["runs"]] == [False, False]
  assert all(r["steps"] == sem.SCALES["tiny"]["steps"] for r in results["runs"])
  assert len([f for f in os.listdir(root / "seed0" / "semantic") if f.startswith("scores_")]) == 3
  before = ablation_runs.mtimes(root)
  again, md2 = ablation_runs.run_script(sem, tiny, "work_seeds", "--seeds=0,1")
  assert [r["reused"] for r in again["runs"]] == [True, True]
  assert ablation_runs.mtimes(root) == before  # nothing trained, sampled or written again
  assert again["rows"][sem.MODEL]["fd"]["values"] == fd
  assert "reused runs" in md2


def test_one_seed_without_guidance(tiny):
  """--guidance=1 drops the guided row with a note; one seed resolves nothing; a run trained by
  another invocation with the same seed is reused (seed 0 of work_seeds is not: another root)."""
  results, md = ablation_runs.run_script(sem, tiny, "work_one", "--guidance=1")
  assert list(ablation_runs.table(md)) == [sem.MODEL, sem.relabelled_label(1.0), sem.MASK,
                                           sem.ORIGINALS, sem.FLOOR]
  assert "Guided row skipped: --guidance=1." in md and "one seed, so no verdict is resolved" in md
  assert "(the claim: above chance)" in md and "not resolved at this scale (the claim" in md
  assert not results["guided"] and [r["steps"] for r in results["runs"]] == [2]


def test_a_finished_run_on_another_autoencoder_is_refused(tiny):
  run = tiny["root"] / "work_other_ae" / sem.NAME / "tiny" / "seed0" / "semantic"
  (run / "export").mkdir(parents=True)
  (run / "export" / "config.json").write_text('{"first_stage": {"workdir": "/elsewhere/ae"}}')
  with pytest.raises(ValueError, match="was trained on the autoencoder '/elsewhere/ae', not on"):
    sem.main(ablation_runs.script_argv(tiny, "work_other_ae"))


@pytest.mark.parametrize("flag, match", [
    ("--seeds=0,0", "the seeds must be distinct"),
    ("--guidance=nan", r"--guidance=nan: the guidance scale must be a finite number >= 0"),
    ("--n=3", r"--n=3: the held-out canvases must number 4 to 4000"),
    ("--method=plms", r"--method='plms' unknown; valid choices: ddpm, ddim, dpmpp_2m"),
    ("--num_steps=-2", r"--num_steps=-2: the sampler needs at least one step"),
])
def test_bad_flags_fail_before_training(tmp_path, flag, match):
  argv = ["--scale=tiny", f"--out={tmp_path / 'out'}", f"--workdir={tmp_path / 'work'}", flag]
  with pytest.raises(ValueError, match=match):
    sem.main(argv)
  assert not (tmp_path / "work").exists()
