"""The concat-conditioned (super-resolution, LDM-SR) stage through the command line, tiny sizes.

tests/configs/tiny.py:sr trains 2 steps on MNIST on a random-weight f = 1 first stage (32x32x1 ->
32x32x2): c = bicubic_x4(x) (8x8) resized to the 32x32 latent grid and concatenated to z_t. The
export loads as a pipeline that knows it is concat-conditioned; `upscale` runs the same c the loss
built, is compiled once per shape, and refuses bad inputs before compiling; the sampling CLI says to
use `upscale` in one line. A hybrid run (concat.class_labels) also reads the class label.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax import samplers
from ldm_jax.data import to_float
from ldm_jax.diffusion import concat
from ldm_jax.models.unet import concat_conditioning
from ldm_jax.pipeline import LatentDiffusionPipeline
from ldm_jax.train import metrics as metrics_lib
from tests import cli_runs

STEPS = 2
BACKEND_COMPILES = cli_runs.BACKEND_COMPILES
KW = dict(method="ddim", num_steps=2)


@pytest.fixture(scope="module")
def sr_run(ae_dir, tmp_path_factory):
  """2 steps with a preview at step 2 (held-out x4 inputs / outputs / originals)."""
  workdir = str(tmp_path_factory.mktemp("sr"))
  cli_runs.run(f"--config={cli_runs.TINY}:sr", f"--workdir={workdir}",
               f"--config.first_stage.workdir={ae_dir}", f"--config.train.num_steps={STEPS}",
               "--config.train.image_every=2", "--config.concat.p_drop=0.1")
  return workdir


@pytest.fixture(scope="module")
def pipe(sr_run):
  return LatentDiffusionPipeline.from_workdir(sr_run, max_batch=4)


@pytest.fixture(scope="module")
def digits():
  """Held-out-like images: 3 smooth blobs uint8 [3, 32, 32, 1] and their x4 inputs [3, 8, 8, 1]."""
  x = cli_runs.blob_images(3)
  low = np.asarray(concat.bicubic_x4(None, to_float(x)))
  return x, np.clip(np.round((low + 1) * 127.5), 0, 255).astype(np.uint8)


def test_run_trains_exports_and_previews(sr_run):
  assert sorted(cli_runs.logged(sr_run)) == list(range(1, STEPS + 1))
  params = cli_runs.exported_params(sr_run)
  assert params["['conv_in']['kernel']"].shape == (3, 3, 2 + 1, 8)  # [z_t (2), c (1)]
  assert params["['conv_out']['kernel']"].shape == (3, 3, 8, 2)
  shapes = {r["step"]: r["upscaled_shape"] for r in metrics_lib.read_jsonl(sr_run)
            if "upscaled_shape" in r}
  assert shapes == {2: [96, 256, 1]}  # rows D(x), samples, x of 8 held-out 32x32 digits


def test_from_workdir_knows_the_model_is_concat_conditioned(pipe):
  assert pipe.conditioning == "concat" and pipe.concat_degradation == "bicubic_x4"
  assert pipe.low_res_shape == (8, 8, 1) and pipe.image_shape == (32, 32, 1)
  assert pipe.latent_shape == (32, 32, 2) and pipe.unet.in_channels == 3
  assert pipe.num_classes is None and not pipe.text_conditioned


def test_upscale_is_the_sampler_on_the_training_conditioning(pipe, digits):
  """upscale's latents equal `samplers.sample` of eps_theta([z_t, c], t), c built from the
  full-size images by the loss's function (`concat.conditioning_map`), from the same noise."""
  x, low = digits
  rng = jax.random.key(3)
  z = pipe.upscale(rng, low, output="latent", **KW)
  c = concat.conditioning_map("bicubic_x4", None, to_float(x), (32, 32))
  # The uint8 round trip of the low-res images moves them by at most half a grey level (1 / 255),
  # c by at most that times the bicubic upsampling's absolute weight sum (< 1.125^2 in 2-D).
  c_low = concat.to_latent_grid(to_float(low), (32, 32))  # what upscale gets: the uint8 inputs
  assert np.abs(np.asarray(c_low) - np.asarray(c)).max() <= 1.125 ** 2 / 255
  model_fn = lambda v, t: pipe.unet.apply({"params": pipe.unet_params}, concat_conditioning(v, c_low), t)
  ref = jax.jit(lambda v: samplers.sample(model_fn, pipe.schedule, v, rng, prediction_type=pipe.prediction_type,
                                          **KW, **pipe.sampler_grid))(pipe.initial_noise(rng, 3))
  np.testing.assert_allclose(z, ref, rtol=1e-4, atol=1e-4)


def test_upscale_shapes_determinism_and_no_recompile(pipe, digits):
  _, low = digits
  a = pipe.upscale(jax.random.key(0), low, **KW)
  assert a.shape == (3, 32, 32, 1) and a.dtype == np.uint8
  f = pipe.upscale(jax.random.key(0), low, output="float", **KW)
  assert f.shape == (3, 32, 32, 1) and f.dtype == np.float32
  traces, compiles = dict(pipe.trace_counts), len(BACKEND_COMPILES)
  other = low[::-1].copy()
  b = pipe.upscale(jax.random.key(0), other, **KW)  # new images of the same shape
  c = pipe.upscale(jax.random.key(0), low.astype(np.float32) / 127.5 - 1, **KW)  # floats
  d = pipe.upscale(jax.random.key(1), low, guidance_scale=2.0, **KW)  # guided against zeros
  assert dict(pipe.trace_counts) == traces and len(BACKEND_COMPILES) == compiles
  assert traces["denoise"] == 1 and traces["concat_map"] == 1
  np.testing.assert_array_equal(a, pipe.upscale(jax.random.key(0), low, **KW))
  np.testing.assert_array_equal(a, c)
  assert np.abs(a[0].astype(int) - b[0].astype(int)).max() > 0  # the low-res image matters
  assert d.shape == a.shape


