"""Run bookkeeping of the ablations' short training runs (experiments/ablations/training.py): a
finished run is reused, one trained past the requested steps is refused."""

import json

import pytest

from experiments.ablations import config_overrides
from experiments.ablations import report
from experiments.ablations import training
from experiments.configs import mnist_autoencoder


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


def test_train_run_records_commit_and_adds_a_resumed_runs_earlier_time(tmp_path, monkeypatch):
  """A run resumed from a shorter one (run.train itself resumes from its checkpoints) records the
  wall time of all its stretches and the commit that trained it."""
  from ldm_jax.stages import run  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(run, "train", lambda config, workdir: {"steps": config.train.num_steps})
  (tmp_path / "eval.json").write_text(json.dumps({"steps": 3, "train_seconds": 5.0}))
  resumed = training.train_run(mnist_autoencoder.get_config, str(tmp_path), {"train.num_steps": 6})
  assert not resumed["reused"] and 5.0 <= resumed["seconds"] < 6.0
  saved = json.loads((tmp_path / "eval.json").read_text())
  assert saved["steps"] == 6 and saved["train_seconds"] == resumed["seconds"]
  assert saved["commit"] == training.git_commit() != ""
  (tmp_path / "eval.json").write_text(json.dumps({"steps": 3}))  # earlier stretch's time unknown
  assert training.train_run(mnist_autoencoder.get_config, str(tmp_path),
                            {"train.num_steps": 6})["seconds"] is None


def test_ldm_run_overrides_of_the_cpu_budget(tmp_path, monkeypatch):
  """cpu LDM cells: 2000 steps, EMA decay 0.999, a checkpoint every 500 steps (a run cut short in
  one session resumes in the next); tiny: EMA 0.99, one checkpoint at the end."""
  seen = []
  monkeypatch.setattr(training, "train_run", lambda get_config, workdir, o: seen.append(o))
  training.ldm_run(str(tmp_path), str(tmp_path), "cpu", seed=3)
  training.ldm_run(str(tmp_path), str(tmp_path), "cpu", steps=300)
  training.ldm_run(str(tmp_path), str(tmp_path), "tiny")
  cpu, short, tiny = seen
  assert (cpu["train.num_steps"], cpu["train.ema_decay"], cpu["train.save_every"], cpu["seed"]) == (
      2000, 0.999, 500, 3)
  assert short["train.save_every"] == 300
  assert (tiny["train.ema_decay"], tiny["train.save_every"]) == (0.99, tiny["train.num_steps"])
  assert training.TRAIN_SCALES["cpu"]["per_class"] * 10 == 1000 and training.TRAIN_SCALES["cpu"]["use_ema"]


def test_autoencoder_run_overrides_of_the_scale(tmp_path, monkeypatch):
  """Autoencoder cells: the scale's ae_steps at its peak learning rate ae_lr with cosine decay over
  the run (or `steps`, e.g. the convergence check's 2x), keys the config accepts."""
  seen = []
  monkeypatch.setattr(training, "train_run", lambda get_config, workdir, o: seen.append(o))
  training.autoencoder_run(str(tmp_path), "cpu", seed=2)
  training.autoencoder_run(str(tmp_path), "cpu", steps=1200, kind="VQ")
  cpu, doubled = seen
  assert (cpu["train.num_steps"], cpu["optim.learning_rate"], cpu["optim.decay_steps"],
          cpu["seed"]) == (600, 1.5e-3, 600, 2)
  assert (doubled["train.num_steps"], doubled["optim.decay_steps"],
          doubled["optim.learning_rate"]) == (1200, 1200, 1.5e-3)
  for o in (cpu, doubled):
    config = config_overrides.apply_overrides(mnist_autoencoder.get_config(), o)
    assert config.optim.learning_rate == 1.5e-3 and config.train.num_steps == o["train.num_steps"]


def test_ldm_run_trains_the_config_it_is_given(tmp_path, monkeypatch):
  """get_config picks the config (mnist_semantic's for semantic synthesis); the scale's overrides
  apply to it all the same, and they fit its locked keys."""
  from experiments.configs import mnist_ldm  # pylint: disable=import-outside-toplevel
  from experiments.configs import mnist_semantic  # pylint: disable=import-outside-toplevel
  seen = []
  monkeypatch.setattr(training, "train_run",
                      lambda get_config, workdir, o: seen.append((get_config, o)))
  training.ldm_run(str(tmp_path), str(tmp_path), "cpu", get_config=mnist_semantic.get_config)
  training.ldm_run(str(tmp_path), str(tmp_path), "cpu")
  (semantic, o), (default, o_default) = seen
  assert semantic is mnist_semantic.get_config and default is mnist_ldm.get_config
  assert o == o_default
  config = config_overrides.apply_overrides(semantic(), o)
  assert config.concat.degradation == "segmentation_pairs" and config.train.num_steps == 2000


def test_check_first_stage_refuses_a_run_on_another_autoencoder(tmp_path):
  training.check_first_stage(str(tmp_path / "none"), "/some/ae")  # nothing trained yet: no error
  (tmp_path / "export").mkdir()
  (tmp_path / "export" / "config.json").write_text('{"first_stage": {"workdir": "/some/ae"}}')
  training.check_first_stage(str(tmp_path), "/some/ae/")  # the same directory
  with pytest.raises(ValueError, match=r"trained on the autoencoder '/some/ae', not on "
                     r"'/other/ae' \(--ae\); .* to train an LDM-SR on this one"):
    training.check_first_stage(str(tmp_path), "/other/ae", "LDM-SR")


def test_a_stretch_killed_before_its_end_counts_up_to_its_last_checkpoint(tmp_path, monkeypatch):
  """A cell killed mid-training (its STRETCH file left behind) and then resumed records the killed
  stretch's time up to its last checkpoint beside the resumed one's, and removes the file."""
  import os  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  from ldm_jax.stages import run  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(run, "train", lambda config, workdir: {"steps": config.train.num_steps})
  start = time.time() - 100.0
  (tmp_path / training.STRETCH).write_text(json.dumps({"start": start, "earlier": 5.0}))
  (tmp_path / "checkpoints" / "300").mkdir(parents=True)
  os.utime(tmp_path / "checkpoints" / "300", (start + 40.0, start + 40.0))  # saved 40 s in
  resumed = training.train_run(mnist_autoencoder.get_config, str(tmp_path), {"train.num_steps": 6})
  assert 45.0 <= resumed["seconds"] < 46.0  # 5 earlier + 40 killed + this stretch's
  assert not (tmp_path / training.STRETCH).exists()
  assert json.loads((tmp_path / "eval.json").read_text())["train_seconds"] == resumed["seconds"]
  # Killed before any checkpoint: nothing of that stretch is kept, so nothing is added.
  (tmp_path / "eval.json").unlink()
  (tmp_path / training.STRETCH).write_text(json.dumps({"start": time.time() - 50.0, "earlier": 0.0}))
  (tmp_path / "checkpoints" / "300").rmdir()
  assert training.train_run(mnist_autoencoder.get_config, str(tmp_path),
                            {"train.num_steps": 6})["seconds"] < 1.0
