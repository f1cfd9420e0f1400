"""experiments/benchmarks/cpu_setup.py: its choices, errors and table (the timed runs themselves
compile the main job's three programs per setup, minutes each, so the suite does not run them)."""

import pytest

from experiments.benchmarks import cpu_setup


def test_unknown_setup_is_named_with_the_valid_choices(capsys):
  with pytest.raises(SystemExit):
    cpu_setup.parse_args(["--setups=ynn_2dev,fast"])
  err = capsys.readouterr().err
  assert "['fast']" in err and "eigen_1dev" in err


def test_setups_keep_their_order_and_the_table_gives_ratios_to_the_baseline():
  args = cpu_setup.parse_args(["--setups=eigen_1dev,ynn_2dev"])
  assert args.names == ["ynn_2dev", "eigen_1dev"]
  base = {f: 2.0 for f in cpu_setup.FIGURES}
  other = {f: 1.0 for f in cpu_setup.FIGURES}
  text = cpu_setup.table({"ynn_2dev": {"devices": 2, **base}, "eigen_1dev": {"devices": 1, **other}})
  rows = text.splitlines()
  assert len(rows) == 4 and rows[2].startswith("| ynn_2dev | 2 | (default) | 2.000 |")
  assert rows[3].count("(0.50x)") == len(cpu_setup.FIGURES)
  assert cpu_setup.YNN_OFF in rows[3]
