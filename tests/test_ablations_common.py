"""Flag parsing and run bookkeeping of the ablation scripts (experiments/ablations/cli.py and
training.py, and the scripts' own flag parsers): bad values fail before anything trains, with the
valid choices named."""

import json

import pytest

from experiments.ablations import autoencoders
from experiments.ablations import cli
from experiments.ablations import prediction_weighting
from experiments.ablations import report
from experiments.ablations import scale_factor
from experiments.ablations import training
from experiments.configs import mnist_autoencoder


def test_pick_variants_all_subset_and_always():
  variants = prediction_weighting.VARIANTS
  assert cli.pick_variants("", variants) == list(variants)
  assert cli.pick_variants("4,1", variants) == [variants[1], variants[4]]  # index order
  sf = scale_factor.VARIANTS
  assert cli.pick_variants("2", sf, always=(0,)) == [sf[0], sf[2]]


@pytest.mark.parametrize("spec, match", [("6", r"no variant \[6\]"), ("-1", r"no variant \[-1\]"),
                                         ("x0", "not a comma-separated list")])
def test_pick_variants_bad_index_lists_choices(spec, match):
  with pytest.raises(ValueError, match=match) as e:
    cli.pick_variants(spec, prediction_weighting.VARIANTS)
  assert "0: eps, simple" in str(e.value) and "5: v, min-SNR-5" in str(e.value)


def test_int_list():
  assert cli.int_list("300,600,1200", "checkpoints") == (300, 600, 1200)
  for bad in ("600,300", "0,1", "1,1", "1,a"):
    with pytest.raises(ValueError, match="--checkpoints="):
      cli.int_list(bad, "checkpoints")


def test_parse_grid():
  assert autoencoders.parse_grid("KL:4:3,VQ:8:4") == [("KL", 4, 3), ("VQ", 8, 4)]
  with pytest.raises(ValueError, match="valid kinds: KL, VQ"):
    autoencoders.parse_grid("AE:4:3")
  with pytest.raises(ValueError, match="f = 3 is not one of"):
    autoencoders.parse_grid("KL:3:3")
  with pytest.raises(ValueError, match="not kind:f:c"):
    autoencoders.parse_grid("KL:4")
  with pytest.raises(ValueError, match="c must be at least 1"):
    autoencoders.parse_grid("KL:4:0")


def test_train_run_refuses_a_run_past_the_requested_steps(tmp_path):
  """A workdir trained further than asked (e.g. an earlier run to a later checkpoint) is not
  silently scored as if it were the requested step."""
  (tmp_path / "eval.json").write_text(json.dumps({"steps": 1200, "train_seconds": 5.0}))
  with pytest.raises(ValueError, match="already trained to 1200 steps, past the 300"):
    training.train_run(mnist_autoencoder.get_config, str(tmp_path), {"train.num_steps": 300})
  reused = training.train_run(mnist_autoencoder.get_config, str(tmp_path), {"train.num_steps": 1200})
  assert reused["reused"] and reused["seconds"] == 5.0


def test_train_run_reused_without_recorded_time_reports_none(tmp_path):
  (tmp_path / "eval.json").write_text(json.dumps({"steps": 7}))
  reused = training.train_run(mnist_autoencoder.get_config, str(tmp_path), {"train.num_steps": 7})
  assert reused["seconds"] is None and report.fmt(reused["seconds"]) == "n/a"


def test_autoencoder_verdict_separates_direction_and_size():
  row = lambda kind, f, c, psnr: (kind, f, c, psnr, 0.9, 1.0, 0.9, 1.0, 1.0, 1.0)
  close = autoencoders._verdict([row("KL", 4, 3, 24.0), row("VQ", 4, 3, 23.5)])  # pylint: disable=protected-access
  assert "(gap 0.50 dB): agrees (KL slightly better)" in close
  far = autoencoders._verdict([row("KL", 4, 3, 24.0), row("VQ", 4, 3, 18.0)])  # pylint: disable=protected-access
  assert "agrees in direction (KL better), not in size" in far and "1.1 dB" in far
  worse = autoencoders._verdict([row("KL", 8, 4, 20.0), row("VQ", 8, 4, 21.0)])  # pylint: disable=protected-access
  assert "DISAGREES" in worse
