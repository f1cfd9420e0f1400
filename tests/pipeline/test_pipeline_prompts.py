"""Prompts through every generation method of a text-to-image pipeline (a tiny random SD 1.x-style
diffusers folder), the equivalences that tie them together, and the errors raised before anything
compiles: bad prompts, prompts to models that take none, labels to a text model, folders with an
unknown tokenizer or missing parts."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import sd_refs
from ldm_jax import schedules
from ldm_jax.models import autoencoder, unet
from ldm_jax.pipeline import LatentDiffusionPipeline, random_params

pytestmark = [pytest.mark.slow,  # end to end, torch + jax
              pytest.mark.filterwarnings("ignore::UserWarning")]
PROMPTS = ["a photo of a cat", "a red house"]
KW = dict(method="ddim", num_steps=3, guidance_scale=4.0, output="latent")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # torch's pool spins on a shared 2-core machine
  path, _ = sd_refs.tiny_sd_pipeline(tmp_path_factory.mktemp("sd"), "sd1")
  torch.set_num_threads(threads)
  return path


@pytest.fixture(scope="module")
def pipe(folder):
  return LatentDiffusionPipeline.from_pretrained(folder, max_batch=4)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)


def test_prompts_equal_their_contexts_and_never_recompile(pipe):
  key = jax.random.key(1)
  z = pipe.sample(key, 2, prompts=PROMPTS, negative_prompts=["blurry", ""], **KW)
  traces = dict(pipe.trace_counts)
  context, null = pipe.encode_prompt(PROMPTS), pipe.encode_prompt(["blurry", ""])
  np.testing.assert_allclose(pipe.sample(key, 2, context=context, null_context=null, **KW), z,
                             atol=1e-5)
  # a text model's default unconditional branch is the empty prompt, as in diffusers
  np.testing.assert_allclose(pipe.sample(key, 2, prompts=PROMPTS, **KW),
                             pipe.sample(key, 2, context=context, **KW), atol=1e-5)
  one = pipe.sample(key, 2, prompts="a photo of a cat", **KW)  # one str is repeated
  np.testing.assert_allclose(one, pipe.sample(key, 2, prompts=[PROMPTS[0]] * 2, **KW), atol=1e-5)
  pipe.sample(jax.random.key(2), 2, prompts=["an owl", "a boat"], negative_prompts="dark",
              **{**KW, "guidance_scale": 6.0})
  counts = dict(pipe.trace_counts)
  assert counts.pop("prompts") == traces.pop("prompts") + 1  # encode_prompt's batch of 2
  assert counts == traces  # new prompts, negatives, guidance and seed: nothing recompiles


def test_img2img_inpaint_interpolate_take_prompts(pipe, images):
  key = jax.random.key(3)
  z = pipe.sample(key, 2, prompts=PROMPTS, **KW)
  # strength 1 starts from pure noise: the sample of the same key and prompts
  np.testing.assert_allclose(pipe.img2img(key, images, 1.0, prompts=PROMPTS, **KW), z, atol=1e-5)
  edited = pipe.img2img(key, images, 0.5, prompts=PROMPTS, **KW)
  assert edited.shape == z.shape and not np.allclose(edited, z, atol=1e-3)
  # a mask over the whole image and strength 1 regenerate everything: the sample again
  filled = pipe.inpaint(key, images, np.ones((16, 16)), prompts=PROMPTS, **KW)
  np.testing.assert_allclose(filled, z, atol=1e-5)
  ends = pipe.interpolate(key, PROMPTS[0], PROMPTS[1], 2, **KW)  # batch 2: no new program
  np.testing.assert_allclose(ends[[0, -1]], z, atol=1e-5)
  restored = pipe.restore(key, images, 0.1, prompts=PROMPTS, negative_prompts="noise", **KW)
  assert restored.shape == z.shape


def test_bad_prompts_raise_before_compiling(folder, images):
  fresh = LatentDiffusionPipeline.from_pretrained(folder, max_batch=4)
  key = jax.random.key(0)
  cases = [
      (lambda: fresh.sample(key, 2, prompts=["a cat"]), "list of num_samples=2 str, got a list of 1"),
      (lambda: fresh.sample(key, 2, prompts=["a cat", 3]), "must all be str; got non-strings at "
                                                           "(index, type) [(1, 'int')]"),
      (lambda: fresh.sample(key, 2, prompts=42), "prompts must be a str or a list"),
      (lambda: fresh.sample(key, 2, prompts="a", negative_prompts=["x"]), "negative_prompts must be"),
      (lambda: fresh.sample(key, 2, labels=[1, 2]), "conditioned on text: give prompts="),
      (lambda: fresh.sample(key, 2), "conditioned on text: give prompts="),
      (lambda: fresh.sample(key, 2, prompts="a", context=np.zeros((77, 32))), "not both"),
      (lambda: fresh.sample(key, 2, context=np.zeros((77, 16))), "[2, L, 32]"),
      (lambda: fresh.sample(key, 2, prompts="a", null_context=np.zeros((3, 77, 32))), "null_context"),
      (lambda: fresh.sample(key, 2, prompts="a", method="plms"), "valid choices"),
      (lambda: fresh.sample(key, 2, prompts="a", guidance_scale=[1.0, 2.0, 3.0]), "guidance_scale"),
      (lambda: fresh.img2img(key, images, 0.5, prompts=["a"] * 3), "got a list of 3"),
      (lambda: fresh.inpaint(key, images, np.ones((16, 16)), prompts=[None, "a"]), "must all be str"),
      (lambda: fresh.interpolate(key, "a", "b", 3, negative_prompts=["x"]), "one str"),
      (lambda: fresh.encode_prompt([]), "got a list of 0"),
  ]
  for fn, words in cases:
    with pytest.raises(ValueError) as err:
      fn()
    assert words in str(err.value), (words, str(err.value))
  assert not fresh.trace_counts  # nothing was traced or compiled


def test_prompts_to_models_without_a_text_encoder():
  ae = autoencoder.KL_TINY(in_channels=1, out_channels=1, z_channels=4)
  ae_params = random_params(ae, jnp.zeros((1, 16, 16, 1)))
  schedule = schedules.get_schedule("scaled_linear")
  net = unet.UNET_TINY(in_channels=4, out_channels=4, num_class_embeds=4)
  params = random_params(net, jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)), y=jnp.zeros((1,), jnp.int32))
  class_pipe = LatentDiffusionPipeline(net, params, ae, ae_params, schedule, scale_factor=1.0,
                                       latent_shape=(8, 8, 4), num_classes=3)
  ctx_net = unet.UNET_TINY_COND(in_channels=4, out_channels=4)
  ctx_params = random_params(ctx_net, jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)),
                             context=jnp.zeros((1, 5, 32)))
  ctx_pipe = LatentDiffusionPipeline(ctx_net, ctx_params, ae, ae_params, schedule, scale_factor=1.0,
                                     latent_shape=(8, 8, 4))
  key = jax.random.key(0)
  for fn, words in [
      (lambda: class_pipe.sample(key, 2, labels=1, prompts="a cat"),
       "class-conditional (give labels=); it takes no prompts"),
      (lambda: class_pipe.sample(key, 2, labels=1, negative_prompts="x"), "takes no negative_prompts"),
      (lambda: ctx_pipe.sample(key, 2, prompts="a cat"), "without a text encoder (give context=)"),
      (lambda: ctx_pipe.interpolate(key, "a", "b", 3), "must be contexts [L, D], not prompts"),
      (lambda: ctx_pipe.encode_prompt("a cat"), "has no text encoder")]:
    with pytest.raises(ValueError) as err:
      fn()
    assert words in str(err.value), (words, str(err.value))
  assert not class_pipe.trace_counts and not ctx_pipe.trace_counts


def _copy(folder, tmp_path):
  return shutil.copytree(folder, tmp_path / "copy")


def test_folder_errors(folder, tmp_path):
  bad = _copy(folder, tmp_path)
  config = bad / "tokenizer" / "tokenizer_config.json"
  config.write_text(json.dumps({**json.loads(config.read_text()), "tokenizer_class": "T5Tokenizer"}))
  with pytest.raises(ValueError, match="tokenizer_class 'T5Tokenizer' is not supported; supported:"):
    LatentDiffusionPipeline.from_pretrained(str(bad))
  shutil.rmtree(bad / "text_encoder")
  with pytest.raises(FileNotFoundError, match="model_index.json lists text_encoder but the folder "
                                              "has no text_encoder/"):
    LatentDiffusionPipeline.from_pretrained(str(bad))
  (bad / "model_index.json").unlink()  # no index: the sub-folders present are the pipeline
  shutil.rmtree(bad / "tokenizer")
  shutil.copytree(bad / "unet", bad / "bert")
  with pytest.raises(FileNotFoundError, match="has a text encoder .bert/. but no tokenizer/"):
    LatentDiffusionPipeline.from_pretrained(str(bad))
  shutil.rmtree(bad / "vae")
  with pytest.raises(ValueError, match=r"missing vae or vqvae/"):
    LatentDiffusionPipeline.from_pretrained(str(bad))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    LatentDiffusionPipeline.from_pretrained(str(tmp_path / "nowhere"))


def test_scheduler_config_is_read_and_checked(folder):
  pipe = LatentDiffusionPipeline.from_pretrained(
      folder, scheduler_config={"_class_name": "DPMSolverMultistepScheduler",
                                "timestep_spacing": "trailing", "use_karras_sigmas": True})
  assert pipe.defaults["method"] == "dpmpp_2m"
  assert pipe.sampler_grid["timestep_spacing"] == "trailing" and pipe.sampler_grid["karras_sigmas"]
  with pytest.raises(ValueError, match=r"clip_sample=True \(supported: False\); solver_order=3"):
    LatentDiffusionPipeline.from_pretrained(folder, scheduler_config={"clip_sample": True,
                                                                      "solver_order": 3})
  with pytest.raises(ValueError, match="Unknown sampler_grid keys"):
    LatentDiffusionPipeline.from_pretrained(folder, sampler_grid={"spacing": "leading"})
  with pytest.raises(ValueError, match="Unknown sampling defaults"):
    LatentDiffusionPipeline.from_pretrained(folder, defaults={"steps": 10})


def test_dtype_casts_the_text_encoder_too(folder, pipe):
  half = LatentDiffusionPipeline.from_pretrained(folder, dtype="bfloat16")
  assert half.prompt_encoder.module.dtype == jnp.bfloat16
  assert {a.dtype for a in jax.tree.leaves(half.prompt_encoder.params)} == {jnp.dtype(jnp.bfloat16)}
  got, want = half.encode_prompt(PROMPTS), pipe.encode_prompt(PROMPTS)
  assert got.dtype == np.float32
  assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.03  # bfloat16 rounding only


def test_missing_timestep_spacing_takes_each_methods_default(folder, tmp_path):
  """An SD 1.5-style PNDMScheduler config without timestep_spacing: diffusers' from_config gives
  DDIM its "leading" grid (with steps_offset) and DPM-Solver its "linspace" one; so does the
  pipeline."""
  from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler  # pylint: disable=import-outside-toplevel
  pipe = LatentDiffusionPipeline.from_pretrained(
      folder, scheduler_config={"_class_name": "PNDMScheduler", "timestep_spacing": None})
  assert pipe.sampler_grid["timestep_spacing"] is None and pipe.defaults["method"] == "dpmpp_2m"
  config = json.loads(open(f"{folder}/scheduler/scheduler_config.json", encoding="utf-8").read())
  config.pop("timestep_spacing")
  (tmp_path / "scheduler_config.json").write_text(json.dumps(
      {**config, "_class_name": "PNDMScheduler", "skip_prk_steps": True}))
  pndm = PNDMScheduler.from_pretrained(str(tmp_path))
  for method, cls in (("ddim", DDIMScheduler), ("dpmpp_2m", DPMSolverMultistepScheduler)):
    reference = cls.from_config(pndm.config)
    reference.set_timesteps(7)
    ours = pipe._tables(method, 7).xs["t"]  # pylint: disable=protected-access
    np.testing.assert_array_equal(np.asarray(ours), reference.timesteps.numpy())
