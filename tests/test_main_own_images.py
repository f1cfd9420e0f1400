"""The command line for a new user: the README's "Train on your own images" commands run as written
on a generated folder of PNGs (tiny networks and a few steps appended), `--help`, `--print_config`,
a misspelt config key, and every config carrying every data key."""

import json
import os
import re
import shlex

import numpy as np
import pytest
from PIL import Image

from experiments.configs import mnist_autoencoder, mnist_ldm, paper_autoencoder, paper_ldm
from ldm_jax import data
from ldm_jax import xla_cpu
from tests import cli_runs

CLASSES, PER_CLASS = ("circles", "squares"), 8
# Appended to the README's commands: tiny networks, 16x16 images, 2 steps (later flags win).
COMMON = ["--config.data.image_size=16", "--config.train.num_steps=2",
          "--config.train.global_batch_size=8", "--config.train.save_every=0",
          "--config.train.log_every=1", "--config.train.image_every=0",
          "--config.optim.decay_steps=10", "--config.optim.warmup_steps=1"]
TINY = {
    "autoencoder": ["--config.model.block_out_channels=(8,)", "--config.model.z_channels=2",
                    "--config.model.norm_groups=4", "--config.model.mid_attention=False",
                    "--config.disc.base_channels=8", "--config.disc.num_layers=1",
                    "--config.loss.disc_start=1"],
    "latent_diffusion": ["--config.model.block_out_channels=(8,)",
                         "--config.model.layers_per_block=1",
                         "--config.model.down_block_types=('DownBlock2D',)",
                         "--config.model.up_block_types=('UpBlock2D',)",
                         "--config.model.norm_num_groups=4", "--config.model.attention_head_dim=8",
                         "--config.diffusion.num_timesteps=100"],
    "sample": ["--per_label=2", "--method=ddim", "--num_steps=2"],
}


def readme_commands():
  """The README's own-images commands as argument lists (after `python -m ldm_jax.main`)."""
  with open(os.path.join(cli_runs.ROOT, "README.md"), encoding="utf-8") as f:
    block = re.search(r"<!-- own-images -->\n```\n(.*?)```", f.read(), re.S).group(1)
  lines = [l for l in block.replace("\\\n", " ").splitlines() if l and not l.startswith("#")]
  commands = [shlex.split(l) for l in lines]
  assert all(c[:3] == ["python", "-m", "ldm_jax.main"] for c in commands), commands
  return [c[3:] for c in commands]


def write_folder(root):
  """CLASSES subfolders of PER_CLASS RGB PNGs (20x24: cropped to 20x20, resized to 16x16)."""
  rng = np.random.default_rng(0)
  for label, name in enumerate(CLASSES):
    os.makedirs(root / name)
    for i in range(PER_CLASS):
      image = rng.integers(0, 256, (20, 24, 3), np.uint8) // 2 + 100 * label
      Image.fromarray(image.astype(np.uint8)).save(root / name / f"{i}.png")


@pytest.fixture(scope="module")
def own_runs(tmp_path_factory):
  """Runs the README's commands; the unconditional LDM (the one without labels) only resolves its
  config (--print_config): each training run compiles its own programs (~100 s of CPU here), and
  the class-conditional run covers every part the unconditional one has."""
  tmp = tmp_path_factory.mktemp("own")
  write_folder(tmp / "my_images")
  outs = []
  for args in readme_commands():
    args = [a.replace("my_images", str(tmp / "my_images")).replace("=runs/", f"={tmp}/runs/")
            for a in args]
    unconditional = any(a.endswith("/runs/ldm") for a in args)
    if args[0] == "sample":
      if unconditional:
        continue
      args = [a.replace("--out=", f"--out={tmp}/") for a in args] + TINY["sample"]
    else:
      stage = "autoencoder" if "mnist_autoencoder" in " ".join(args) else "latent_diffusion"
      args += TINY[stage] + COMMON + (["--print_config"] if unconditional else [])
    outs.append(cli_runs.run(*args)[0])
  return tmp, outs


