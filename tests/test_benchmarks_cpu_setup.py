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


def test_programs_are_checked_and_the_table_shows_only_the_timed_ones(capsys):
  with pytest.raises(SystemExit):
    cpu_setup.parse_args(["--programs=ae,vae"])
  err = capsys.readouterr().err
  assert "['vae']" in err and "'sample'" in err
  args = cpu_setup.parse_args(["--setups=auto_2dev,ynn_2dev", "--programs=ae"])
  assert args.program_list == ["ae"] and args.names == ["ynn_2dev", "auto_2dev"]
  text = cpu_setup.table({"ynn_2dev": {"devices": 2, "ae_compile": 4.0, "ae_step": 1.0},
                          "auto_2dev": {"devices": 2, "ae_compile": 2.0, "ae_step": 0.5}})
  rows = text.splitlines()
  assert rows[0] == "| setup | devices | XLA_FLAGS | ae_compile (s) | ae_step (s) |"
  assert rows[3] == ("| auto_2dev | 2 | (default); per-stage compiler options (auto) | "
                     "2.000 (0.50x) | 0.500 (0.50x) |")
