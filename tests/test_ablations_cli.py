"""Flag parsing of the ablation scripts (experiments/ablations/cli.py): bad values fail before
anything trains, with the valid choices named."""

import pytest

from experiments.ablations import cli
from experiments.ablations import prediction_weighting
from experiments.ablations import scale_factor


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
