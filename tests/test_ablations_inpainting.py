"""Ablation 9 (experiments/ablations/inpainting.py) at tiny scale with two seeds: the report's rows
and mean ± sd cells, a verdict that follows from the table, the same masks for every row and
seed, the attention ablation (attention blocks with, none without), reuse of the trained runs on
a rerun, and clear errors for bad flags.

The runs come from conftest.py's `ablation_tiny` (tests/ablation_runs.py: a quick digit classifier,
the tiny KL autoencoder and class-conditional LDM, 2 steps each), trained once per worker for every
ablation-script module.
"""

import os
import re

import jax
import numpy as np
import pytest

from experiments.ablations import digit_judge
from experiments.ablations import inpainting as inp
from experiments.ablations import seeds as seeds_lib
from ldm_jax.data import to_float
from ldm_jax.diffusion import concat
from ldm_jax.diffusion import masks
from tests import ablation_runs

pytestmark = pytest.mark.slow  # end-to-end runs of the ablation script


@pytest.fixture(scope="module")
def tiny(ablation_tiny):  # conftest.py: one set per worker
  return ablation_tiny


def test_eval_masks_depend_on_the_image_index_alone():
  """Mask i is the project's large mask of key fold_in(key(MASK_SEED), i): binary, not empty, the
  same whatever N (so every row and seed, and both scales' first images, share it)."""
  m = inp.eval_masks(6, (32, 32))
  assert m.shape == (6, 32, 32) and set(np.unique(m)) <= {0.0, 1.0}
  np.testing.assert_array_equal(inp.eval_masks(3, (32, 32)), m[:3])
  assert (masks.masked_fraction(m[..., None]) > 0).all()
  assert len({m[i].tobytes() for i in range(6)}) == 6
  # the training loss's own masks: the degradation drawn with image i's key
  x, _ = digit_judge.split(digit_judge.HELD_OUT)
  key = jax.random.fold_in(jax.random.key(inp.MASK_SEED), 4)
  train_mask = concat.get_degradation(inp.DEGRADATION).apply(key, to_float(x[:1]), None)
  np.testing.assert_array_equal(np.asarray(train_mask)[0, ..., 0], m[4])


def test_composite_and_psnr_in_mask():
  x = np.full((2, 4, 4, 1), 100, np.uint8)
  out = np.full((2, 4, 4, 1), 110, np.uint8)
  m = np.zeros((2, 4, 4), np.float32)
  m[:, :2] = 1  # half the pixels of each image
  filled = inp.composite(out, x, m)
  assert (filled[:, :2] == 110).all() and (filled[:, 2:] == 100).all()
  # error 10 on the masked pixels alone: 10 log10(255^2 / 100)
  assert inp.psnr_in_mask(filled, x, m) == pytest.approx(10 * np.log10(255.0 ** 2 / 100))


def test_unet_variant_removes_every_attention_block_and_nothing_else():
  for scale in ("tiny", "cpu"):
    with_, without = inp.unet_variant(scale, True), inp.unet_variant(scale, False)
    assert with_["model.down_block_types"][-1] == "AttnDownBlock2D"
    assert with_["model.up_block_types"][0] == "AttnUpBlock2D"
    assert with_["+model.mid_block_attention"] and not without["+model.mid_block_attention"]
    assert not any("Attn" in b for b in without["model.down_block_types"]
                   + without["model.up_block_types"])
    same = {k for k in with_ if with_[k] == without[k]}
    assert set(with_) - same == {"model.down_block_types", "model.up_block_types",
                                 "+model.mid_block_attention"}


