"""The trained semantic synthesis stage (LDM sec. 4.3.2) through the command line, tiny sizes.

tests/configs/tiny.py:semantic trains 2 steps on MNIST pairs (32 x 64) on a random-weight f = 1
first stage (32x64x1 -> 32x64x2): c = the 11-class stroke map of each canvas and its label, one-hot
on the latent grid, so the UNet reads 2 + 11 channels. The export loads as a pipeline whose
`synthesize` builds the c the loss builds from int class maps, compiled once per shape, bad inputs
refused before compiling; the other task methods point to it.
"""

import jax
import numpy as np
import pytest

from ldm_jax import samplers
from ldm_jax.data import mnist_pairs, to_float
from ldm_jax.diffusion import concat
from ldm_jax.models.unet import concat_conditioning
from ldm_jax.pipeline import LatentDiffusionPipeline
from ldm_jax.train import metrics as metrics_lib
from tests import cli_runs

STEPS = 2
BACKEND_COMPILES = cli_runs.BACKEND_COMPILES
KW = dict(method="ddim", num_steps=2)


@pytest.fixture(scope="module")
def semantic_run(ae_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("semantic"))
  cli_runs.run(f"--config={cli_runs.TINY}:semantic", f"--workdir={workdir}",
               f"--config.first_stage.workdir={ae_dir}", f"--config.train.num_steps={STEPS}",
               "--config.train.image_every=2")
  return workdir


@pytest.fixture(scope="module")
def pipe(semantic_run):
  return LatentDiffusionPipeline.from_workdir(semantic_run, max_batch=4)


@pytest.fixture(scope="module")
def canvases():
  """3 held-out MNIST-pairs canvases uint8 [3, 32, 64, 1], their labels and their maps [3, 32, 64]."""
  x, y = mnist_pairs.MnistPairs("heldout").read([0, 1, 2])
  s = np.asarray(concat.segmentation_pairs(None, to_float(x), y))
  return x, y, s


def test_run_trains_and_exports_the_class_channels(semantic_run):
  assert sorted(cli_runs.logged(semantic_run)) == list(range(1, STEPS + 1))
  params = cli_runs.exported_params(semantic_run)
  assert params["['conv_in']['kernel']"].shape == (3, 3, 2 + 11, 8)  # [z_t, 11 class fractions]
  shapes = {r["step"]: r["synthesized_shape"] for r in metrics_lib.read_jsonl(semantic_run)
            if "synthesized_shape" in r}
  assert shapes == {2: [96, 512, 1]}  # rows: maps, samples, canvases of 8 held-out 32x64 pairs
  assert params["['conv_out']['kernel']"].shape == (3, 3, 8, 2)


def test_from_workdir_knows_the_model_synthesizes(pipe):
  assert pipe.conditioning == "concat" and pipe.concat_degradation == "segmentation_pairs"
  assert pipe.segmentation_model and not pipe.inpainting_model and pipe.low_res_shape is None
  assert pipe.latent_shape == (32, 64, 2) and pipe.image_shape == (32, 64, 1)
  assert pipe.unet.in_channels == 13 and pipe.num_classes is None


def test_synthesize_is_the_sampler_on_the_training_conditioning(pipe, canvases):
  """synthesize's latents equal `samplers.sample` of eps_theta([z_t, c], t), c built from the
  canvases and labels by the loss's function `concat.conditioning_map`, from the same noise."""
  x, y, s = canvases
  rng = jax.random.key(3)
  z = pipe.synthesize(rng, s, output="latent", **KW)
  c = concat.conditioning_map("segmentation_pairs", None, to_float(x), (32, 64), y)
  assert c.shape == (3, 32, 64, 11)

  def reference(c):
    model_fn = lambda v, t: pipe.unet.apply({"params": pipe.unet_params}, concat_conditioning(v, c), t)
    return jax.jit(lambda v: samplers.sample(model_fn, pipe.schedule, v, rng, prediction_type=pipe.prediction_type,
                                             **KW, **pipe.sampler_grid))(pipe.initial_noise(rng, 3))

  np.testing.assert_allclose(z, reference(c), rtol=1e-4, atol=1e-4)
  # The comparison can fail: the classes in reverse channel order are far off.
  assert np.abs(np.asarray(reference(c[..., ::-1])) - z).max() > 1e-2


def test_synthesize_shapes_determinism_and_no_recompile(pipe, canvases):
  _, _, s = canvases
  a = pipe.synthesize(jax.random.key(0), s, **KW)
  assert a.shape == (3, 32, 64, 1) and a.dtype == np.uint8
  traces, compiles = dict(pipe.trace_counts), len(BACKEND_COMPILES)
  swapped = np.where(s > 0, 11 - s, 0)  # other digits on the same strokes
  b = pipe.synthesize(jax.random.key(0), swapped, **KW)
  c = pipe.synthesize(jax.random.key(1), s.astype(np.int64), guidance_scale=2.0, **KW)  # vs the zero map
  assert dict(pipe.trace_counts) == traces and len(BACKEND_COMPILES) == compiles
  assert traces["denoise"] == 1 and traces["segmentation_map"] == 1
  np.testing.assert_array_equal(a, pipe.synthesize(jax.random.key(0), s, **KW))
  assert np.abs(a.astype(int) - b.astype(int)).max() > 0  # the classes matter
  assert c.shape == a.shape


