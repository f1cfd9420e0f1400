"""Ablation 8 (experiments/ablations/super_resolution.py) at tiny scale with two seeds: the report's
rows and mean ± sd cells, a verdict that follows from the table, inputs made as the training loss
makes c, reuse of the trained LDM-SR runs on a rerun, and clear errors for bad flags.

The runs come from conftest.py's `ablation_tiny` (tests/ablation_runs.py: a quick digit classifier,
the tiny KL autoencoder and class-conditional LDM, 2 steps each), trained once per worker for every
ablation-script module.
"""

import os
import re

import numpy as np
import pytest

from experiments.ablations import digit_judge
from experiments.ablations import seeds as seeds_lib
from experiments.ablations import super_resolution as sr
from ldm_jax.data import to_float
from ldm_jax.diffusion import concat
from tests import ablation_runs

pytestmark = pytest.mark.slow  # end-to-end runs of the ablation script


@pytest.fixture(scope="module")
def tiny(ablation_tiny):  # conftest.py: one set per worker
  return ablation_tiny


def test_low_res_inputs_are_the_training_conditioning():
  """The 8x8 inputs are c = conditioning_map(bicubic_x4) of the loss (f = 4: the latent grid is
  8x8, so c is D(x) itself), and the bicubic row upsamples them back to 32x32."""
  x, _ = digit_judge.split(digit_judge.HELD_OUT)
  low = sr.low_res(x[:4])
  c = concat.conditioning_map(sr.DEGRADATION, None, to_float(x[:4]), (8, 8))
  np.testing.assert_array_equal(low, np.asarray(c))
  up = sr.upsample_bicubic(low, (32, 32))
  assert low.shape == (4, 8, 8, 1) and up.shape == (4, 32, 32, 1)
  assert up.min() >= -1 and up.max() <= 1


def test_two_seeds_report_verdict_and_reuse(tiny):
  results, md = ablation_runs.run_script(sr, tiny, "work_seeds", f"--ldm={tiny['ldm']}",
                                         "--seeds=0,1")
  for heading in ("**Paper claim tested.**", "**Setup.**", "**Does this reproduction agree?**",
                  "wall time", "seeds 0, 1"):
    assert heading in md
  table = ablation_runs.table(md)
  sdedit = sr.sdedit_label(sr.SCALES["tiny"]["strengths"][0])
  assert list(table) == [sr.BICUBIC, sdedit, sr.LDM_SR, sr.RECON, sr.ORIGINALS, sr.FLOOR]
  for label in (sr.BICUBIC, sdedit, sr.LDM_SR, sr.RECON):  # PSNR, SSIM, FD, acc, precision, recall
    assert sum("±" in c for c in table[label]) == 6, table[label]
  assert table[sr.ORIGINALS][:2] == ["inf", "1.000 ± 0.000"]
  assert "null label alone" in md  # the tiny LDM trained label dropout: SDEdit without labels

  rows = results["rows"]
  fd = rows[sr.LDM_SR]["fd"]["values"]
  assert len(fd) == 2 and fd[0] != fd[1]  # two models (and noises): two different scores
  assert rows[sr.BICUBIC]["psnr"]["sd"] == 0.0  # deterministic
  assert np.isfinite(rows[sr.LDM_SR]["psnr"]["mean"]) and -1 <= rows[sr.LDM_SR]["ssim"]["mean"] <= 1

  # The verdict follows from the table's own cells (PSNR, SSIM, FD: columns 0, 1, 2).
  verdict = md.split("**Does this reproduction agree?**")[1].split("**Notes.**")[0]
  want = [seeds_lib.verdict(seeds_lib.compare(ablation_runs.cell(table[sr.LDM_SR][i]),
                                              ablation_runs.cell(table[sr.BICUBIC][i])), -1)
          for i in (2, 0, 1)]
  parts = re.findall(r": (agrees|DISAGREES|not resolved at this scale) \(the claim: LDM-SR lower\)",
                     verdict)
  assert parts == want, verdict

  # One LDM-SR run per seed, trained now; a rerun reuses both (no training, same files and scores).
  root = tiny["root"] / "work_seeds" / sr.NAME / "tiny"
  assert sorted(os.listdir(root)) == ["seed0", "seed1"]
  assert [r["reused"] for r in results["runs"]] == [False, False]
  assert all(r["steps"] == sr.SCALES["tiny"]["sr_steps"] for r in results["runs"])
  before = ablation_runs.mtimes(root)
  again, md2 = ablation_runs.run_script(sr, tiny, "work_seeds", f"--ldm={tiny['ldm']}",
                                        "--seeds=0,1")
  assert [r["reused"] for r in again["runs"]] == [True, True]
  assert ablation_runs.mtimes(root) == before
  assert again["rows"][sr.LDM_SR]["fd"]["values"] == fd
  assert "reused runs" in md2


