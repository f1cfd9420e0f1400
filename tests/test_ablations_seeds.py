"""Tests for experiments/ablations/seeds.py: per-seed summaries, the resolved-difference rule and
the verdict words, and the guidance ablation's verdict built on them (synthetic cells whose
answer is known)."""

import numpy as np
import pytest

from experiments.ablations import downsampling
from experiments.ablations import guidance
from experiments.ablations import prediction_weighting
from experiments.ablations import scale_factor
from experiments.ablations import schedules
from experiments.ablations import seeds


def test_parse_seeds():
  assert seeds.parse_seeds("", 7) == (7,)
  assert seeds.parse_seeds("0,1,2", 7) == (0, 1, 2)
  with pytest.raises(ValueError, match="not a comma-separated list"):
    seeds.parse_seeds("0,a", 0)
  with pytest.raises(ValueError, match="distinct integers >= 0"):
    seeds.parse_seeds("1,1", 0)
  with pytest.raises(ValueError, match="distinct integers >= 0"):
    seeds.parse_seeds("-1,2", 0)


def test_summaries_and_cells():
  s = seeds.summarize([0.9, 0.95, 1.0])
  assert s["n"] == 3 and s["values"] == [0.9, 0.95, 1.0]
  np.testing.assert_allclose([s["mean"], s["sd"]], [0.95, 0.05])  # sample sd (ddof 1)
  assert seeds.cell(s) == "0.950 ± 0.050"
  one = seeds.summarize([0.5])
  assert one["sd"] is None and seeds.cell(one) == "0.500"
  both = seeds.summarize_scores([{"acc": 0.5, "fd": 2.0, "name": "x"}, {"acc": 0.7, "fd": 4.0,
                                                                         "name": "y"}])
  assert set(both) == {"acc", "fd"}
  np.testing.assert_allclose(both["fd"]["sd"], np.sqrt(2.0))
  with pytest.raises(ValueError, match="at least one value"):
    seeds.summarize([])


def _cell(mean, sd):
  return {"mean": mean, "sd": sd, "n": 3, "values": []}


def test_compare_needs_a_difference_beyond_both_spreads():
  assert seeds.compare(_cell(1.0, 0.1), _cell(0.7, 0.1)) == 1      # 0.3 > 0.2
  assert seeds.compare(_cell(0.7, 0.1), _cell(1.0, 0.1)) == -1
  assert seeds.compare(_cell(1.0, 0.1), _cell(0.85, 0.1)) == 0     # 0.15 < 0.2: overlap
  assert seeds.compare(_cell(1.0, 0.1), _cell(0.8, 0.1)) == 0      # exactly touching: not beyond
  assert seeds.compare(_cell(1.0, None), _cell(0.0, None)) == 0    # one seed: no spread known
  assert seeds.verdict(1, 1) == "agrees" and seeds.verdict(-1, 1) == "DISAGREES"
  assert seeds.verdict(0, 1) == seeds.NOT_RESOLVED


def _results(acc, fd, div, sd):
  ws = (0.0, 1.0, 2.0, 5.0)
  return [(w, {"acc": _cell(a, sd), "fd": _cell(f, sd), "recall": _cell(d, sd),
               "diversity": _cell(d, sd)}, 1.0) for w, a, f, d in zip(ws, acc, fd, div)]


def test_guidance_verdict_resolves_only_beyond_the_spread():
  clear = guidance._verdict(_results(acc=(0.1, 0.8, 0.9, 0.99), fd=(9.0, 4.0, 2.0, 6.0),
                                     div=(5.0, 4.0, 3.0, 2.0), sd=0.01))
  assert clear.count("agrees") == 4 and "DISAGREES" not in clear, clear
  noisy = guidance._verdict(_results(acc=(0.1, 0.8, 0.9, 0.99), fd=(9.0, 4.0, 2.0, 6.0),
                                     div=(5.0, 4.0, 3.0, 2.0), sd=5.0))
  assert noisy.count(seeds.NOT_RESOLVED) == 4 and "agrees" not in noisy, noisy
  wrong = guidance._verdict(_results(acc=(0.1, 0.9, 0.8, 0.5), fd=(9.0, 4.0, 5.0, 6.0),
                                     div=(5.0, 2.0, 3.0, 4.0), sd=0.01))
  assert wrong.count("DISAGREES") == 4, wrong  # acc falls, FD lowest at w=1, diversity rises


