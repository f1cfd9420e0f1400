"""Tests for experiments/ablations/seed_cells.py: per-seed run directories, scores cached by seed,
settings and trained steps (reused without recomputing), and the provenance line's counts."""

import json
import re

from experiments.ablations import seed_cells
from experiments.ablations import training


def test_seed_dir_and_settings_key(tmp_path):
  assert seed_cells.seed_dir(str(tmp_path), 2, "inv_std") == str(tmp_path / "seed2" / "inv_std")
  key = seed_cells.settings_key(seed_cells.eval_settings("cpu", 2000, w=2.0))
  assert key == "steps2000_ema1_ddim20_n1000_w2"


def test_cached_scores_are_reused_per_seed_and_settings(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return {"fd": float(len(calls)), "images": object()}

  first = seed_cells.cached_scores(str(tmp_path), 0, {"steps": 2, "w": 1.0}, compute)
  assert not first["reused"] and first["fd"] == 1.0 and "images" not in first
  again = seed_cells.cached_scores(str(tmp_path), 0, {"steps": 2, "w": 1.0}, compute)
  assert again["reused"] and again["fd"] == 1.0 and len(calls) == 1  # not recomputed
  # another seed, or the run resumed to more steps: scored anew
  assert seed_cells.cached_scores(str(tmp_path), 1, {"steps": 2, "w": 1.0}, compute)["fd"] == 2.0
  assert seed_cells.cached_scores(str(tmp_path), 0, {"steps": 4, "w": 1.0}, compute)["fd"] == 3.0
  with open(tmp_path / "scores_seed0_steps2_w1.json", encoding="utf-8") as f:
    saved = json.load(f)
  assert saved["commit"] == training.git_commit() and saved["eval_seconds"] >= 0
  assert saved["settings"] == {"steps": 2, "w": 1.0}


def test_git_commit_is_this_repositorys_head():
  commit = training.git_commit()
  assert commit == "unknown" or re.fullmatch(r"[0-9a-f]{4,40}(\+dirty)?", commit), commit


def test_provenance_line_counts_cells_reused_in_both_training_and_scoring():
  cells = [({"commit": "abc", "seconds": 10.0, "reused": True}, {"commit": "abc", "reused": True}),
           ({"commit": "abc", "seconds": 5.0, "reused": True}, {"commit": "def", "reused": False}),
           ({"seconds": 1.0, "reused": False}, {"commit": "def", "reused": False})]
  line = seed_cells.provenance_line(cells, wall=3.0)
  assert "1 of 3 cells reused" in line and "abc, def, unrecorded" in line
  assert "training wall time 16 s over the cells" in line
  cells[0][0]["seconds"] = None  # a run that recorded no time
  assert "training wall time n/a" in seed_cells.provenance_line(cells, wall=3.0)
