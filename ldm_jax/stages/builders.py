"""Networks, schedules and optimizers built from the sections of an experiment config."""

import jax
import ml_collections
import optax

from ldm_jax import schedules
from ldm_jax.models import autoencoder as autoencoder_lib
from ldm_jax.models import discriminator as discriminator_lib
from ldm_jax.models import precision
from ldm_jax.models import unet as unet_lib
from ldm_jax.train import optim

AUTOENCODER_CLASSES = ("AutoencoderKL", "VQModel")


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


def unet(model: ml_collections.ConfigDict, *, in_channels: int, num_class_embeds: int | None):
  """A `ldm_jax.models.unet.UNet` (or preset) on latents with `in_channels` channels."""
  valid = ("UNet",) + tuple(n for n in dir(unet_lib) if n.isupper())
  fields = _fields(model)
  fields.update(in_channels=in_channels, out_channels=in_channels, num_class_embeds=num_class_embeds)
  return _preset(unet_lib, model.preset, valid)(**fields)


def schedule(diffusion: ml_collections.ConfigDict) -> schedules.Schedule:
  kw = {}
  if diffusion.schedule != "cosine":
    kw = dict(beta_start=diffusion.beta_start, beta_end=diffusion.beta_end)
  s = schedules.get_schedule(diffusion.schedule, diffusion.num_timesteps, **kw)
  return schedules.rescale_zero_terminal_snr(s) if diffusion.zero_terminal_snr else s


def optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer of a stage and its learning-rate schedule (for logging)."""
  tx = optim.make_optimizer(config.optim)
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
