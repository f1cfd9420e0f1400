"""Up-front validation of a training config: every section's values, before anything runs.

  validate.config(config)   # ValueError("train.num_steps=-5: expected an integer >= 1.")
                            # ValueError("parallel.mode='tp'; valid choices: pmap, mesh.")

`run.train` calls it before any data is prepared, anything compiled, or the workdir written, so a
bad value costs nothing and leaves the workdir untouched. Each error names the full key, the bad
value and the valid range or choices. Keys a config does not have are skipped (older exports,
hand-made configs); the builders and data code keep their own checks for what only they can see.
"""

import json
import math
import numbers
import os

import jax
import ml_collections

from ldm_jax import samplers
from ldm_jax import schedules
from ldm_jax import xla_cpu
from ldm_jax.data import preprocess
from ldm_jax.diffusion import concat as concat_lib
from ldm_jax.diffusion import losses
from ldm_jax.diffusion import parameterization
from ldm_jax.models import discriminator
from ldm_jax.models import precision
from ldm_jax.models import transformer
from ldm_jax.stages import autoencoder as ae_stage
from ldm_jax.stages import builders
from ldm_jax.stages import export
from ldm_jax.stages import gan
from ldm_jax.stages import latent_diffusion as ldm_stage
from ldm_jax.train import axis_rules
from ldm_jax.train import distributed
from ldm_jax.train import optim
from ldm_jax.train import parallel

STAGES = ("autoencoder", "latent_diffusion")
_MISSING = object()


def _bad(key, value, expected):
  raise ValueError(f"{key}={value!r}: expected {expected}.")


def _get(section, path):
  """section[path] for a dotted path, _MISSING where a key is absent."""
  for part in path.split("."):
    if not hasattr(section, "get") or part not in section:
      return _MISSING
    section = section[part]
  return section


def _int(c, key, lo, hi=None):
  v = _get(c, key)
  if v is _MISSING:
    return None
  ok = isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)
  if not ok:
    _bad(key, v, f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else ""))
  return int(v)


def _real(c, key, lo=None, hi=None, *, lo_open=False, hi_open=False):
  """A finite number within the interval given (None: unbounded)."""
  v = _get(c, key)
  if v is _MISSING:
    return None
  interval = (f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, "
              f"{'inf' if hi is None else hi}{')' if hi_open or hi is None else ']'}")
  ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
  ok = ok and (lo is None or (v > lo if lo_open else v >= lo))
  ok = ok and (hi is None or (v < hi if hi_open else v <= hi))
  if not ok:
    _bad(key, v, f"a finite number in {interval}")
  return float(v)


def _choice(c, key, choices):
  v = _get(c, key)
  if v is not _MISSING and v not in choices:
    raise ValueError(f"{key}={v!r}; valid choices: {', '.join(map(str, choices))}.")
  return None if v is _MISSING else v


def _bool(c, key):
  v = _get(c, key)
  if v is not _MISSING and not isinstance(v, bool):
    _bad(key, v, "True or False")


def _channels(c, key):
  """A non-empty tuple of integers >= 1 (block_out_channels)."""
  v = _get(c, key)
  if v is _MISSING:
    return None
  if not isinstance(v, (tuple, list)) or not v or not all(
      isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 1 for x in v):
    _bad(key, v, "a non-empty tuple of integers >= 1")
  return tuple(int(x) for x in v)


def _groups_divide(c, groups_key, channels_key):
  groups, channels = _int(c, groups_key, 1), _channels(c, channels_key)
  if groups and channels and any(ch % groups for ch in channels):
    _bad(groups_key, groups, f"a divisor of every {channels_key} entry {channels} (GroupNorm)")