def test_bad_inputs_raise_before_compiling(pipe, canvases):
  x, _, s = canvases
  traces = dict(pipe.trace_counts)
  with pytest.raises(ValueError, match=r"segmentation must have shape \[N, 32, 64\] .* got \(3, 32, 32\)"):
    pipe.synthesize(jax.random.key(0), s[:, :, :32], **KW)
  with pytest.raises(ValueError, match=r"segmentation must have shape \[N, 32, 64\] .* got \(3, 32, 64, 1\)"):
    pipe.synthesize(jax.random.key(0), s[..., None], **KW)
  with pytest.raises(ValueError, match=r"segmentation must be integer classes in 0..10 \(0 = "
                     r"background, d \+ 1 = a stroke pixel of digit d .*\), got dtype float32"):
    pipe.synthesize(jax.random.key(0), s.astype(np.float32), **KW)
  with pytest.raises(ValueError, match="got dtype bool"):
    pipe.synthesize(jax.random.key(0), s > 0, **KW)
  bad = s.copy()
  bad[0, 0, 0], bad[1, 0, 0] = 11, -1
  with pytest.raises(ValueError, match=r"segmentation classes must lie in 0..10 .*, got \[-1, 11\]"):
    pipe.synthesize(jax.random.key(0), bad, **KW)
  with pytest.raises(ValueError, match="no class labels .* labels must be None"):
    pipe.synthesize(jax.random.key(0), s, labels=37, **KW)
  with pytest.raises(ValueError, match="guidance"):
    pipe.synthesize(jax.random.key(0), s, guidance_scale=float("nan"), **KW)
  use = r"semantic synthesis model .*: {} does not run it; use pipe.synthesize\(rng, segmentation\)"
  with pytest.raises(ValueError, match=use.format("upscale")):
    pipe.upscale(jax.random.key(0), np.zeros((3, 8, 16, 1), np.uint8), **KW)
  with pytest.raises(ValueError, match=use.format("inpaint")):
    pipe.inpaint(jax.random.key(0), x, np.ones((3, 32, 64), np.float32), **KW)
  with pytest.raises(ValueError, match=use.format("this method")):
    pipe.sample(jax.random.key(0), 2, **KW)
  with pytest.raises(ValueError, match=r"use pipe.synthesize\(rng, segmentation\)"):
    pipe.img2img(jax.random.key(0), x, 0.5, **KW)
  assert dict(pipe.trace_counts) == traces


def test_constructor_and_other_models(pipe, canvases):
  parts = dict(unet=pipe.unet, unet_params=pipe.unet_params, autoencoder=pipe.autoencoder,
               ae_params=pipe.ae_params, schedule=pipe.schedule, scale_factor=pipe.scale_factor,
               latent_shape=pipe.latent_shape)
  with pytest.raises(ValueError, match=r"concat_degradation='segmentation_pairs' needs a UNet "
                     r"reading latent \+ segmentation class channels = 2 \+ 11 = 13, got in_channels=3"):
    LatentDiffusionPipeline(**{**parts, "unet": pipe.unet.clone(in_channels=3)},
                            concat_degradation="segmentation_pairs")
  with pytest.raises(ValueError, match=r"concat_degradation='bicubic_x4' needs a UNet reading "
                     r"latent \+ image channels = 2 \+ 1 = 3, got in_channels=13"):
    LatentDiffusionPipeline(**parts, concat_degradation="bicubic_x4")
  # synthesize on models without segmentation channels names the valid degradations.
  sr = LatentDiffusionPipeline(**{**parts, "unet": pipe.unet.clone(in_channels=3)},
                               concat_degradation="bicubic_x4")
  plain = LatentDiffusionPipeline(**{**parts, "unet": pipe.unet.clone(in_channels=2)})
  _, _, s = canvases
  with pytest.raises(ValueError, match=r"synthesize needs a semantic synthesis model, .*"
                     r"\['segmentation_pairs'\].* this one is concat-conditioned with 'bicubic_x4' "
                     r"\(use pipe.upscale or pipe.inpaint\)"):
    sr.synthesize(jax.random.key(0), s, **KW)
  with pytest.raises(ValueError, match=r"this one is 'none'-conditioned"):
    plain.synthesize(jax.random.key(0), s, **KW)
  assert not sr.trace_counts and not plain.trace_counts


def test_sample_cli_says_to_use_synthesize_in_one_line(semantic_run):
  codes, outs = cli_runs.wait(cli_runs.start("sample", f"--workdir={semantic_run}", "--num_steps=2"))
  assert codes[0] not in (0, None), outs[0][-2000:]
  assert "Traceback" not in outs[0], outs[0][-3000:]
  line = [l for l in outs[0].splitlines() if "error:" in l]
  assert len(line) == 1 and "semantic synthesis" in line[0], line
  assert ".synthesize(rng, segmentation) with int class maps [N, 32, 64]" in line[0]
