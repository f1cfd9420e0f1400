"""Property-based fuzzing (hypothesis) of bad inputs over the public API and the command line.

Every generated bad input must raise ValueError or TypeError whose message names the argument (the
command line: exit non-zero with exactly one line naming the config key), compile nothing and leave
no file behind. Deterministic (derandomize=True); the four tests together try well over 100
distinct bad inputs and check that count.
"""

import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.configs import mnist_autoencoder, mnist_ldm
from ldm_jax import diffusion, samplers, schedules
from ldm_jax.models import autoencoder, unet
from ldm_jax.pipeline import LatentDiffusionPipeline, random_params
from ldm_jax.stages import validate

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # config files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE, LATENT, N = (16, 16, 1), (8, 8, 4), 2
FUZZ = settings(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def pipe():
  """A tiny class-conditional pipeline (10 classes) with random weights: nothing is compiled."""
  ae = autoencoder.KL_TINY(in_channels=1, out_channels=1)
  net = unet.UNET_TINY(in_channels=4, out_channels=4, num_class_embeds=11)
  unet_params = random_params(net, jnp.zeros((1,) + LATENT), jnp.zeros((1,)),
                              y=jnp.zeros((1,), jnp.int32))
  return LatentDiffusionPipeline(net, unet_params, ae, random_params(ae, jnp.zeros((1,) + IMAGE)),
                                 schedules.get_schedule("scaled_linear", 100), scale_factor=1.0,
                                 latent_shape=LATENT, num_classes=10, max_batch=2)


# ------------------------------------------------------------------------------------------------
# Bad values.

BAD_FLOATS = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]),
                       st.floats(1.26, 1e30), st.floats(-1e30, -1.26))


@st.composite
def spoiled(draw, shape, bad=BAD_FLOATS, base=0.0):
  """A float32 array of `shape` (values `base`) with 1-3 entries replaced by bad values; the
  description says which (for counting distinct inputs)."""
  x = np.full(shape, base, np.float32)
  size = int(np.prod(shape))
  where = draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=3, unique=True))
  values = [draw(bad) for _ in where]
  x.reshape(-1)[where] = values
  return x, f"{tuple(where)}={values}"


WRONG_SHAPES = st.lists(st.integers(1, 5), min_size=1, max_size=5).map(tuple)
NOT_INTS = st.one_of(st.integers(-10**6, 0), st.floats(allow_nan=True), st.text(max_size=3),
                     st.none())
BAD_SCALARS = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]), st.text(max_size=3),
                        st.none(), st.lists(st.floats(0, 1), min_size=1, max_size=2))


def _images_case(draw):
  method = draw(st.sampled_from(["reconstruct", "encode", "img2img", "inpaint", "restore",
                                 "latent_bits_per_dim"]))
  name = "noisy_images" if method == "restore" else "images"
  kind = draw(st.sampled_from(["values", "shape", "dtype"]))
  if kind == "values":
    x, what = draw(spoiled((N,) + IMAGE))
  elif kind == "shape":
    shape = draw(WRONG_SHAPES.filter(lambda s: len(s) != 4 or s[1:] != IMAGE))
    x, what = np.zeros(shape, np.float32), str(shape)
  else:
    dtype = draw(st.sampled_from([np.int32, np.int64, np.complex64, np.bool_, np.uint16]))
    x, what = np.zeros((N,) + IMAGE, dtype), np.dtype(dtype).name
  args = {"reconstruct": (), "encode": (), "img2img": (0.5,), "inpaint": (np.ones(IMAGE[:2]),),
          "restore": (0.1,), "latent_bits_per_dim": ()}[method]
  rng = () if method in ("reconstruct", "encode") else (jax.random.key(0),)
  labels = {} if method in ("reconstruct", "encode") else {"labels": 1}
  return method, rng + (x,) + args, labels, name, f"{kind}:{what}"