def _train(c):
  _int(c, "seed", 0)
  _int(c, "train.num_steps", 1)
  batch = _int(c, "train.global_batch_size", 1)
  _int(c, "train.save_every", 0)  # 0: only at the end / on preemption
  _int(c, "train.log_every", 1)
  _int(c, "train.image_every", 0)  # 0: never
  _real(c, "train.ema_decay", 0.0, 1.0, hi_open=True)
  _int(c, "train.max_consecutive_bad", 0)  # 0: never stop
  _bool(c, "train.cache_latents")  # latent diffusion: E(x) once per distinct image
  return batch


def _optim(c):
  _real(c, "optim.learning_rate", 0.0, lo_open=True)
  warmup = _int(c, "optim.warmup_steps", 0)
  decay = _choice(c, "optim.decay", optim.DECAYS)
  steps = _int(c, "optim.decay_steps", 1)
  if decay not in (None, "constant") and steps is not None and warmup is not None and steps <= warmup:
    _bad("optim.decay_steps", steps, f"more than optim.warmup_steps={warmup} for decay={decay!r}")
  _real(c, "optim.end_lr_factor", 0.0, 1.0)
  _real(c, "optim.b1", 0.0, 1.0, hi_open=True)
  _real(c, "optim.b2", 0.0, 1.0, hi_open=True)
  _real(c, "optim.eps", 0.0, lo_open=True)
  _real(c, "optim.weight_decay", 0.0)
  _real(c, "optim.grad_clip_norm", 0.0)  # 0: no clipping
  _int(c, "optim.grad_accum_steps", 1)


def _precision(c, section):
  """dtype, param_dtype, remat, attention_impl through `precision`'s own checks (which also know
  that "cudnn" needs a GPU), the message given the section's prefix."""
  for key in precision.PRECISION_KEYS:
    v = _get(c, f"{section}.{key}")
    if v is _MISSING:
      continue
    try:
      precision.module_fields({key: v})
    except ValueError as e:
      raise ValueError(f"{section}.{e}") from None


def _data(c):
  _choice(c, "data.source", ("tfds", "folder"))
  if _get(c, "data.source") == "folder" and not _get(c, "data.data_dir"):
    _bad("data.data_dir", _get(c, "data.data_dir"), "the folder of images for data.source='folder'")
  size = _get(c, "data.image_size")
  if size is _MISSING:
    size = None
  else:
    try:
      size = preprocess.image_hw(list(size) if isinstance(size, tuple) else size)
    except ValueError:
      _bad("data.image_size", size, "a positive integer S, or a pair (H, W) of positive integers")
  if _get(c, "data.name") == "mnist_pairs":
    from ldm_jax.data import mnist_pairs  # pylint: disable=import-outside-toplevel
    _choice(c, "data.split", mnist_pairs.SPLITS)
    _choice(c, "data.eval_split", mnist_pairs.SPLITS)
    _choice(c, "data.caption_style", mnist_pairs.CAPTION_STYLES)
    if _get(c, "data.crop") not in (_MISSING, "none"):
      _bad("data.crop", _get(c, "data.crop"), "'none' for mnist_pairs (a square crop would cut "
           "off one of the two digits)")
  channels = _get(c, "data.channels")
  if channels is not _MISSING and channels is not None and channels not in preprocess.CHANNELS:
    _bad("data.channels", channels, f"one of {preprocess.CHANNELS} (or None: the dataset's)")
  _choice(c, "data.crop", preprocess.CROPS)
  _choice(c, "data.resize", preprocess.RESIZES)
  _bool(c, "data.flip")
  _bool(c, "data.shuffle")
  _real(c, "data.holdout_fraction", 0.0, 1.0, hi_open=True)
  return size, None if channels is _MISSING else channels


