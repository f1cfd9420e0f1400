"""Networks, schedules and optimizers built from the sections of an experiment config."""

import os

import jax
import ml_collections
import optax

from ldm_jax import schedules
from ldm_jax.models import autoencoder as autoencoder_lib
from ldm_jax.models import bert_text
from ldm_jax.models import clip_text
from ldm_jax.models import discriminator as discriminator_lib
from ldm_jax.models import precision
from ldm_jax.models import unet as unet_lib
from ldm_jax.models.pooled_text import PooledText
from ldm_jax.train import optim

AUTOENCODER_CLASSES = ("AutoencoderKL", "VQModel")
TEXT_ENCODER_CLASSES = {"BERTEmbedder": bert_text, "CLIPTextTransformer": clip_text}
# text.tokenizer values that name a built-in vocabulary (anything else is a path or a kind).
BUILTIN_TOKENIZERS = ("mnist_pairs",)


def _fields(section: ml_collections.ConfigDict, *, has_attention: bool = True) -> dict:
  """Module keyword arguments of a model section: lists as tuples, the precision keys (dtype,
  param_dtype, remat, attention_impl given as strings) resolved by `models.precision`."""
  d = section.to_dict()
  d.pop("preset", None)
  fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()
            if k not in precision.PRECISION_KEYS}
  fields.update(precision.module_fields(d, has_attention=has_attention))
  return fields


def _preset(module, name, valid):
  builder = getattr(module, name, None)
  if builder is None or name.startswith("_"):
    raise ValueError(f"Unknown model preset {name!r}; valid choices: {', '.join(valid)}.")
  return builder


def autoencoder(model: ml_collections.ConfigDict):
  """An AutoencoderKL / VQModel (or preset of `ldm_jax.models.autoencoder`) with the fields given."""
  valid = AUTOENCODER_CLASSES + tuple(n for n in dir(autoencoder_lib) if n.isupper())
  return _preset(autoencoder_lib, model.preset, valid)(**_fields(model))


def discriminator(disc: ml_collections.ConfigDict):
  """A PatchGAN; it has no attention (attention_impl is validated, then unused), and its remat
  setting rematerialises the whole discriminator forward."""
  fields = _fields(disc, has_attention=False)
  cls = precision.maybe_remat(discriminator_lib.PatchDiscriminator, fields.pop("remat", "none"))
  return cls(**fields)


def unet(model: ml_collections.ConfigDict, *, in_channels: int, num_class_embeds: int | None,
         context_dim: int | None = None, concat_channels: int = 0):
  """A `ldm_jax.models.unet.UNet` (or preset) on latents with `in_channels` channels.

  context_dim: a text run's encoder width; model.cross_attention_dim None takes it, any other
  value must equal it.
  concat_channels: channels of a concat conditioning map c (LDM-SR: the image channels); the UNet
  then reads [z_t, c] (in_channels + concat_channels) and predicts in_channels.
  """
  valid = ("UNet",) + tuple(n for n in dir(unet_lib) if n.isupper())
  fields = _fields(model)
  fields.update(in_channels=in_channels + concat_channels, out_channels=in_channels,
                num_class_embeds=num_class_embeds)
  if context_dim is not None:
    given = fields.get("cross_attention_dim")
    if given is not None and given != context_dim:
      raise ValueError(f"model.cross_attention_dim={given} but the text encoder's width is "
                       f"{context_dim}; set --config.model.cross_attention_dim={context_dim} "
                       "(or leave it None).")
    fields["cross_attention_dim"] = context_dim
  return _preset(unet_lib, model.preset, valid)(**fields)


def text_encoder_presets() -> dict:
  """Every text encoder name `text.encoder.preset` takes -> its module class or preset."""
  names = {}
  for cls_name, module in TEXT_ENCODER_CLASSES.items():
    names[cls_name] = getattr(module, cls_name)
    names.update({n: getattr(module, n) for n in dir(module) if n.isupper() and
                  callable(getattr(module, n)) and not n.startswith("_")})
  return names