def test_repaint_rows_and_verdict_prefer_the_label_free_conditioning():
  """The verdict rows read no class information when the --ldm run has a null label; a run without
  one gives true-label rows at every U, and the verdict then compares against those."""
  null = ("null label", lambda y: {"labels": 0, "guidance_scale": 0.0}, True)
  true = ("true labels", lambda y: {"labels": y, "guidance_scale": 1.0}, False)
  rows = inp._repaint_rows([null, true], (1, 5))  # pylint: disable=protected-access
  assert [l for l, _ in rows] == [inp.repaint_label(1, "null label"),
                                  inp.repaint_label(5, "null label"),
                                  inp.repaint_label(1, "true labels")]
  assert rows[1][1](7) == {"labels": 0, "guidance_scale": 0.0, "resample": 5}
  assert rows[2][1](7) == {"labels": 7, "guidance_scale": 1.0}
  only_true = inp._repaint_rows([true], (1, 5))  # pylint: disable=protected-access
  assert [l for l, _ in only_true] == [inp.repaint_label(u, "true labels") for u in (1, 5)]
  assert only_true[1][1](7)["resample"] == 5

  fd = lambda *v: {"fd": seeds_lib.summarize(v)}
  results = {inp.repaint_label(1, "null label"): fd(20.0, 21.0),
             inp.repaint_label(1, "true labels"): fd(5.0, 5.5),
             inp.ATTN: fd(10.0, 10.5), inp.NO_ATTN: fd(10.2, 10.4)}
  verdict = inp._verdict(results)  # pylint: disable=protected-access
  assert verdict.count(": agrees (the claim: trained lower)") == 1
  assert "true labels" not in verdict
  assert "not resolved at this scale (the claim: attention lower)" in verdict
  del results[inp.repaint_label(1, "null label")]
  verdict = inp._verdict(results)  # pylint: disable=protected-access
  assert ": DISAGREES (the claim: trained lower)" in verdict


def test_two_seeds_report_verdict_and_reuse(tiny):
  results, md = ablation_runs.run_script(inp, tiny, "work_seeds", f"--ldm={tiny['ldm']}",
                                         "--seeds=0,1")
  for heading in ("**Paper claim tested.**", "**Setup.**", "**Does this reproduction agree?**",
                  "wall time", "seeds 0, 1"):
    assert heading in md
  m = inp.eval_masks(inp.SCALES["tiny"]["n"], (32, 32))
  fraction = np.mean(masks.masked_fraction(m[..., None]))
  assert f"mean masked fraction {fraction:.3f}" in md
  table = ablation_runs.table(md)
  repaint = [inp.repaint_label(u, "null label") for u in inp.SCALES["tiny"]["resamples"]]
  true = inp.repaint_label(1, "true labels")
  assert list(table) == [*repaint, true, inp.ATTN, inp.NO_ATTN, inp.RECON, inp.ORIGINALS,
                         inp.FLOOR]
  for label in (*repaint, true, inp.ATTN, inp.NO_ATTN, inp.RECON):  # FD, acc, P, R, PSNR
    assert sum("±" in c for c in table[label]) == 5, table[label]
  assert all(c.endswith("± 0.000") for c in table[inp.ORIGINALS][:4])  # the same for each seed
  assert table[inp.ORIGINALS][4] == "inf"  # PSNR of the digits themselves
  assert "null label (no class information" in md  # the tiny LDM trained label dropout

  # The attention ablation: blocks with attention, none without, both parameter counts reported.
  models = results["models"]
  assert models[inp.ATTN]["attention_blocks"] > 0 and models[inp.NO_ATTN]["attention_blocks"] == 0
  assert models[inp.ATTN]["params"] > models[inp.NO_ATTN]["params"]
  for label in (inp.ATTN, inp.NO_ATTN):
    assert f"{models[label]['params']:,} UNet parameters" in md
  assert f"UNet {models['ldm']['params']:,} parameters" in md  # the RePaint model's

  rows = results["rows"]
  fd = rows[inp.ATTN]["fd"]["values"]
  assert len(fd) == 2 and fd[0] != fd[1]  # two models (and noises): two different scores
  assert rows[inp.RECON]["fd"]["sd"] == 0.0  # deterministic

  # The verdict follows from the table's own FD cells (column 0).
  verdict = md.split("**Does this reproduction agree?**")[1].split("**Notes.**")[0]
  fd_cell = lambda label: ablation_runs.cell(table[label][0])
  want = [seeds_lib.verdict(seeds_lib.compare(fd_cell(inp.ATTN), fd_cell(l)), -1)
          for l in repaint]
  want.append(seeds_lib.verdict(seeds_lib.compare(fd_cell(inp.ATTN), fd_cell(inp.NO_ATTN)), -1))
  parts = re.findall(r": (agrees|DISAGREES|not resolved at this scale) \(the claim: "
                     r"(?:trained|attention) lower\)", verdict)
  assert parts == want, verdict
  assert true not in verdict  # the labelled row is no fair baseline

  # Two inpainting runs per seed, trained now; a rerun reuses all four (same files and scores).
  root = tiny["root"] / "work_seeds" / inp.NAME / "tiny"
  assert sorted(os.listdir(root)) == ["seed0", "seed1"]
  assert sorted(os.listdir(root / "seed0")) == sorted(inp.TAGS.values())
  assert [r["reused"] for rs in results["runs"].values() for r in rs] == [False] * 4
  assert all(r["steps"] == inp.SCALES["tiny"]["inpaint_steps"]
             for rs in results["runs"].values() for r in rs)
  before = ablation_runs.mtimes(root)
  again, md2 = ablation_runs.run_script(inp, tiny, "work_seeds", f"--ldm={tiny['ldm']}",
                                        "--seeds=0,1")
  assert [r["reused"] for rs in again["runs"].values() for r in rs] == [True] * 4
  assert ablation_runs.mtimes(root) == before
  assert again["rows"][inp.ATTN]["fd"]["values"] == fd
  assert "Reused runs" in md2


