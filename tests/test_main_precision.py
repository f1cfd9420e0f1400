"""bfloat16 training through the command line: `--config.model.dtype=bfloat16` (and the
discriminator's) trains both stages with float32 parameters, and the losses of the first steps
stay close to the float32 run's."""

import numpy as np
import pytest

from tests import cli_runs

STEPS = 4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  ae_dir = cli_runs.tiny_autoencoder_export(str(tmp_path_factory.mktemp("frozen_ae")))
  out = {}
  stages = {"autoencoder": ("--config.disc.dtype=bfloat16",),
            "latent_diffusion": (f"--config.first_stage.workdir={ae_dir}",)}
  for stage, extra in stages.items():
    for dtype in ("float32", "bfloat16"):
      workdir = str(tmp_path_factory.mktemp(f"{stage}_{dtype}"))
      flags = [f"--config={cli_runs.TINY}:{stage}", f"--workdir={workdir}",
               f"--config.train.num_steps={STEPS}", f"--config.model.dtype={dtype}"]
      flags += [f for f in extra if dtype == "bfloat16" or "dtype" not in f]
      out[stage, dtype] = workdir
      out["log", stage, dtype] = cli_runs.run(*flags)[0]
  return out


@pytest.mark.parametrize("stage", ["autoencoder", "latent_diffusion"])
def test_bfloat16_training_stays_close_to_float32(runs, stage):
  f32, bf16 = cli_runs.logged(runs[stage, "float32"]), cli_runs.logged(runs[stage, "bfloat16"])
  assert sorted(f32) == sorted(bf16) == list(range(1, STEPS + 1))
  # Same data, noise and initial (float32) parameters; bfloat16 rounds activations to 8 significand
  # bits (2^-9 relative), so over a few steps the losses agree to well under 1% (measured: at most
  # 0.5% for the autoencoder, whose GAN term switches on at step 3, and 0.03% for the LDM); 3%
  # bounds that with margin while a loss from different data, noise or a broken cast fails.
  rel = [abs(bf16[s] - f32[s]) / abs(f32[s]) for s in f32]
  assert max(rel) < 0.03, rel
  assert bf16 != f32  # the bfloat16 run really ran in bfloat16
  # Parameters (and so optimizer state and EMA) stay float32.
  params = cli_runs.exported_params(runs[stage, "bfloat16"], "ema_params")
  assert {v.dtype for v in params.values()} == {np.dtype(np.float32)}


def test_bad_precision_value_fails_before_training(tmp_path):
  codes, outs = cli_runs.wait(cli_runs.start(
      f"--config={cli_runs.TINY}:autoencoder", f"--workdir={tmp_path}", "--config.model.remat=sometimes"))
  assert codes[0] != 0 and "remat='sometimes'; valid choices: none, full, dots, dots_no_batch" in outs[0]
  assert not (tmp_path / "checkpoints").exists()


def test_sample_command_draws_a_grid_with_the_run_config_settings(runs, tmp_path):
  out = tmp_path / "grid.png"
  outs = cli_runs.run("sample", f"--workdir={runs['latent_diffusion', 'float32']}", "--labels=3,7",
                      "--per_label=2", f"--out={out}")
  from PIL import Image  # pylint: disable=import-outside-toplevel
  grid = np.asarray(Image.open(out))
  assert grid.shape == (2 * 32, 2 * 32)  # 2 rows (labels 3, 7) of 2 grayscale 32x32 samples
  assert f"wrote {out}" in outs[0]
  cli_runs.run("sample", f"--workdir={runs['latent_diffusion', 'float32']}", "--per_label=1", f"--out={out}")
  assert np.asarray(Image.open(out)).shape == (10 * 32, 32)  # no --labels: one row per class


def test_runs_moved_together_still_load_and_first_stage_workdir_points_elsewhere(runs, tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  from ldm_jax.pipeline import LatentDiffusionPipeline, loading  # pylint: disable=import-outside-toplevel
  ldm = runs["latent_diffusion", "float32"]
  with open(os.path.join(ldm, "export", "metadata.json"), encoding="utf-8") as f:
    meta = json.load(f)
  ae = os.path.normpath(os.path.join(ldm, meta["first_stage_workdir"]))
  assert not os.path.isabs(meta["first_stage_workdir"]) and os.path.isdir(os.path.join(ae, "export"))
  # Both runs copied to another disk / machine, keeping their relative places: the copy loads the
  # copied first stage.
  moved = tmp_path / "moved"
  for d in (ldm, ae):
    shutil.copytree(os.path.join(d, "export"), moved / os.path.basename(d) / "export")
  moved_ldm = str(moved / os.path.basename(ldm))
  assert loading.first_stage_dir(moved_ldm, meta) == os.path.normpath(str(moved / os.path.basename(ae)))
  pipe = LatentDiffusionPipeline.from_workdir(moved_ldm)
  assert pipe.latent_shape == (32, 32, 2) and pipe.num_classes == 10
  # The LDM run alone, its first stage nowhere to be found: a clear error, then first_stage_workdir=.
  alone = tmp_path / "alone" / "ldm"
  shutil.copytree(os.path.join(ldm, "export"), alone / "export")
  meta.pop("first_stage_workdir_absolute")
  (alone / "export" / "metadata.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="not where the run recorded it .*first_stage_workdir="):
    LatentDiffusionPipeline.from_workdir(str(alone))
  pipe = LatentDiffusionPipeline.from_workdir(str(alone), first_stage_workdir=str(moved / os.path.basename(ae)))
  assert pipe.image_shape == (32, 32, 1)


def test_a_short_run_prints_a_short_log_and_a_config_mistake_one_line(runs, tmp_path):
  log = runs["log", "latent_diffusion", "float32"].splitlines()
  # Parameter count / devices / start step, the progress bar, the summary; no library INFO lines
  # (orbax, jax) unless --verbosity asks for them.
  assert len(log) < 40 and not any(line[:1] == "I" and line[1:5].isdigit() for line in log), log
  assert any(line.startswith("params: ") for line in log) and log[-1].startswith("{'steps': 4")
  codes, outs = cli_runs.wait(cli_runs.start(
      f"--config={cli_runs.TINY}:autoencoder", f"--workdir={tmp_path}", "--config.parallel.mode=pmapp"))
  last = outs[0].strip().splitlines()[-1]
  assert codes[0] != 0 and "Traceback" not in outs[0]
  assert last.startswith("ldm_jax.main train: error:") and "'pmapp'" in last and "pmap" in last, outs[0]