def tokenizer(text: ml_collections.ConfigDict):
  """The fixed-length tokenizer of a `text` section: "mnist_pairs" (a word-level vocabulary of
  the MNIST-pairs caption grammar, unknown words refused), "clip" (the embedded CLIP BPE), or a
  tokenizer folder / tokenizer.json / vocab.txt (`ldm_jax.text.load_tokenizer`)."""
  from ldm_jax import text as text_lib  # pylint: disable=import-outside-toplevel
  from ldm_jax.data import mnist_pairs  # pylint: disable=import-outside-toplevel
  name = text.tokenizer
  if name == "mnist_pairs":
    return text_lib.word_level_tokenizer(list(mnist_pairs.VOCABULARY), unknown="error",
                                         max_length=text.max_length)
  if name == "clip":
    return text_lib.load_tokenizer(kind="clip", max_length=text.max_length)
  if not isinstance(name, str) or not name or not os.path.exists(name):
    raise ValueError(f"text.tokenizer={name!r}: expected one of {BUILTIN_TOKENIZERS + ('clip',)} "
                     "or an existing tokenizer folder / tokenizer.json / vocab.txt.")
  kind = "word_level" if name.endswith(".json") else None
  return text_lib.load_tokenizer(name, kind=kind, max_length=text.max_length)


def text_encoder(text: ml_collections.ConfigDict, *, vocab_size: int, max_length: int):
  """The text encoder of a `text` section (a preset of TEXT_ENCODER_CLASSES' modules with the
  section's fields), sized to the tokenizer; wrapped in `PooledText` when text.pooled."""
  presets = text_encoder_presets()
  name = text.encoder.preset
  if name not in presets:
    raise ValueError(f"text.encoder.preset={name!r}; valid choices: {', '.join(sorted(presets))}.")
  fields = _fields(text.encoder)
  fields.update(vocab_size=vocab_size, max_length=max_length)
  module = presets[name](**fields)
  return PooledText(module) if text.pooled else module


def text_conditioner(text: ml_collections.ConfigDict, *, load_weights: bool = True):
  """(tokenizer, text encoder module, its pretrained params or None) of a `text` section: a
  diffusers folder's tokenizer and encoder (text.pretrained, e.g. SD's CLIP; params None when
  not load_weights), or `tokenizer(text)` and a new `text_encoder` sized to it."""
  if text.pretrained:
    from ldm_jax.text import prompts  # pylint: disable=import-outside-toplevel
    enc = prompts.load_prompt_encoder(text.pretrained, max_length=text.max_length or None)
    module = PooledText(enc.module) if text.pooled else enc.module
    params = ({"encoder": enc.params} if text.pooled else enc.params) if load_weights else None
    return enc.tokenizer, module, params
  tok = tokenizer(text)
  return tok, text_encoder(text, vocab_size=tok.get_vocab_size(),
                           max_length=tok.padding["length"]), None


def schedule(diffusion: ml_collections.ConfigDict) -> schedules.Schedule:
  kw = {}
  if diffusion.schedule != "cosine":
    kw = dict(beta_start=diffusion.beta_start, beta_end=diffusion.beta_end)
  s = schedules.get_schedule(diffusion.schedule, diffusion.num_timesteps, **kw)
  return schedules.rescale_zero_terminal_snr(s) if diffusion.zero_terminal_snr else s


def text_lr_scales(config: ml_collections.ConfigDict) -> dict:
  """{"text_encoder": text.lr_scale} for a text LDM that trains its encoder jointly, else {}."""
  text = config.get("text")
  if (config.stage != "latent_diffusion" or config.diffusion.conditioning != "text"
      or text is None or not text.train_encoder):
    return {}
  return {"text_encoder": float(text.get("lr_scale", 1.0))}


def optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer of a stage and its learning-rate schedule (for logging)."""
  tx = optim.make_optimizer(config.optim, text_lr_scales(config))
  if config.stage == "autoencoder":
    from ldm_jax.stages import autoencoder as ae_stage  # pylint: disable=import-outside-toplevel
    disc_optim = ml_collections.ConfigDict(config.optim.to_dict())
    disc_optim.learning_rate = config.disc_learning_rate
    tx = ae_stage.make_optimizer(tx, optim.make_optimizer(disc_optim))
  return tx, optim.learning_rate_schedule(config.optim)


def devices(config: ml_collections.ConfigDict):
  n = config.parallel.num_devices or jax.device_count()
  if n > jax.device_count():
    raise ValueError(f"parallel.num_devices={n} but only {jax.device_count()} devices exist.")
  return jax.devices()[:n]