def test_a_finished_run_on_another_autoencoder_is_refused(tiny):
  """Run dirs are keyed by scale, seed and tag, not by --ae: a finished run on another autoencoder
  is not reused (nor scored) when --ae changes, and the refusal comes before any training."""
  root = tiny["root"] / "work_other_ae" / inp.NAME / "tiny"
  run = root / "seed1" / inp.TAGS[inp.NO_ATTN]  # the last run of the loop
  (run / "export").mkdir(parents=True)
  (run / "export" / "config.json").write_text('{"first_stage": {"workdir": "/elsewhere/ae"}}')
  with pytest.raises(ValueError, match="was trained on the autoencoder '/elsewhere/ae', not on"):
    inp.main(ablation_runs.script_argv(tiny, "work_other_ae", "--ldm=", "--seeds=0,1"))
  assert sorted(os.listdir(root)) == ["seed1"]  # seed 0's runs were not trained first


def test_without_ldm_the_repaint_rows_are_skipped_with_a_note(tiny):
  results, md = ablation_runs.run_script(inp, tiny, "work_no_ldm", "--ldm=")
  assert list(ablation_runs.table(md)) == [inp.ATTN, inp.NO_ATTN, inp.RECON, inp.ORIGINALS,
                                           inp.FLOOR]
  assert "RePaint rows skipped: --ldm was empty." in md
  assert "Trained vs RePaint: not tested (--ldm was empty)." in md
  assert "one seed, so no verdict is resolved" in md
  assert [len(rs) for rs in results["runs"].values()] == [1, 1]


@pytest.mark.parametrize("flag, match", [
    ("--ldm=/no/such/run", r"--ldm='/no/such/run' does not exist"),
    ("--resamples=2,1", r"--resamples='2,1': the values must be positive and increasing"),
    ("--resamples=five", "--resamples='five' is not a comma-separated list of integers"),
    ("--seeds=0,0", "the seeds must be distinct"),
])
def test_bad_flags_fail_before_training(tmp_path, flag, match):
  argv = ["--scale=tiny", f"--out={tmp_path / 'out'}", f"--workdir={tmp_path / 'work'}", flag]
  with pytest.raises(ValueError, match=match):
    inp.main(argv)
  assert not (tmp_path / "work").exists()


def test_ldm_flag_must_be_a_finished_image_run(tiny, tmp_path):
  (tmp_path / "half").mkdir()
  with pytest.raises(ValueError, match="has no export/config.json: it is not a finished LDM run"):
    inp.main(ablation_runs.script_argv(tiny, "work_bad_ldm", f"--ldm={tmp_path / 'half'}"))
  (tmp_path / "sr" / "export").mkdir(parents=True)  # a concat run's export, as far as read
  (tmp_path / "sr" / "export" / "config.json").write_text(
      '{"diffusion": {"conditioning": "concat"}}')
  with pytest.raises(ValueError, match="is a 'concat'-conditioned run; the RePaint rows need"):
    inp.main(ablation_runs.script_argv(tiny, "work_bad_ldm", f"--ldm={tmp_path / 'sr'}"))
  assert not (tiny["root"] / "work_bad_ldm").exists()  # refused before anything was trained