def test_bad_inputs_raise_before_compiling(pipe, digits):
  _, low = digits
  traces = dict(pipe.trace_counts)
  with pytest.raises(ValueError, match=r"low_res_images must have shape \[N, 8, 8, 1\] \(the "
                     r"model's 32x32 images downsampled x4 by 'bicubic_x4'\), got \(3, 16, 16, 1\)"):
    pipe.upscale(jax.random.key(0), np.zeros((3, 16, 16, 1), np.uint8), **KW)
  with pytest.raises(ValueError, match=r"\[N, 8, 8, 1\].*got \(3, 8, 8, 3\)"):
    pipe.upscale(jax.random.key(0), np.zeros((3, 8, 8, 3), np.uint8), **KW)
  with pytest.raises(ValueError, match="low_res_images"):
    pipe.upscale(jax.random.key(0), np.full((3, 8, 8, 1), 200.0, np.float32), **KW)  # [0, 255] floats
  with pytest.raises(ValueError, match="no class labels .* labels must be None"):
    pipe.upscale(jax.random.key(0), low, labels=3, **KW)
  with pytest.raises(ValueError, match="use pipe.upscale"):
    pipe.sample(jax.random.key(0), 2, **KW)
  with pytest.raises(ValueError, match="use pipe.upscale"):
    pipe.img2img(jax.random.key(0), np.zeros((2, 32, 32, 1), np.uint8), 0.5, **KW)
  with pytest.raises(ValueError, match="use pipe.upscale"):
    pipe.interpolate(jax.random.key(0), num=2, **KW)
  with pytest.raises(ValueError, match=r"concat-conditioned super-resolution .* not latent-sized"):
    pipe.save_pretrained("unused")  # f = 1: c is resized to the latent grid, which diffusers can't
  assert dict(pipe.trace_counts) == traces


def test_sample_cli_says_to_use_upscale_in_one_line(sr_run):
  codes, outs = cli_runs.wait(cli_runs.start("sample", f"--workdir={sr_run}", "--num_steps=2"))
  assert codes[0] not in (0, None), outs[0][-2000:]
  assert "Traceback" not in outs[0], outs[0][-3000:]
  line = [l for l in outs[0].splitlines() if "error:" in l]
  assert len(line) == 1 and "super-resolution" in line[0] and ".upscale(rng, low_res_images)" in line[0]
  assert "[N, 8, 8, 1]" in line[0]


def test_hybrid_concat_and_class_run_upscales_per_label(ae_dir, digits, tmp_path):
  workdir = str(tmp_path / "hybrid")
  cli_runs.run(f"--config={cli_runs.TINY}:sr", f"--workdir={workdir}",
               f"--config.first_stage.workdir={ae_dir}", f"--config.train.num_steps={STEPS}",
               "--config.concat.class_labels=True", "--config.train.image_every=2")
  assert [r["step"] for r in metrics_lib.read_jsonl(workdir) if "upscaled_shape" in r] == [2]
  hybrid = LatentDiffusionPipeline.from_workdir(workdir, max_batch=4)
  assert hybrid.conditioning == "concat" and hybrid.num_classes == 10
  assert hybrid.unet.num_class_embeds == 11 and hybrid.unet.in_channels == 3
  _, low = digits
  a = hybrid.upscale(jax.random.key(0), low, labels=[1, 2, 3], **KW)
  traces = dict(hybrid.trace_counts)
  b = hybrid.upscale(jax.random.key(0), low, labels=[7, 8, 9], **KW)
  c = hybrid.upscale(jax.random.key(0), low, labels=4, guidance_scale=2.0, **KW)
  assert dict(hybrid.trace_counts) == traces  # new labels and guidance: no recompile
  assert a.shape == b.shape == c.shape == (3, 32, 32, 1)
  assert np.abs(a.astype(int) - b.astype(int)).max() > 0  # the labels reach the UNet
  with pytest.raises(ValueError, match="class-conditional: give labels in 0..9"):
    hybrid.upscale(jax.random.key(0), low, **KW)
  with pytest.raises(ValueError, match="labels must lie in 0..9"):
    hybrid.upscale(jax.random.key(0), low, labels=10, **KW)


def test_hybrid_run_on_unlabelled_images_stops_before_compiling(ae_dir, tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from ldm_jax.stages import run  # pylint: disable=import-outside-toplevel
  from tests.configs import tiny  # pylint: disable=import-outside-toplevel
  folder = tmp_path / "images"
  folder.mkdir()
  rng = np.random.default_rng(1)
  for i in range(12):
    Image.fromarray(rng.integers(0, 256, (32, 32), np.uint8)).save(folder / f"{i}.png")
  config = tiny.get_config("sr")
  config.train.num_steps = 1
  config.data.source, config.data.data_dir = "folder", str(folder)
  config.first_stage.workdir, config.first_stage.scale_factor = ae_dir, 1.0
  config.concat.class_labels = True
  with pytest.raises(ValueError, match="conditioning='concat' with concat.class_labels needs labels"
                     ".*--config.concat.class_labels=False"):
    run.train(config, str(tmp_path / "sr"))
  assert not (tmp_path / "sr" / "checkpoints").exists()
  config.concat.class_labels = False  # the plain SR model needs no labels: it trains
  run.train(config, str(tmp_path / "sr"))
  assert (tmp_path / "sr" / "export" / "ema_params.msgpack").exists()