def _sampler_results(fd_low, fd_high):
  """Two NFE budgets per sampler; fd_*: label -> per-seed FDs."""
  out = []
  for lab in fd_low:
    for nfe, fd in ((5, fd_low[lab]), (50, fd_high[lab])):
      out.append((lab, "m", nfe, nfe, {"fd": seeds.summarize(fd)}, 1.0))
  return out


def test_samplers_verdict_uses_per_seed_spreads():
  from experiments.ablations import samplers  # pylint: disable=import-outside-toplevel
  clear = samplers._verdict(_sampler_results(
      {"DDIM eta=0": [2.0, 2.1, 2.2], "DDIM eta=1": [9.0, 9.2, 9.1]},
      {"DDIM eta=0": [1.0, 1.1, 1.0], "DDIM eta=1": [1.2, 1.2, 1.3]}))
  assert clear.count("agrees") == 2 and "DISAGREES" not in clear, clear
  # eta = 1 better at few steps, and the samplers drift apart: both resolved the wrong way
  wrong = samplers._verdict(_sampler_results(
      {"DDIM eta=0": [9.0, 9.2, 9.1], "DDIM eta=1": [2.0, 2.1, 2.2]},
      {"DDIM eta=0": [30.0, 31.0, 30.5], "DDIM eta=1": [1.2, 1.2, 1.3]}))
  assert wrong.count("DISAGREES") == 2, wrong
  noisy = samplers._verdict(_sampler_results(
      {"DDIM eta=0": [2.0, 9.0, 4.0], "DDIM eta=1": [9.0, 2.0, 5.0]},
      {"DDIM eta=0": [1.0, 3.0, 1.0], "DDIM eta=1": [3.0, 1.0, 1.3]}))
  assert noisy.count(seeds.NOT_RESOLVED) == 2, noisy


def test_scale_factor_verdict_resolves_only_beyond_the_spread():
  def results(fds, sd):
    return [(label, 1.0, mult, {"fd": seeds.summarize([f - sd, f + sd])})
            for (label, mult), f in zip(scale_factor.VARIANTS, fds)]
  clear = scale_factor._verdict(results((1.0, 1.05, 3.0, 4.0), sd=0.1))
  # x5 and x0.2 resolved worse than 1/std; s = 1 within the spread
  assert clear.count(": agrees (") == 2 and clear.count(f": {seeds.NOT_RESOLVED} (") == 1, clear
  assert "agrees 2, DISAGREES 0, not resolved at this scale 1" in clear
  wrong = scale_factor._verdict(results((3.0, 1.0, 1.0, 1.0), sd=0.1))
  assert "agrees 0, DISAGREES 3, not resolved at this scale 0" in wrong, wrong
  noisy = scale_factor._verdict(results((1.0, 2.0, 3.0, 4.0), sd=2.0))
  assert "agrees 0, DISAGREES 0, not resolved at this scale 3" in noisy, noisy


def test_summarize_scores_leaves_out_unrecorded_values():
  s = seeds.summarize_scores([{"fd": 1.0, "train_s": None, "reused": True},
                              {"fd": 2.0, "train_s": 3.0, "reused": False}])
  assert set(s) == {"fd"} and seeds.cell(s.get("train_s")) == "n/a"