def test_readme_own_images_commands_train_both_stages_and_sample(own_runs):
  tmp, outs = own_runs
  assert len(outs) == 4  # autoencoder, LDM config, class-conditional LDM, its samples
  with open(tmp / "runs" / "ae" / "eval.json", encoding="utf-8") as f:
    summary = json.load(f)
  # The "test" PSNR is measured on held-out files only: ceil(0.1 x 8) = 1 per class.
  assert summary["num_images"] == len(CLASSES) and np.isfinite(summary["psnr"])
  assert "2 of 16 images, split by file hash with holdout_fraction=0.1" in summary["eval_data"]
  assert "'eval_data': " in outs[0].splitlines()[-1]  # the printed summary names it too
  # Each stage's step compiles with its own CPU convolution back end (ldm_jax/xla_cpu.py; the
  # runs have 2 simulated devices and no convolution flags in XLA_FLAGS).
  assert f"| convolutions: {xla_cpu.resolve('auto', 'autoencoder', local_devices=2)} |" in outs[0]
  assert "| convolutions: ynnpack |" in outs[2]
  assert "conditioning: none" in outs[1] and not (tmp / "runs" / "ldm").exists()
  with open(tmp / "runs" / "ldm_classes" / "export" / "config.json", encoding="utf-8") as f:
    assert json.load(f)["data"]["channels"] == 3
  per_class = np.asarray(Image.open(tmp / "samples_per_class.png"))
  assert per_class.shape == (len(CLASSES) * 16, 2 * 16, 3)  # one row per subfolder


def test_tensorboard_reads_the_runs_event_files(own_runs):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  tmp, _ = own_runs
  events = event_accumulator.EventAccumulator(str(tmp / "runs" / "ae"))
  events.Reload()
  tags = events.Tags()["scalars"]
  assert tags and [e.step for e in events.Scalars(tags[0])] == [1, 2], tags


def test_every_config_carries_every_data_key():
  configs = [mnist_autoencoder.get_config(), mnist_ldm.get_config()]
  configs += [paper_ldm.get_config(v) for v in paper_ldm.VARIANTS]
  configs += [paper_autoencoder.get_config(v) for v in paper_autoencoder.VARIANTS]
  for c in configs:
    assert set(c.data) == set(data.SPEC_DEFAULTS) | {"eval_split"}, c.data


def test_help_shows_whole_example_commands_and_the_config_files():
  codes, outs = cli_runs.wait(cli_runs.start("--help"))
  lines = outs[0].splitlines()
  assert "experiments/configs/mnist_autoencoder.py" in outs[0], (codes, outs)  # absl: exit 1
  assert "--print_config" in outs[0]
  commands = [i for i, l in enumerate(lines) if l.strip().startswith("python -m ldm_jax.main")]
  assert len(commands) >= 4
  for i in commands:  # every continued line ends in a backslash, the next one is indented
    while lines[i].endswith("\\"):
      i += 1
      assert lines[i].startswith("      --"), lines[i]
  assert not any("       --" in l for l in lines)  # no continuation joined into one line


def test_print_config_prints_the_overridden_config_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  outs = cli_runs.run(f"--config={cli_runs.TINY}:autoencoder", f"--workdir={workdir}",
                      "--config.data.source=folder", "--config.data.data_dir=my_images",
                      "--print_config")
  assert "data_dir: my_images" in outs[0] and "source: folder" in outs[0]
  assert "holdout_fraction: 0.1" in outs[0] and not workdir.exists()


def test_misspelt_config_key_is_one_line_with_the_close_match(tmp_path):
  codes, outs = cli_runs.wait(cli_runs.start(
      f"--config={cli_runs.TINY}:autoencoder", f"--workdir={tmp_path / 'run'}",
      "--config.train.num_stpes=5"))
  lines = outs[0].strip().splitlines()
  assert codes[0] == 2 and len(lines) == 1, outs[0]
  assert lines[0].startswith("ldm_jax.main: error: unknown config key 'train.num_stpes'")
  assert "did you mean 'train.num_steps'?" in lines[0]
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("classes", [None, ("a", "b", "c")])
def test_class_conditional_run_checks_the_folder_labels_before_compiling(tmp_path, classes):
  from ldm_jax.stages import run  # pylint: disable=import-outside-toplevel
  from tests.configs import tiny  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  for i in range(12):
    sub = tmp_path / "images" / (classes[i % 3] if classes else "")
    sub.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (32, 32), np.uint8)).save(sub / f"{i}.png")
  config = tiny.get_config("latent_diffusion")
  config.data.source, config.data.data_dir = "folder", str(tmp_path / "images")
  config.first_stage.workdir = cli_runs.tiny_autoencoder_export(str(tmp_path / "ae"))
  config.first_stage.scale_factor, config.diffusion.num_classes = 1.0, 2
  match = ("has 3 classes \\['a', 'b', 'c'\\] but diffusion.num_classes=2; set "
           "--config.diffusion.num_classes=3" if classes else
           "conditioning='class' needs labels.*--config.diffusion.conditioning=none")
  with pytest.raises(ValueError, match=match):
    run.train(config, str(tmp_path / "ldm"))
  assert not (tmp_path / "ldm" / "checkpoints").exists()
