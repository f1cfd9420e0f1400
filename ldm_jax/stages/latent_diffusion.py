"""Stage 2: the latent diffusion objective (Rombach et al. 2022 sec. 3.2, eq. 2).

L_LDM = E_{z = s * E(x), eps, t} || eps - eps_theta(z_t, t, y) ||^2 (or the x0 / v target and any
weighting of `ldm_jax.diffusion.losses`), with the encoder E frozen and the latent scale factor s
chosen so that the latents have unit variance (app. D.1: s = 1 / std of the first batch's
latents, unless given). For classifier-free guidance (Ho & Salimans 2022) the class label is
replaced by the null label `num_classes` with probability `p_uncond`, so the model learns the
conditional and the unconditional denoiser at once.

The frozen autoencoder parameters travel in the train state's `extra["frozen"]` (sharded and
checkpointed with it, never updated); `loss_fn(params, batch, rng, extra)` reads them there.
Latents may be cached: a batch with "latent_mean" and "latent_logvar" skips the encoder.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import diffusion
from ldm_jax.data import to_float
from ldm_jax.models.autoencoder import AutoencoderKL, VQModel

CONDITIONINGS = ("none", "class")


def encode_latents(ae: nn.Module, ae_params, images, rng):
  """Unscaled latents z of uint8 images [B, H, W, C]: z ~ q(z|x) for KL, pre-quantised h for VQ."""
  x = to_float(images)
  if isinstance(ae, VQModel):
    return ae.apply({"params": ae_params}, x, method="encode").latents
  return ae.apply({"params": ae_params}, x, method="posterior").sample(rng)


def estimate_scale_factor(ae: nn.Module, ae_params, images, rng) -> float:
  """s = 1 / std(z) over a batch of uint8 images (LDM app. D.1), as a Python float."""
  z = jax.jit(lambda p, x, r: encode_latents(ae, p, x, r))(ae_params, images, rng)
  std = float(np.std(np.asarray(z, np.float64)))
  if not np.isfinite(std) or std <= 0:
    raise ValueError(f"Cannot estimate the latent scale factor: latent std is {std}.")
  return 1.0 / std


def drop_labels(rng, y, p_uncond: float, num_classes: int):
  """Replaces each label by the null label `num_classes` with probability p_uncond."""
  drop = jax.random.bernoulli(rng, p_uncond, y.shape)
  return jnp.where(drop, num_classes, y)


def make_loss_fn(unet: nn.Module, ae: nn.Module, schedule, config, scale_factor: float):
  """Builds `loss_fn(params, batch, rng, extra) -> (loss, metrics)` for the train step.

  Args:
    unet: the denoiser eps_theta (or x0 / v); for "class" conditioning its num_class_embeds must
      be num_classes + 1 (the extra label is the null class for guidance).
    ae: the frozen first stage; its params come from extra["frozen"].
    schedule: the noise schedule.
    config: the `diffusion` section: prediction_type, weighting, min_snr_gamma, conditioning,
      num_classes, p_uncond, and optionally loss_type ("l2" default, or "l1").
    scale_factor: s, multiplies the latents.
  """
  diffusion.parameterization.check_prediction_type(config.prediction_type)
  loss_type = config.get("loss_type", "l2")
  diffusion.losses.check_loss_type(loss_type)
  if config.weighting not in diffusion.WEIGHTINGS:
    raise ValueError(f"Unknown weighting {config.weighting!r}; valid choices: {diffusion.WEIGHTINGS}.")
  if config.conditioning not in CONDITIONINGS:
    raise ValueError(f"Unknown conditioning {config.conditioning!r}; valid choices: {CONDITIONINGS}.")
  if config.conditioning == "class" and unet.num_class_embeds != config.num_classes + 1:
    raise ValueError(f"Class-conditional UNet needs num_class_embeds = num_classes + 1 = "
                     f"{config.num_classes + 1} (the null label), got {unet.num_class_embeds}.")
  if not isinstance(ae, (AutoencoderKL, VQModel)):
    raise ValueError(f"First stage must be an AutoencoderKL or VQModel, got {type(ae).__name__}.")

  def loss_fn(params, batch, rng, extra):
    z_rng, drop_rng, diff_rng, dropout_rng = jax.random.split(rng, 4)
    if "latent_mean" in batch:
      mean, logvar = batch["latent_mean"], batch["latent_logvar"]
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(z_rng, mean.shape)
    else:
      z = encode_latents(ae, jax.lax.stop_gradient(extra["frozen"]), batch["image"], z_rng)
    z = z * scale_factor
    y = None
    if config.conditioning == "class":
      y = drop_labels(drop_rng, batch["label"], config.p_uncond, config.num_classes)
    model_fn = lambda x_t, t: unet.apply({"params": params}, x_t, t, y=y, train=True,
                                         rngs={"dropout": dropout_rng})
    per_example = diffusion.training_loss(
        model_fn, schedule, z, diff_rng, prediction_type=config.prediction_type,
        weighting=config.weighting, min_snr_gamma=config.min_snr_gamma, loss_type=loss_type)
    loss = jnp.mean(per_example)
    return loss, {"latent_std": jnp.std(z)}

  return loss_fn