@st.composite
def pipeline_cases(draw):
  """(method, args, kwargs, the argument's name, a description)."""
  key = jax.random.key(0)
  good = np.zeros((N,) + IMAGE, np.uint8)
  which = draw(st.sampled_from(["images", "mask", "latents", "num_samples", "guidance", "labels",
                                "method", "num_steps", "eta", "strength", "noise_level",
                                "resample", "num", "chunk", "output"]))
  if which == "images":
    return _images_case(draw)
  if which == "mask":
    m, what = draw(spoiled((N,) + IMAGE[:2], st.one_of(BAD_FLOATS, st.floats(1.001, 1.2),
                                                       st.floats(-0.5, -0.001))))
    return "inpaint", (key, good, m), {"labels": 1}, "mask", what
  if which == "latents":
    z, what = draw(spoiled((N,) + LATENT, st.sampled_from([math.nan, math.inf, -math.inf])))
    return "decode", (z,), {}, "latents", what
  if which == "num_samples":
    v = draw(NOT_INTS)
    return "sample", (key, v), {"labels": 1}, "num_samples", repr(v)
  if which == "guidance":
    v = draw(st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]),
                       st.lists(st.floats(-5, 5), min_size=3, max_size=4), st.text(min_size=1, max_size=3)))
    return "sample", (key, N), {"labels": 1, "guidance_scale": v}, "guidance_scale", repr(v)
  if which == "labels":
    v = draw(st.one_of(st.integers(10, 10**6), st.integers(-10**6, -1)))
    return "sample", (key, N), {"labels": [0, v]}, "labels", repr(v)
  if which == "method":
    v = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", max_size=8).filter(
        lambda s: s not in samplers.METHODS))
    return "sample", (key, N), {"labels": 1, "method": v}, "method", repr(v)
  if which == "num_steps":
    v = draw(NOT_INTS.filter(lambda v: v is not None))
    return "sample", (key, N), {"labels": 1, "num_steps": v}, "num_steps", repr(v)
  if which == "eta":
    v = draw(st.one_of(BAD_SCALARS, st.floats(-1e6, -1e-3)))
    return "sample", (key, N), {"labels": 1, "method": "ddim", "eta": v}, "eta", repr(v)
  if which == "strength":
    v = draw(st.one_of(BAD_SCALARS, st.floats(1.001, 1e6), st.floats(-1e6, -1e-3)))
    return "img2img", (key, good, v), {"labels": 1}, "strength", repr(v)
  if which == "noise_level":
    v = draw(st.one_of(BAD_SCALARS, st.floats(-1e6, -1e-3)))
    return "restore", (key, good, v), {"labels": 1}, "noise_level", repr(v)
  if which == "resample":
    v = draw(NOT_INTS)
    return "inpaint", (key, good, np.ones(IMAGE[:2])), {"labels": 1, "resample": v}, "resample", repr(v)
  if which == "num":
    v = draw(st.one_of(st.integers(-10**6, 1), st.floats(allow_nan=True)))
    return "interpolate", (key, 1, 2, v), {}, "num", repr(v)
  if which == "chunk":
    v = draw(NOT_INTS)
    return "latent_bits_per_dim", (key, good, 1), {"timesteps_per_chunk": v}, "timesteps_per_chunk", repr(v)
  v = draw(st.text(max_size=6).filter(lambda s: s not in ("uint8", "float", "latent")))
  return "sample", (key, N), {"labels": 1, "output": v}, "output", repr(v)


def _raises_naming(fn, name):
  with pytest.raises((ValueError, TypeError)) as err:
    fn()
  assert name in str(err.value), (name, str(err.value))