def test_schedules_verdict_resolves_only_beyond_the_spread():
  def results(fds, sd):  # fds: (linear, cosine, SD leading, SD + ZTSNR + v trailing)
    cells = {(schedules.VARIANTS[0][0], "leading"): fds[0], (schedules.VARIANTS[2][0], "leading"): fds[1],
             (schedules.VARIANTS[3][0], "leading"): fds[2], (schedules.VARIANTS[4][0], "trailing"): fds[3]}
    return [(label, sp, 0.0, {"fd": seeds.summarize([f - sd, f + sd]),
                              "brightness": seeds.summarize([0.1, 0.2])})
            for (label, sp), f in cells.items()]
  clear = schedules._verdict(results((5.0, 3.0, 6.0, 2.0), sd=0.1), (0.13, 0.05))
  assert clear.count(": agrees (") == 2 and "DISAGREES" not in clear, clear
  wrong = schedules._verdict(results((3.0, 5.0, 2.0, 6.0), sd=0.1), (0.13, 0.05))
  assert wrong.count(": DISAGREES (") == 2, wrong
  noisy = schedules._verdict(results((5.0, 3.0, 6.0, 2.0), sd=3.0), (0.13, 0.05))
  assert noisy.count(f": {seeds.NOT_RESOLVED} (") == 2, noisy


def test_prediction_weighting_verdict_resolves_only_beyond_the_spread():
  def results(fds, sd):  # fds: label -> FD per checkpoint (1, 2)
    return [(label, step, {"fd": seeds.summarize([f - sd, f + sd])})
            for label, per_step in fds.items() for step, f in zip((1, 2), per_step)]
  fds = {"eps, simple": (4.0, 2.0), "eps, min-SNR-5": (3.0, 2.05), "x0, simple": (6.0, 5.0),
         "v, simple": (4.0, 2.02)}
  clear = prediction_weighting._verdict(results(fds, sd=0.1), (1, 2))
  assert "eps vs x0 (simple): agrees (eps better)." in clear, clear
  assert f"FD ratio 1.01, {seeds.NOT_RESOLVED} (v ~ eps" in clear, clear
  assert f"1: agrees, 2: {seeds.NOT_RESOLVED}; overall agrees" in clear, clear
  fds.update({"x0, simple": (1.0, 1.0), "v, simple": (4.0, 4.0), "eps, min-SNR-5": (3.0, 3.0)})
  wrong = prediction_weighting._verdict(results(fds, sd=0.1), (1, 2))
  assert "eps vs x0 (simple): DISAGREES" in wrong and "FD ratio 2.00, DISAGREES" in wrong, wrong
  assert "1: agrees, 2: DISAGREES; overall mixed" in wrong, wrong
  noisy = prediction_weighting._verdict(results(fds, sd=5.0), (1, 2))
  assert "agrees" not in noisy and "DISAGREES" not in noisy, noisy


def test_downsampling_verdict_resolves_only_beyond_the_spread():
  def results(fd, img_s, sd):  # per f in (1, 4, 8)
    return [{"f": f, "s": {"fd": seeds.summarize([a - sd, a + sd]),
                           "throughput": seeds.summarize([t - sd, t + sd])}}
            for f, a, t in zip((1, 4, 8), fd, img_s)]
  clear = downsampling._verdict(results((9.0, 2.0, 3.0), (1.0, 5.0, 9.0), sd=0.1))
  assert "LDM-4 vs pixel-like LDM-1: FD 2.000 ± 0.141 vs 9.000 ± 0.141: agrees" in clear, clear
  assert "LDM-8 over LDM-1: 9.0x: agrees" in clear, clear
  wrong = downsampling._verdict(results((1.0, 2.0, 3.0), (1.0, 1.5, 2.0), sd=0.1))
  assert wrong.count(": DISAGREES (") == 2, wrong  # LDM-1 best; 2x < 2.7x
  noisy = downsampling._verdict(results((3.0, 2.0, 3.0), (1.0, 5.0, 9.0), sd=2.0))
  assert noisy.count(f": {seeds.NOT_RESOLVED} (") == 2, noisy