def _autoencoder(c, size, channels):
  _precision(c, "model")
  _precision(c, "disc")
  _choice(c, "model.preset", builders.AUTOENCODER_CLASSES + tuple(
      n for n in dir(builders.autoencoder_lib) if n.isupper()))
  _groups_divide(c, "model.norm_groups", "model.block_out_channels")
  for key in ("model.in_channels", "model.out_channels"):
    n = _int(c, key, 1)
    if channels is not None and n is not None and n != channels:
      _bad(key, n, f"data.channels={channels} (the images' channels)")
  _int(c, "model.z_channels", 1)
  _int(c, "model.layers_per_block", 1)
  _int(c, "disc.base_channels", 1)
  _int(c, "disc.num_layers", 1)
  _choice(c, "disc.norm", discriminator.NORMS)
  _choice(c, "loss.rec_loss", ae_stage.REC_LOSSES)
  _choice(c, "loss.disc_loss", gan.DISC_LOSSES)
  for key in ("kl_weight", "codebook_weight", "disc_weight", "perceptual_weight"):
    _real(c, f"loss.{key}", 0.0)
  _int(c, "loss.disc_start", 0)
  if (_get(c, "loss.perceptual_weight") or 0) > 0:
    for key in ("loss.lpips_vgg", "loss.lpips_lin"):
      if not _get(c, key):
        _bad(key, _get(c, key), "a weight file path when loss.perceptual_weight > 0")
  _real(c, "disc_learning_rate", 0.0, lo_open=True)
  if size is not None and _get(c, "model.preset") is not _MISSING:
    try:
      f = builders.autoencoder(c.model).downsampling_factor  # a module definition: nothing runs
    except TypeError as e:  # a field the module does not have
      raise ValueError(f"model: {e}") from None
    if size[0] % f or size[1] % f:
      _bad("data.image_size", _get(c, "data.image_size"),
           f"a multiple of the autoencoder's downsampling factor {f}")


def _latent_diffusion(c):
  first = _get(c, "first_stage.workdir")
  if first is not _MISSING and (not first or not os.path.isdir(first)):
    _bad("first_stage.workdir", first, "the workdir of a trained autoencoder run (an existing folder)")
  _bool(c, "first_stage.use_ema")
  _real(c, "first_stage.scale_factor", 0.0)  # 0: estimated from the first batch
  _precision(c, "model")
  _choice(c, "model.preset", ("UNet",) + tuple(n for n in dir(builders.unet_lib) if n.isupper()))
  _groups_divide(c, "model.norm_num_groups", "model.block_out_channels")
  _int(c, "model.layers_per_block", 1)
  _real(c, "model.dropout", 0.0, 1.0, hi_open=True)
  _choice(c, "model.attention_position_embedding", transformer.POSITION_EMBEDDINGS)
  name = _choice(c, "diffusion.schedule", schedules.SCHEDULE_NAMES)
  zero_snr = _get(c, "diffusion.zero_terminal_snr")
  _bool(c, "diffusion.zero_terminal_snr")
  _int(c, "diffusion.num_timesteps", 2 if zero_snr is True else 1)
  if name not in (None, "cosine"):
    start = _real(c, "diffusion.beta_start", 0.0, 1.0, lo_open=True, hi_open=True)
    end = _real(c, "diffusion.beta_end", 0.0, 1.0, lo_open=True, hi_open=True)
    if start is not None and end is not None and end < start:
      _bad("diffusion.beta_end", end, f">= diffusion.beta_start={start}")
  _choice(c, "diffusion.prediction_type", parameterization.PREDICTION_TYPES)
  _choice(c, "diffusion.weighting", losses.WEIGHTINGS)
  _choice(c, "diffusion.loss_type", losses.LOSS_TYPES)
  _real(c, "diffusion.min_snr_gamma", 0.0, lo_open=True)
  conditioning = _choice(c, "diffusion.conditioning", ldm_stage.CONDITIONINGS)
  if conditioning == "class":
    _int(c, "diffusion.num_classes", 1)
  if conditioning == "text":
    _text(c)
  if conditioning == "concat":
    _concat(c)
  _real(c, "diffusion.p_uncond", 0.0, 1.0)
  _choice(c, "sample.method", tuple(samplers.METHODS))
  _int(c, "sample.num_steps", 1)
  _real(c, "sample.guidance_scale")
  _int(c, "sample.per_class", 1)