def test_fuzz_pipeline_methods(pipe, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  seen = set()

  @settings(FUZZ, max_examples=150)
  @given(pipeline_cases())
  def check(case):
    method, args, kwargs, name, what = case
    _raises_naming(lambda: getattr(pipe, method)(*args, **kwargs), name)
    seen.add((method, name, what))

  check()
  assert len(seen) >= 100, len(seen)
  assert not pipe.trace_counts  # nothing was traced or compiled
  assert not os.listdir(tmp_path)


# ------------------------------------------------------------------------------------------------
# Schedules, samplers, the diffusion process.

SCHEDULE = schedules.get_schedule("linear", 50)


def _never_called(x, t):
  raise AssertionError("model_fn called before the arguments were validated")


@st.composite
def process_cases(draw):
  """(a call, the argument's name, a description)."""
  which = draw(st.sampled_from(["betas", "name", "num_timesteps", "beta_range", "x_T",
                                "sampler_method", "sampler_steps", "sampler_eta", "start_step",
                                "timesteps", "guidance"]))
  x_T = np.zeros((N,) + LATENT, np.float32)
  run = lambda **kw: (lambda: samplers.sample(_never_called, SCHEDULE, kw.pop("x", x_T),
                                              jax.random.key(0), **{"method": "ddim",
                                                                   "num_steps": 5, **kw}))
  if which == "betas":
    b, what = draw(spoiled((6,), st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 0.0]),
                                           st.floats(1.0001, 1e6), st.floats(-1e6, 0.0)), base=0.1))
    return lambda: schedules.from_betas(b), "betas", what
  if which == "name":
    v = draw(st.text(max_size=6).filter(lambda s: s not in schedules.SCHEDULE_NAMES))
    return lambda: schedules.get_schedule(v), "name", repr(v)
  if which == "num_timesteps":
    v = draw(NOT_INTS)
    return lambda: schedules.get_schedule("linear", v), "num_timesteps", repr(v)
  if which == "beta_range":
    lo, hi = draw(st.floats(allow_nan=True)), draw(st.floats(allow_nan=True))
    if 0 < lo <= hi < 1:
      lo = -lo
    return lambda: schedules.get_schedule("linear", 10, beta_start=lo, beta_end=hi), "beta_start", repr((lo, hi))
  if which == "x_T":
    x, what = draw(spoiled((N,) + LATENT, st.sampled_from([math.nan, math.inf, -math.inf])))
    return run(x=x), "x_T", what
  if which == "sampler_method":
    v = draw(st.text(max_size=6).filter(lambda s: s not in samplers.METHODS))
    return run(method=v), "method", repr(v)
  if which == "sampler_steps":
    v = draw(st.one_of(st.integers(-10**6, 0), st.floats(0.5, 1e3)))
    return run(num_steps=v), "num_steps", repr(v)
  if which == "sampler_eta":
    v = draw(st.one_of(st.sampled_from([math.nan, math.inf]), st.floats(-1e6, -1e-3)))
    return run(eta=v), "eta", repr(v)
  if which == "start_step":
    v = draw(st.one_of(st.integers(5, 10**6), st.integers(-10**6, -1)))
    return run(start_step=v), "start_step", repr(v)
  if which == "timesteps":
    v = draw(st.one_of(st.integers(50, 10**6), st.integers(-10**6, -1)))
    t = np.array([0, v], np.int32)
    return (lambda: diffusion.q_sample(SCHEDULE, jnp.zeros((2, 3)), t, jnp.zeros((2, 3))),
            "Timesteps", repr(v))
  w = np.array([1.0, draw(st.sampled_from([math.nan, math.inf, -math.inf]))])
  return (lambda: samplers.classifier_free_guidance(lambda x, t, c: x, 0, 0, w), "guidance_scale",
          repr(w))


def test_fuzz_schedules_samplers_and_diffusion(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  seen = set()

  @settings(FUZZ, max_examples=100)
  @given(process_cases())
  def check(case):
    fn, name, what = case
    _raises_naming(fn, name)
    seen.add((name, what))

  check()
  assert len(seen) >= 60, len(seen)
  assert not os.listdir(tmp_path)


# ------------------------------------------------------------------------------------------------
# Config validation, directly and through the command line.

_INTS = {"train.num_steps": 1, "train.global_batch_size": 1, "train.log_every": 1,
         "train.save_every": 0, "train.image_every": 0, "optim.grad_accum_steps": 1,
         "optim.warmup_steps": 0, "disc.num_layers": 1, "model.z_channels": 1, "loss.disc_start": 0,
         "parallel.num_fsdp": 1, "ldm:sample.num_steps": 1, "ldm:diffusion.num_timesteps": 1,
         "ldm:diffusion.num_classes": 1, "ldm:sample.per_class": 1}
_REALS = {"optim.learning_rate": (0.0, None), "train.ema_decay": (0.0, 1.0), "optim.b1": (0.0, 1.0),
          "optim.b2": (0.0, 1.0), "optim.eps": (0.0, None), "optim.weight_decay": (0.0, None),
          "disc_learning_rate": (0.0, None), "loss.kl_weight": (0.0, None),
          "data.holdout_fraction": (0.0, 1.0), "ldm:diffusion.p_uncond": (0.0, 1.0),
          "ldm:model.dropout": (0.0, 1.0), "ldm:diffusion.beta_start": (0.0, 1.0),
          "ldm:diffusion.min_snr_gamma": (0.0, None)}
_CHOICES = {"parallel.mode": ("pmap", "mesh"), "optim.decay": ("cosine", "linear", "constant"),
            "loss.rec_loss": ("l1", "l2"), "loss.disc_loss": ("hinge", "vanilla"),
            "data.crop": ("center", "random", "none"), "stage": ("autoencoder", "latent_diffusion"),
            "ldm:diffusion.schedule": tuple(schedules.SCHEDULE_NAMES),
            "ldm:sample.method": tuple(samplers.METHODS),
            "ldm:diffusion.prediction_type": ("epsilon", "sample", "v_prediction")}


@st.composite
def config_cases(draw):
  """(stage, key, bad value): ints below their minimum, non-finite or out-of-range reals, strings
  outside the choices."""
  kind = draw(st.sampled_from(["int", "real", "choice"]))
  if kind == "int":
    key = draw(st.sampled_from(sorted(_INTS)))
    value = draw(st.integers(-10**6, _INTS[key] - 1))
  elif kind == "real":
    key = draw(st.sampled_from(sorted(_REALS)))
    lo, hi = _REALS[key]
    bad = [st.sampled_from([math.nan, math.inf, -math.inf]), st.floats(-1e6, lo - 1e-3)]
    if hi is not None:
      bad.append(st.floats(hi + 1e-3, 1e6))
    value = draw(st.one_of(bad))
  else:
    key = draw(st.sampled_from(sorted(_CHOICES)))
    value = draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(
        lambda s: s not in _CHOICES[key]))
  stage, key = ("latent_diffusion", key[4:]) if key.startswith("ldm:") else ("autoencoder", key)
  return stage, key, value


