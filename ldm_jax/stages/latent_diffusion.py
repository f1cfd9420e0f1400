"""Stage 2: the latent diffusion objective (Rombach et al. 2022 sec. 3.2, eq. 2).

L_LDM = E_{z = s * E(x), eps, t} || eps - eps_theta(z_t, t, y) ||^2 (or the x0 / v target and any
weighting of `ldm_jax.diffusion.losses`), with the encoder E frozen and the latent scale factor s
chosen so that the latents have unit variance (app. D.1: s = 1 / std of the first batch's
latents, unless given). For classifier-free guidance (Ho & Salimans 2022) the class label is
replaced by the null label `num_classes` with probability `p_uncond`, so the model learns the
conditional and the unconditional denoiser at once.

Text conditioning (LDM sec. 3.3, txt2img): y is a caption's token ids, tau_theta(y) a transformer
text encoder whose context [B, L, D] the UNet's cross-attention reads. The encoder is trained
jointly with the UNet (params {"unet", "text_encoder"}, LDM's BERT) or frozen (its params in
extra["text_encoder"], as SD fine-tuning keeps CLIP); for guidance a caption is replaced by the
empty prompt's ids with probability `p_uncond` (diffusers' and SD's unconditional branch).

Concat conditioning (LDM-SR, sec. 4.4): c = D(x), a named degradation of the batch's images (bicubic
x4 downsampling), resized to the latent grid, is concatenated to z_t along channels
(`ldm_jax.diffusion.concat`): eps_theta([z_t, c], t), the UNet reading latent + image channels.
For guidance c is replaced by zeros with probability `concat.p_drop`. With `concat.class_labels`
the UNet also reads the class label (dropped to the null label with probability `p_uncond`).
Inpainting (SD-inpainting, degradation "inpaint_large_masks"): c = [m, s * E(x * (m < 0.5))], a
random mask on the latent grid and the frozen encoder's latents of the masked image, the UNet
reading C_z + 1 + C_z channels; for guidance m is set to ones (nothing known) with probability
`concat.p_drop` (`inpainting_conditioning`).
Semantic synthesis (LDM sec. 4.3.2, degradation "segmentation_pairs"): c is the class map of the
batch's images and labels, one-hot and averaged to the latent grid (K class fractions per latent
pixel, `concat.segmentation_to_latent_grid`), zeros with probability `concat.p_drop`.

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
from ldm_jax.diffusion import concat as concat_lib
from ldm_jax.models.autoencoder import AutoencoderKL, VQModel
from ldm_jax.models.unet import concat_conditioning

CONDITIONINGS = ("none", "class", "text", "concat")


def encode_latents(ae: nn.Module, ae_params, images, rng):
  """Unscaled latents z of uint8 images [B, H, W, C]: z ~ q(z|x) for KL, pre-quantised h for VQ."""
  return ae.apply({"params": ae_params}, to_float(images), rng, method="latents")


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


def drop_captions(rng, ids, p_uncond: float, null_ids):
  """Replaces each row of token ids [B, L] by the empty prompt's ids [L] with probability p_uncond."""
  drop = jax.random.bernoulli(rng, p_uncond, ids.shape[:1])
  return jnp.where(drop[:, None], jnp.asarray(null_ids, ids.dtype)[None], ids)


