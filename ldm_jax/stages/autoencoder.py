"""Stage 1: the autoencoder objective (Rombach et al. 2022 sec. 3.1 and app. G; Esser et al. 2021).

For the KL autoencoder (CompVis' LPIPSWithDiscriminator, LPIPS off unless a perceptual function is
supplied):

  L_rec = sum_pixels |x - x_hat|  (or squared, "l2"),  per example
  L_nll = L_rec / exp(s) + s       with a learned scalar log-variance s (init 0)
  L_G   = E[L_nll] + w_kl E[KL(q(z|x) || N(0, I))] + lambda * d(step) * (-E[D(x_hat)])
  L_D   = d(step) * hinge(D(x), D(x_hat))
  lambda = w_disc * ||grad_{G_L} L_nll|| / (||grad_{G_L} (-E[D(x_hat)])|| + 1e-4)

with G_L the last decoder layer (`decoder/conv_out`) and d(step) = 1 after `disc_start`. The VQ
autoencoder follows VQLPIPSWithDiscriminator (taming / CompVis): the KL term becomes
w_codebook * (codebook + beta * commitment loss) and L_nll is the mean of L_rec over every pixel of
the batch, with no log-variance s (s stays in the parameter tree, untouched). Both of its terms are
per-element means; with the KL form's sum over pixels the nll would outweigh the codebook loss
H * W * C times and the codebook collapses (8 of 256 codes used on MNIST f4).

The trainable parameters are one tree {"autoencoder", "discriminator", "logvar"}; `loss_fn` returns
L_G + L_D where L_G sees the discriminator through stop_gradient and L_D sees x_hat through
stop_gradient, so one gradient trains both networks with their own objectives (the optimizer gives
the discriminator its own learning rate, `make_optimizer`).
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ldm_jax.data import to_float
from ldm_jax.models.autoencoder import AutoencoderKL, VQModel
from ldm_jax.stages import gan

REC_LOSSES = ("l1", "l2")
LAST_LAYER = ("decoder", "conv_out")


def init_params(ae: nn.Module, disc: nn.Module, rng, image_shape) -> dict:
  """Trainable parameters {"autoencoder", "discriminator", "logvar"} for images [B, H, W, C]."""
  ae_rng, disc_rng = jax.random.split(rng)
  x = jnp.zeros(image_shape, jnp.float32)
  return {"autoencoder": ae.init(ae_rng, x)["params"],
          "discriminator": disc.init(disc_rng, x)["params"],
          "logvar": jnp.zeros((), jnp.float32)}


def _replace_last(params, last):
  decoder = dict(params[LAST_LAYER[0]])
  decoder[LAST_LAYER[1]] = last
  return {**params, LAST_LAYER[0]: decoder}


def check_rec_loss(kind: str) -> None:
  if kind not in REC_LOSSES:
    raise ValueError(f"Unknown reconstruction loss {kind!r}; valid choices: {', '.join(REC_LOSSES)}.")


def reconstruction_loss(x, x_hat, kind: str = "l1"):
  """Per-pixel reconstruction error [B, H, W, C]: |x - x_hat| or (x - x_hat)^2."""
  check_rec_loss(kind)
  return jnp.abs(x - x_hat) if kind == "l1" else jnp.square(x - x_hat)


def perceptual_from_config(config) -> Callable | None:
  """LPIPS (x, x_hat) -> [B] from the `loss` section, or None when perceptual_weight is 0.

  loss.lpips_vgg: torchvision's VGG16 state dict (e.g. vgg16-397923af.pth); loss.lpips_lin: the
  lpips package's weights/v0.1/vgg.pth (or .npz / .safetensors of the same keys).
  """
  if config.perceptual_weight <= 0:
    return None
  vgg, lin = config.get("lpips_vgg", ""), config.get("lpips_lin", "")
  if not vgg or not lin:
    raise ValueError(f"loss.perceptual_weight={config.perceptual_weight} needs the LPIPS weights: set "
                     f"loss.lpips_vgg (torchvision VGG16 .pth, got {vgg!r}) and loss.lpips_lin "
                     f"(lpips weights/v0.1/vgg.pth, got {lin!r}), or loss.perceptual_weight = 0.")
  from ldm_jax.convert import lpips as lpips_convert  # pylint: disable=import-outside-toplevel
  return lpips_convert.perceptual_fn(lpips_convert.load_lpips(vgg, lin))


def make_loss_fn(ae: nn.Module, disc: nn.Module, config, perceptual_fn: Callable | None = None,
                 *, adversarial: bool = True):
  """Builds `loss_fn(params, batch, rng, extra) -> (loss, metrics)` for the train step.

  Args:
    ae: an AutoencoderKL or VQModel.
    disc: the PatchGAN discriminator.
    config: the `loss` section: rec_loss, kl_weight, codebook_weight, disc_weight, disc_start,
      disc_loss, perceptual_weight.
    perceptual_fn: optional (x, x_hat) -> [B] perceptual distance (e.g. LPIPS with user-supplied
      weights); used when config.perceptual_weight > 0.
    adversarial: False builds the loss of the steps before disc_start, L_nll + reg, without running
      the discriminator: there d(step) = 0, so it has the full loss' value and gradients (up to
      float32 reassociation) at the cost of the autoencoder alone. Valid only before disc_start
      (`ldm_jax.train.parallel.data_parallel`'s early_loss runs it there).
  The `extra` dict must hold "step" (int32 []) for the disc_start switch.
  """
  gan.check_disc_loss(config.disc_loss)
  check_rec_loss(config.rec_loss)
  if config.perceptual_weight > 0 and perceptual_fn is None:
    raise ValueError("loss.perceptual_weight > 0 needs a perceptual function (LPIPS weights, "
                     "see perceptual_from_config); none was supplied. Set loss.perceptual_weight = 0.")
  if not isinstance(ae, (AutoencoderKL, VQModel)):
    raise ValueError(f"Autoencoder must be an AutoencoderKL or VQModel, got {type(ae).__name__}.")
  # The regulariser's weight: KL (LDM's KL-reg) or codebook + commitment (VQ-reg).
  reg_weight = {"kl": config.kl_weight, "vq_loss": config.codebook_weight}[ae.regularizer]

  def decode(ae_params, z):
    return ae.apply({"params": ae_params}, z, method="decode_code")

  def nll_of(x, x_hat, logvar):
    rec = reconstruction_loss(x, x_hat, config.rec_loss)
    if perceptual_fn is not None and config.perceptual_weight > 0:
      rec = rec + config.perceptual_weight * perceptual_fn(x, x_hat)[:, None, None, None]
    if ae.regularizer == "vq_loss":  # VQLPIPSWithDiscriminator: mean over every pixel, no s
      return jnp.mean(rec), jnp.mean(rec)
    nll = rec / jnp.exp(logvar) + logvar
    return jnp.sum(nll) / x.shape[0], jnp.mean(rec)

  def loss_fn(params, batch, rng, extra):
    x = to_float(batch["image"])
    ae_params, disc_params, logvar = params["autoencoder"], params["discriminator"], params["logvar"]
    z, reg_loss = ae.apply({"params": ae_params}, x, rng, method="regularized_latents")
    metrics = {ae.regularizer: reg_loss}
    reg = reg_weight * reg_loss
    x_hat = decode(ae_params, z)
    nll_loss, rec_mean = nll_of(x, x_hat, logvar)
    metrics.update(rec_loss=rec_mean, nll_loss=nll_loss, logvar=logvar)
    if not adversarial:  # d(step) = 0: no discriminator forward, no lambda (read as 0, logged so)
      return nll_loss + reg, dict(metrics, d_weight=jnp.float32(0), disc_factor=jnp.float32(0))

    frozen_disc = jax.lax.stop_gradient(disc_params)
    g_loss = gan.generator_loss(disc.apply({"params": frozen_disc}, x_hat))
    # Adaptive weight from the gradients w.r.t. the last decoder layer G_L (Esser et al. eq. 7).
    last = ae_params[LAST_LAYER[0]][LAST_LAYER[1]]
    z_sg, logvar_sg = jax.lax.stop_gradient(z), jax.lax.stop_gradient(logvar)
    decode_last = lambda l: decode(_replace_last(ae_params, l), z_sg)
    def weight():
      grad_rec = jax.grad(lambda l: nll_of(x, decode_last(l), logvar_sg)[0])(last)
      grad_gan = jax.grad(
          lambda l: gan.generator_loss(disc.apply({"params": frozen_disc}, decode_last(l))))(last)
      return config.disc_weight * gan.adaptive_weight(grad_rec, grad_gan)

    d_factor = gan.adopt_weight(extra["step"], config.disc_start)
    # lambda is computed at every step and read as 0 before disc_start, not skipped by lax.cond:
    # XLA:CPU runs a convolution's weight gradient inside a conditional (or loop) up to ~100x
    # slower than at top level (experiments/benchmarks/nested_grads.py), so the cond cost the
    # GAN phase ~20% of its step and saved the first phase ~4%.
    d_weight = jnp.where(d_factor > 0, weight(), 0.0)
    loss_g = nll_loss + reg + d_weight * d_factor * g_loss

    logits_real = disc.apply({"params": disc_params}, x)
    logits_fake = disc.apply({"params": disc_params}, jax.lax.stop_gradient(x_hat))
    d_loss = gan.discriminator_loss(logits_real, logits_fake, config.disc_loss)
    loss = loss_g + d_factor * d_loss
    metrics.update(g_loss=g_loss, d_loss=d_loss, d_weight=d_weight, disc_factor=d_factor,
                   logits_real=jnp.mean(logits_real), logits_fake=jnp.mean(logits_fake))
    return loss, metrics

  return loss_fn


def make_optimizer(tx_autoencoder: optax.GradientTransformation,
                   tx_discriminator: optax.GradientTransformation) -> optax.GradientTransformation:
  """One optimizer over {"autoencoder", "logvar"} and {"discriminator"} with separate settings."""
  labels = lambda params: {k: jax.tree.map(lambda _: "disc" if k == "discriminator" else "ae", v)
                           for k, v in params.items()}
  return optax.multi_transform({"ae": tx_autoencoder, "disc": tx_discriminator}, labels)
