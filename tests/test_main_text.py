"""The text-conditioned LDM stage through the command line (`python -m ldm_jax.main`), tiny sizes.

tests/configs/tiny.py:text trains on MNIST pairs (32 x 64 canvases with captions) with a jointly
trained 1-layer text encoder, on a mesh of two devices. The same guarantees as the class stage:
parameters (the encoder's included) sharded over an fsdp axis train like replicated ones; kill -9
and a restart resume exactly; the export loads as a pipeline that samples from prompts; the
sampling CLI writes a grid per prompt; mistakes are one line before anything compiles. (Two
processes read disjoint caption shards: tests/data/test_mnist_pairs.py; the multi-process CLI
itself: tests/test_main_distributed.py.)
"""

import os
import signal
import time

import jax
import numpy as np
import pytest
from PIL import Image

from ldm_jax.pipeline import LatentDiffusionPipeline
from tests import cli_runs

STEPS = 6


def _args(workdir, ae_dir, *flags):
  return (f"--config={cli_runs.TINY}:text", f"--workdir={workdir}",
          f"--config.first_stage.workdir={ae_dir}", f"--config.train.num_steps={STEPS}",
          "--config.train.save_every=2", "--config.parallel.mode=mesh", *flags)


def _assert_same_params(a, b, rtol=1e-5):
  assert set(a) == set(b)
  for k in a:
    assert np.max(np.abs(a[k] - b[k])) <= rtol * max(np.max(np.abs(b[k])), 1e-6), k


@pytest.fixture(scope="module")
def reference(ae_dir, tmp_path_factory):
  """One process, two devices, data-parallel mesh: the run the other layouts must reproduce."""
  workdir = str(tmp_path_factory.mktemp("text_ref"))
  cli_runs.run(*_args(workdir, ae_dir))
  return workdir


def test_text_run_exports_unet_encoder_and_tokenizer(reference):
  params = cli_runs.exported_params(reference)
  assert {k.split("'")[1] for k in params} == {"unet", "text_encoder"}
  assert os.path.exists(os.path.join(reference, "export", "tokenizer.json"))
  ema = cli_runs.exported_params(reference, "ema_params")
  # The encoder was trained jointly: its EMA trails its raw weights.
  enc = [k for k in params if k.startswith("['text_encoder']")]
  assert max(np.max(np.abs(params[k] - ema[k])) for k in enc) > 0
  steps = sorted(cli_runs.logged(reference))
  assert steps == list(range(1, STEPS + 1))


def test_fsdp_sharding_changes_nothing(reference, ae_dir, tmp_path):
  fsdp = str(tmp_path / "fsdp")
  cli_runs.run(*_args(fsdp, ae_dir, "--config.parallel.num_fsdp=2"))
  _assert_same_params(cli_runs.exported_params(fsdp), cli_runs.exported_params(reference))


def test_kill_9_then_restart_resumes_exactly(reference, ae_dir, tmp_path):
  workdir = str(tmp_path)
  (proc,) = cli_runs.start(*_args(workdir, ae_dir))
  t0 = time.time()
  ckpt = os.path.join(workdir, "checkpoints")
  while not (os.path.isdir(ckpt) and any(s.isdigit() and int(s) >= 2 for s in os.listdir(ckpt))):
    if proc.poll() is not None or time.time() - t0 > cli_runs.TIMEOUT:
      proc.kill()
      pytest.fail(f"no checkpoint before the run ended: {proc.communicate()[0][-3000:]}")
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -9
  assert not os.path.exists(os.path.join(workdir, "export"))
  cli_runs.run(*_args(workdir, ae_dir))
  _assert_same_params(cli_runs.exported_params(workdir), cli_runs.exported_params(reference), rtol=0)


def test_pipeline_and_sample_cli_take_prompts(reference, tmp_path):
  pipe = LatentDiffusionPipeline.from_workdir(reference)
  assert pipe.text_conditioned and pipe.latent_shape == (32, 64, 2)
  key = jax.random.key(0)
  kw = dict(method="ddim", num_steps=2, guidance_scale=2.0)
  a = pipe.sample(key, 2, prompts=["3 left of 7", "seven right of two"], **kw)
  b = pipe.sample(key, 2, prompts=["3 left of 7", "seven right of two"], **kw)
  c = pipe.sample(key, 2, prompts=["0 left of 1", "one right of zero"], **kw)
  assert a.shape == (2, 32, 64, 1) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert np.any(a != c)  # the prompt reaches the UNet
  out = str(tmp_path / "grid.png")
  cli_runs.run("sample", f"--workdir={reference}", "--prompts=3 left of 7;seven right of two",
               "--per_label=3", "--num_steps=2", "--method=ddim", f"--out={out}")
  grid = np.asarray(Image.open(out))
  rows, cols = 2, 3
  assert grid.shape[0] >= rows * 32 and grid.shape[1] >= cols * 64
  assert grid.shape[0] < rows * 32 + 32 and grid.shape[1] < cols * 64 + 64  # 2 rows of 3