def make_loss_fn(unet: nn.Module, ae: nn.Module, schedule, config, scale_factor: float, *,
                 text_encoder: nn.Module | None = None, null_ids=None, train_encoder: bool = True,
                 concat=None):
  """Builds `loss_fn(params, batch, rng, extra) -> (loss, metrics)` for the train step.

  Args:
    unet: the denoiser eps_theta (or x0 / v); for "class" conditioning its num_class_embeds must
      be num_classes + 1 (the extra label is the null class for guidance).
    ae: the frozen first stage; its params come from extra["frozen"].
    schedule: the noise schedule.
    config: the `diffusion` section: prediction_type, weighting, min_snr_gamma, conditioning,
      num_classes, p_uncond, and optionally loss_type ("l2" default, or "l1").
    scale_factor: s, multiplies the latents.
    text_encoder, null_ids, train_encoder: "text" conditioning only: tau_theta, the empty
      prompt's token ids [L] (caption dropout), and whether tau_theta is trained (params
      {"unet", "text_encoder"}) or frozen (params {"unet"}, tau_theta's in extra["text_encoder"]).
      The batch then carries "tokens" int32 [B, L].
    concat: "concat" conditioning only: the `concat` section (degradation, p_drop, class_labels).
      The UNet's in_channels must be the latent channels + the image channels (inpainting: 2 x the
      latent channels + 1, `concat.concat_channels`). c is computed from
      batch["image"] (also when the latents are cached); with class_labels the batch's "label"
      is read as for "class" conditioning. A segmentation degradation reads batch["label"] too
      (the map's digit classes) and needs K = its classes more UNet input channels.
  """
  diffusion.parameterization.check_prediction_type(config.prediction_type)
  loss_type = config.get("loss_type", "l2")
  diffusion.losses.check_loss_type(loss_type)
  if config.weighting not in diffusion.WEIGHTINGS:
    raise ValueError(f"Unknown weighting {config.weighting!r}; valid choices: {diffusion.WEIGHTINGS}.")
  if config.conditioning not in CONDITIONINGS:
    raise ValueError(f"Unknown conditioning {config.conditioning!r}; valid choices: {CONDITIONINGS}.")
  labels = uses_labels(config, concat)
  if labels and unet.num_class_embeds != config.num_classes + 1:
    raise ValueError(f"Class-conditional UNet needs num_class_embeds = num_classes + 1 = "
                     f"{config.num_classes + 1} (the null label), got {unet.num_class_embeds}.")
  text = config.conditioning == "text"
  if text and (text_encoder is None or null_ids is None):
    raise ValueError("diffusion.conditioning='text' needs a text encoder and the empty prompt's "
                     "token ids (a `text` config section).")
  if text and not unet.has_cross_attention:
    raise ValueError("diffusion.conditioning='text' needs a UNet with cross-attention "
                     "(model.cross_attention_dim and CrossAttn* block types).")
  if not isinstance(ae, (AutoencoderKL, VQModel)):
    raise ValueError(f"First stage must be an AutoencoderKL or VQModel, got {type(ae).__name__}.")
  inpainting = False
  if config.conditioning == "concat":
    _check_concat(unet, ae, concat)
    inpainting = concat_lib.is_inpainting(concat.degradation)

  def loss_fn(params, batch, rng, extra):
    z_rng, drop_rng, diff_rng, dropout_rng = jax.random.split(rng, 4)
    if "latent_mean" in batch:
      mean, logvar = batch["latent_mean"], batch["latent_logvar"]
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(z_rng, mean.shape)
    else:
      z = encode_latents(ae, jax.lax.stop_gradient(extra["frozen"]), batch["image"], z_rng)
    z = z * scale_factor
    y, context, c, unet_params = None, None, None, params
    if labels:  # "class", or "concat" with class labels (hybrid)
      y = drop_labels(drop_rng, batch["label"], config.p_uncond, config.num_classes)
    if text:
      ids = drop_captions(drop_rng, batch["tokens"], config.p_uncond, null_ids)
      text_params = (params["text_encoder"] if train_encoder
                     else jax.lax.stop_gradient(extra["text_encoder"]))
      context = text_encoder.apply({"params": text_params}, ids, train=train_encoder,
                                   rngs={"dropout": jax.random.fold_in(dropout_rng, 1)})
      unet_params = params["unet"]
    elif inpainting:  # c = [m, s E(x * (m < 0.5))], m = 1 everywhere with prob. p_drop
      c = inpainting_conditioning(ae, jax.lax.stop_gradient(extra["frozen"]), concat,
                                  to_float(batch["image"]), drop_rng, jax.random.fold_in(z_rng, 1),
                                  scale_factor)
    elif config.conditioning == "concat":  # c = D(x) on the latent grid, zeros with prob. p_drop
      # (dropped independently of a hybrid model's labels); a segmentation map reads the labels
      c = concat_lib.conditioning_map(concat.degradation, jax.random.fold_in(drop_rng, 1),
                                      to_float(batch["image"]), z.shape[1:3], batch.get("label"))
      c = concat_lib.drop(jax.random.fold_in(drop_rng, 2), c, concat.p_drop)

    def model_fn(x_t, t):
      x_in = x_t if c is None else concat_conditioning(x_t, c)
      return unet.apply({"params": unet_params}, x_in, t, y=y, context=context, train=True,
                        rngs={"dropout": dropout_rng})

    per_example = diffusion.training_loss(
        model_fn, schedule, z, diff_rng, prediction_type=config.prediction_type,
        weighting=config.weighting, min_snr_gamma=config.min_snr_gamma, loss_type=loss_type)
    loss = jnp.mean(per_example)
    return loss, {"latent_std": jnp.std(z)}

  return loss_fn


def inpainting_conditioning(ae: nn.Module, ae_params, concat, x, mask_rng, encode_rng,
                            scale_factor: float):
  """SD-inpainting's c [B, h, w, 1 + C_z] for images x [B, H, W, C] in [-1, 1]: the mask
  m = D(x) of the `concat` section's degradation (from fold_in(mask_rng, 1)), replaced by ones
  (guidance's null: everything masked) with probability concat.p_drop (fold_in(mask_rng, 2)); then
  [m on the latent grid, s * E(x * (m < 0.5))], E sampling q(z | x) from encode_rng as for z."""
  m = concat_lib.get_degradation(concat.degradation).apply(jax.random.fold_in(mask_rng, 1), x)
  m = concat_lib.null_mask(jax.random.fold_in(mask_rng, 2), m, concat.p_drop)
  encode = lambda v: ae.apply({"params": ae_params}, v, encode_rng, method="latents") * scale_factor
  return concat_lib.inpainting_conditioning(encode, x, m)


def uses_labels(config, concat=None) -> bool:
  """Whether the UNet reads class labels: "class" conditioning, or "concat" with class_labels."""
  if config.conditioning == "concat":
    return bool(concat is not None and concat.get("class_labels", False))
  return config.conditioning == "class"


def _check_concat(unet, ae, concat) -> None:
  """The `concat` section names a known degradation; the UNet reads z_t and c and predicts z."""
  if concat is None:
    raise ValueError("diffusion.conditioning='concat' needs a `concat` section (degradation, "
                     "p_drop): start from experiments/configs/mnist_ldm.py.")
  c = concat_lib.concat_channels(concat.degradation, ae.in_channels, ae.latent_channels)
  want = ae.latent_channels + c
  what = concat_lib.unet_inputs(concat.degradation, ae.in_channels, ae.latent_channels)
  if unet.in_channels != want or unet.out_channels != ae.latent_channels:
    raise ValueError(f"diffusion.conditioning='concat' with concat.degradation="
                     f"{concat.degradation!r}: the UNet must read {what} = {want} and predict "
                     f"{ae.latent_channels}, got in_channels={unet.in_channels}, "
                     f"out_channels={unet.out_channels}.")