def _text(c):
  """The `text` section of a text-conditioned run (tokenizer, encoder) and a UNet that can read
  its context (cross-attention blocks)."""
  if _get(c, "text") is _MISSING:
    raise ValueError("diffusion.conditioning='text' needs a `text` section (tokenizer and text "
                     "encoder): start from experiments/configs/mnist_text.py.")
  pretrained = _get(c, "text.pretrained")
  if pretrained not in (_MISSING, "", None) and not os.path.isdir(pretrained):
    _bad("text.pretrained", pretrained, "a diffusers pipeline folder (tokenizer/ + text_encoder/ "
         "or bert/), or '' for a new encoder")
  _bool(c, "text.train_encoder")
  _bool(c, "text.pooled")
  if _real(c, "text.lr_scale", 0.0, None, lo_open=True) not in (None, 1.0) and not _get(
      c, "text.train_encoder"):
    _bad("text.lr_scale", _get(c, "text.lr_scale"), "1.0 with text.train_encoder=False (a frozen "
         "encoder has no learning rate)")
  _int(c, "text.max_length", 2)
  if not pretrained:
    tok = _get(c, "text.tokenizer")
    builtin = builders.BUILTIN_TOKENIZERS + ("clip",)
    if tok is _MISSING or not isinstance(tok, str) or (tok not in builtin and not os.path.exists(tok)):
      _bad("text.tokenizer", None if tok is _MISSING else tok,
           f"one of {', '.join(builtin)} or an existing tokenizer folder / tokenizer.json / vocab.txt")
    _choice(c, "text.encoder.preset", tuple(sorted(builders.text_encoder_presets())))
    for key in ("width", "heads", "head_dim", "mlp_dim"):
      _int(c, f"text.encoder.{key}", 1)
    _int(c, "text.encoder.layers", 0)  # 0: token + position embeddings only
    _real(c, "text.encoder.dropout", 0.0, 1.0, hi_open=True)
    _precision(c, "text.encoder")
  blocks = _block_types(c)
  if blocks and not any("CrossAttn" in b for b in blocks):
    _bad("model.down_block_types", _get(c, "model.down_block_types"),
         "cross-attention blocks (CrossAttnDownBlock2D / CrossAttnUpBlock2D / "
         "UNetMidBlock2DCrossAttn) for diffusion.conditioning='text'")


def _block_types(c):
  """The UNet's block type names (down, up, mid) given in the config."""
  blocks = []
  for key in ("down_block_types", "up_block_types", "mid_block_type"):
    v = _get(c, f"model.{key}")
    blocks += [b for b in (v if isinstance(v, (tuple, list)) else [v]) if isinstance(b, str)]
  return blocks