def _cli_error(*args):
  codes, outs = cli_runs.wait(cli_runs.start(*args))
  assert codes[0] not in (0, None), outs[0][-2000:]
  assert "Traceback" not in outs[0], outs[0][-3000:]
  return outs[0]


def test_mistakes_are_one_line_errors_before_anything_compiles(reference, ae_dir, tmp_path):
  w = str(tmp_path / "w")
  out = _cli_error(*_args(w, ae_dir, "--config.text.tokenizer=no_such_tokenizer"))
  assert "text.tokenizer='no_such_tokenizer'" in out and "mnist_pairs" in out
  assert not os.path.exists(w)
  out = _cli_error(*_args(w, ae_dir, "--config.data.name=mnist_embedded",
                          "--config.data.image_size=(32, 32)", "--config.data.eval_split=test"))
  assert "needs captions" in out and "mnist_pairs" in out
  assert not os.path.exists(os.path.join(w, "checkpoints"))
  out = _cli_error(*_args(w, ae_dir, "--config.data.crop=center"))
  assert "data.crop='center'" in out
  out = _cli_error("sample", f"--workdir={reference}", "--labels=1,2")
  assert "text-conditioned" in out and "--prompts" in out
  out = _cli_error("sample", f"--workdir={reference}", "--prompts=3 above 7")
  assert "'above'" in out


def test_frozen_pretrained_encoder_is_loaded_kept_and_exported(ae_dir, tmp_path):
  """SD fine-tuning: a diffusers folder's CLIP tokenizer and text encoder, frozen."""
  from ldm_jax.convert.text_encoders import load_text_encoder  # pylint: disable=import-outside-toplevel
  from tests.pipeline import sd_refs  # pylint: disable=import-outside-toplevel
  folder, _ = sd_refs.tiny_sd_pipeline(tmp_path, "sd1")
  workdir = str(tmp_path / "frozen")
  cli_runs.run(*_args(workdir, ae_dir, f"--config.text.pretrained={folder}",
                      "--config.text.train_encoder=False", "--config.train.num_steps=2"))
  _, want = load_text_encoder(os.path.join(folder, "text_encoder"))
  want = {"['text_encoder']" + jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(want)}
  for name in ("params", "ema_params"):
    got = cli_runs.exported_params(workdir, name)
    assert {k for k in got if k.startswith("['text_encoder']")} == set(want)
    for k, v in want.items():
      np.testing.assert_array_equal(got[k], v)  # loaded, never updated
  pipe = LatentDiffusionPipeline.from_workdir(workdir)
  assert pipe.prompt_encoder.module.width == sd_refs.TEXT_DIM
  assert pipe.prompt_encoder.tokenizer.padding["length"] == 12  # text.max_length of the tiny config
  x = pipe.sample(jax.random.key(0), 1, prompts="a photo of a cat", method="ddim", num_steps=2)
  assert x.shape == (1, 32, 64, 1)


def test_frozen_random_encoder_is_exported_as_plain_arrays(ae_dir, tmp_path):
  """A frozen encoder of random init (the ablation) rides in the train state's `extra`, sharded by
  its logical axis names, and is exported without its nn.LogicallyPartitioned boxes (an export
  once held them as {"value": x} dicts), equal to the init the run made."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ldm_jax.stages import builders  # pylint: disable=import-outside-toplevel
  from tests.configs import tiny  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "frozen_random")
  cli_runs.run(*_args(workdir, ae_dir, "--config.text.train_encoder=False",
                      "--config.train.num_steps=2", "--config.parallel.num_fsdp=2"))
  config = tiny.get_config("text")
  tokenizer, encoder, _ = builders.text_conditioner(config.text)
  ids = jnp.zeros((1, tokenizer.padding["length"]), jnp.int32)
  init = nn.meta.unbox(encoder.init(jax.random.key(config.seed + 1), ids)["params"])  # as run.py
  want = {"['text_encoder']" + jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(init)}
  for name in ("params", "ema_params"):
    got = cli_runs.exported_params(workdir, name)
    assert not [k for k in got if "['value']" in k or "names" in k], name
    assert {k for k in got if k.startswith("['text_encoder']")} == set(want), name
    for k, v in want.items():
      np.testing.assert_array_equal(got[k], v)  # never updated