def _config(stage, first_stage_dir):
  if stage == "autoencoder":
    return mnist_autoencoder.get_config()
  c = mnist_ldm.get_config()
  c.first_stage.workdir = str(first_stage_dir)
  return c


def test_fuzz_config_validation(tmp_path):
  (tmp_path / "ae").mkdir()
  seen = set()

  @settings(FUZZ, max_examples=80)
  @given(config_cases())
  def check(case):
    stage, key, value = case
    c = _config(stage, tmp_path / "ae")
    *path, last = key.split(".")
    section = c
    for p in path:
      section = section[p]
    with section.ignore_type():
      section[last] = value
    with pytest.raises(ValueError) as err:
      validate.config(c)
    assert str(err.value).startswith(f"{key}="), (key, value, str(err.value))
    seen.add((stage, key, repr(value)))

  check()
  assert len(seen) >= 60, len(seen)
  assert os.listdir(tmp_path) == ["ae"]


def _reset_flags():
  """Forgets a parse of the command line: the --config.KEY override flags ml_collections defined
  while parsing --config (defined again by the next parse) and the parsed values."""
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()


def test_fuzz_command_line_in_process(tmp_path, monkeypatch, capsys):
  """`ldm_jax.main` driven in-process (its flags parsed, then main(argv)) with bad config values:
  SystemExit with one line naming the key, nothing on stderr besides, and no workdir."""
  from ldm_jax import main as cli  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(cli.launch, "start", lambda *a, **k: False)  # no device / cluster set-up here
  (tmp_path / "ae").mkdir()
  workdir = tmp_path / "run"
  seen = set()

  @settings(FUZZ, max_examples=40)
  @given(config_cases())
  def check(case):
    stage, key, value = case
    if key == "stage":
      return  # not overridable to another stage's config meaningfully; validate covers it
    config = os.path.join(ROOT, "experiments", "configs",
                          "mnist_autoencoder.py" if stage == "autoencoder" else "mnist_ldm.py")
    argv = ["ldm_jax.main", "train", f"--config={config}", f"--config.{key}={value}",
            f"--workdir={workdir}"]
    if stage == "latent_diffusion":
      argv.insert(3, f"--config.first_stage.workdir={tmp_path / 'ae'}")
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the overrides from sys.argv
    _reset_flags()
    rest = flags.FLAGS(argv)
    with pytest.raises(SystemExit) as exit_:
      cli.main(rest)
    message = exit_.value.code
    assert isinstance(message, str) and "\n" not in message, message  # exit status 1, one line
    assert message.startswith(f"ldm_jax.main train: error: {key}="), message
    assert capsys.readouterr().err == ""
    assert not workdir.exists()
    seen.add((stage, key, repr(value)))

  try:
    check()
  finally:
    _reset_flags()
  assert len(seen) >= 25, len(seen)
  assert os.listdir(tmp_path) == ["ae"]