def test_a_finished_run_on_another_autoencoder_is_refused(tiny, tmp_path):
  """Run dirs are keyed by scale and seed, not by --ae: a finished run on another autoencoder is
  not reused (nor scored) when --ae changes."""
  sr_run = tiny["root"] / "work_other_ae" / sr.NAME / "tiny" / "seed0" / "ldm_sr"
  (sr_run / "export").mkdir(parents=True)
  (sr_run / "export" / "config.json").write_text('{"first_stage": {"workdir": "/elsewhere/ae"}}')
  with pytest.raises(ValueError, match="was trained on the autoencoder '/elsewhere/ae', not on"):
    sr.main(ablation_runs.script_argv(tiny, "work_other_ae", "--ldm="))


def test_without_ldm_the_sdedit_row_is_skipped_with_a_note(tiny):
  results, md = ablation_runs.run_script(sr, tiny, "work_no_ldm", "--ldm=")
  assert list(ablation_runs.table(md)) == [sr.BICUBIC, sr.LDM_SR, sr.RECON, sr.ORIGINALS, sr.FLOOR]
  assert "SDEdit row skipped: --ldm was empty." in md
  assert "one seed, so no verdict is resolved" in md
  assert [r["steps"] for r in results["runs"]] == [sr.SCALES["tiny"]["sr_steps"]]


@pytest.mark.parametrize("flag, match", [
    ("--ldm=/no/such/run", r"--ldm='/no/such/run' does not exist"),
    ("--strengths=0.5,1.5", r"--strengths='0.5,1.5': each SDEdit strength must lie in \(0, 1\]"),
    ("--strengths=half", "--strengths='half' is not a comma-separated list of numbers"),
    ("--seeds=0,0", "the seeds must be distinct"),
])
def test_bad_flags_fail_before_training(tmp_path, flag, match):
  argv = ["--scale=tiny", f"--out={tmp_path / 'out'}", f"--workdir={tmp_path / 'work'}", flag]
  with pytest.raises(ValueError, match=match):
    sr.main(argv)
  assert not (tmp_path / "work").exists()


def test_ldm_flag_must_be_a_finished_image_run(tiny, tmp_path):
  (tmp_path / "half").mkdir()
  with pytest.raises(ValueError, match="has no export/config.json: it is not a finished LDM run"):
    sr.main(ablation_runs.script_argv(tiny, "work_bad_ldm", f"--ldm={tmp_path / 'half'}"))
  (tmp_path / "sr" / "export").mkdir(parents=True)  # an LDM-SR run's export, as far as read
  (tmp_path / "sr" / "export" / "config.json").write_text(
      '{"diffusion": {"conditioning": "concat"}}')
  with pytest.raises(ValueError, match="is a 'concat'-conditioned run; the SDEdit row needs"):
    sr.main(ablation_runs.script_argv(tiny, "work_bad_ldm", f"--ldm={tmp_path / 'sr'}"))
  assert not (tiny["root"] / "work_bad_ldm").exists()  # refused before anything was trained