def _concat(c):
  """The `concat` section of a concat-conditioned run (LDM-SR, inpainting, semantic synthesis): a
  known degradation whose factor divides the image size (a segmentation map: on mnist_pairs),
  p_drop in [0, 1], class_labels a bool (then diffusion.num_classes >= 1),
  a UNet without cross-attention (hybrid concat + text is not implemented), and, where the config
  sets model.in_channels, the first stage's latent + image channels."""
  if _get(c, "concat") is _MISSING:
    raise ValueError("diffusion.conditioning='concat' needs a `concat` section (degradation, "
                     "p_drop): start from experiments/configs/mnist_ldm.py.")
  name = _choice(c, "concat.degradation", tuple(concat_lib.DEGRADATIONS))
  _real(c, "concat.p_drop", 0.0, 1.0)
  _bool(c, "concat.class_labels")
  if _get(c, "concat.class_labels") is True:  # hybrid concat + class
    _int(c, "diffusion.num_classes", 1)
  if name is not None and concat_lib.is_segmentation(name):  # the map's digits are the labels'
    source, data = _get(c, "data.source"), _get(c, "data.name")
    if source == "folder" or data != "mnist_pairs":
      got = ("data.source='folder'" if source == "folder" else
             f"data.name={None if data is _MISSING else data!r}")
      _bad("concat.degradation", name, f"a degradation the data can feed: this one needs "
           f"data.name='mnist_pairs' (not a folder), as its map takes each half's digit from the "
           f"labels 10 * left + right; got {got} (see experiments/configs/mnist_semantic.py)")
  size = _get(c, "data.image_size")
  if name is not None and size is not _MISSING:
    f = concat_lib.DEGRADATIONS[name].factor
    hw = preprocess.image_hw(list(size) if isinstance(size, tuple) else size)
    if hw[0] % f or hw[1] % f:
      _bad("data.image_size", size, f"a multiple of {f} for concat.degradation={name!r}")
  cross = [b for b in _block_types(c) if "CrossAttn" in b]
  if cross:
    _bad("model.down_block_types", _get(c, "model.down_block_types"),
         f"no cross-attention blocks (got {', '.join(cross)}) for diffusion.conditioning='concat' "
         "(hybrid concat + text is not implemented)")
  given = _get(c, "model.in_channels")
  channels = _first_stage_channels(_get(c, "first_stage.workdir"))
  if given is not _MISSING and channels is not None and name is not None:
    latent, image = channels
    want = latent + concat_lib.concat_channels(name, image, latent)
    what = "the " + concat_lib.unet_inputs(name, image, latent)
    if given != want:
      _bad("model.in_channels", given, f"{what} = {want} of the first stage for "
           f"diffusion.conditioning='concat' with concat.degradation={name!r} (or leave it out: "
           "it is derived)")


def _first_stage_channels(workdir):
  """(latent channels, image channels) of the autoencoder run's export, None where unreadable."""
  if not isinstance(workdir, str) or not workdir:
    return None
  path = os.path.join(workdir, export.EXPORT_DIR, "config.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    model = ml_collections.ConfigDict(json.load(f)).model
  ae = builders.autoencoder(model)  # a module definition: nothing runs
  return ae.latent_channels, ae.in_channels


def _parallel(c, batch):
  _choice(c, "parallel.mode", parallel.MODES)
  n = _int(c, "parallel.num_devices", 0, jax.device_count())  # 0: every device
  n = n or jax.device_count()
  fsdp = _int(c, "parallel.num_fsdp", 1)
  if fsdp is not None and n % fsdp:
    _bad("parallel.num_fsdp", fsdp, f"a divisor of the {n} devices used")
  if batch is not None and batch % n:
    _bad("train.global_batch_size", batch, f"a multiple of the {n} devices used (parallel.num_devices)")
  rules = _get(c, "parallel.axis_rules")
  if rules is not _MISSING:
    axis_rules.check_rules(rules, key="parallel.axis_rules")  # names the bad entry
  _choice(c, "parallel.cpu_convolutions", xla_cpu.CHOICES)
  _choice(c, "distributed.auto", distributed.AUTO)
  _real(c, "distributed.initialization_timeout", 0.0, lo_open=True)
  _real(c, "distributed.heartbeat_timeout", 0.0, lo_open=True)


def config(c) -> None:
  """Raises ValueError naming the first bad key of a training config (stage, data, model, loss,
  diffusion, optim, train, sample, parallel and distributed sections), its value and the valid
  range or choices."""
  _choice(c, "stage", STAGES)
  if _get(c, "stage") is _MISSING:
    raise ValueError(f"stage is missing; valid choices: {', '.join(STAGES)}.")
  batch = _train(c)
  _optim(c)
  size, channels = _data(c)
  if c.stage == "autoencoder":
    _autoencoder(c, size, channels)
  else:
    _latent_diffusion(c)
  _parallel(c, batch)
