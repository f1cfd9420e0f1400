"""The latent diffusion objective: latent scale factor, guidance label dropout, frozen first stage,
text conditioning, and concat conditioning (LDM-SR, SD-inpainting)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ldm_jax import diffusion, schedules
from ldm_jax.data import to_float
from ldm_jax.models.autoencoder import KL_TINY
from ldm_jax.models.unet import UNet
from ldm_jax.stages import latent_diffusion as ldm_stage


def _diffusion_config(**kw):
  c = ml_collections.ConfigDict(dict(prediction_type="epsilon", weighting="simple", min_snr_gamma=5.0,
                                     conditioning="class", num_classes=10, p_uncond=0.1))
  c.update(kw)
  return c


def _unet(num_class_embeds=11):
  return UNet(in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
              down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
              mid_block_type="UNetMidBlock2D", mid_block_attention=False, num_attention_heads=None,
              attention_head_dim=8, cross_attention_dim=None, norm_num_groups=8,
              num_class_embeds=num_class_embeds)


@pytest.fixture(scope="module")
def first_stage():
  ae = KL_TINY(in_channels=1, out_channels=1)
  params = ae.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), None)["params"]
  images = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 1)).astype(np.uint8)
  return ae, params, images


def test_scale_factor_gives_unit_variance_latents(first_stage):
  ae, params, images = first_stage
  s = ldm_stage.estimate_scale_factor(ae, params, images, jax.random.key(3))
  z = ldm_stage.encode_latents(ae, params, images, jax.random.key(3))
  np.testing.assert_allclose(np.std(np.asarray(z, np.float64) * s), 1.0, rtol=1e-5)
  # The latents are samples of q(z|x): mean + std * eps with that rng, computed independently.
  mean, logvar = ae.apply({"params": params}, to_float(images), method="encode")
  eps = jax.random.normal(jax.random.key(3), mean.shape)
  np.testing.assert_allclose(z, mean + jnp.exp(0.5 * jnp.clip(logvar, -30, 20)) * eps, rtol=1e-5, atol=1e-6)


def test_label_dropout_rate_and_null_label():
  y = jnp.zeros((20000,), jnp.int32) + 3
  out = np.asarray(ldm_stage.drop_labels(jax.random.key(0), y, 0.1, 10))
  assert set(np.unique(out)) == {3, 10}
  rate = np.mean(out == 10)
  assert abs(rate - 0.1) < 5 * np.sqrt(0.1 * 0.9 / y.size)


def test_loss_is_the_core_diffusion_loss_on_scaled_latents_and_ignores_frozen_grads(first_stage):
  ae, ae_params, images = first_stage
  unet = _unet()
  schedule = schedules.get_schedule("linear", 100)
  cfg = _diffusion_config(p_uncond=0.0)
  params = unet.init(jax.random.key(1), jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)), y=jnp.zeros((1,), jnp.int32))["params"]
  labels = np.arange(16, dtype=np.int32) % 10
  batch = {"image": images, "label": labels}
  loss_fn = ldm_stage.make_loss_fn(unet, ae, schedule, cfg, scale_factor=0.7)
  rng = jax.random.key(5)
  loss, _ = jax.jit(loss_fn)(params, batch, rng, {"frozen": ae_params})

  # Independent reconstruction of the same computation with the documented key split.
  z_rng, _, diff_rng, _ = jax.random.split(rng, 4)
  z = 0.7 * ldm_stage.encode_latents(ae, ae_params, images, z_rng)
  model_fn = lambda x, t: unet.apply({"params": params}, x, t, y=jnp.asarray(labels))
  want = jnp.mean(diffusion.training_loss(model_fn, schedule, z, diff_rng))
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)

  grads = jax.jit(jax.grad(lambda e: loss_fn(params, batch, rng, {"frozen": e})[0]))(ae_params)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))


def test_cached_latents_skip_the_encoder(first_stage):
  ae, ae_params, images = first_stage
  unet = _unet(num_class_embeds=None)
  schedule = schedules.get_schedule("cosine", 50)
  cfg = _diffusion_config(conditioning="none", prediction_type="v_prediction", weighting="min_snr")
  params = unet.init(jax.random.key(1), jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)))["params"]
  mean, logvar = ae.apply({"params": ae_params}, to_float(images), method="encode")
  loss_fn = ldm_stage.make_loss_fn(unet, ae, schedule, cfg, scale_factor=1.0)
  cached = jax.jit(loss_fn)(params, {"latent_mean": mean, "latent_logvar": logvar}, jax.random.key(2), {})[0]
  encoded = jax.jit(loss_fn)(params, {"image": images}, jax.random.key(2), {"frozen": ae_params})[0]
  np.testing.assert_allclose(float(cached), float(encoded), rtol=1e-4)


def test_bad_configs_raise(first_stage):
  ae, _, _ = first_stage
  schedule = schedules.get_schedule("linear", 10)
  with pytest.raises(ValueError, match="num_class_embeds = num_classes \\+ 1 = 11"):
    ldm_stage.make_loss_fn(_unet(10), ae, schedule, _diffusion_config(), 1.0)
  with pytest.raises(ValueError, match="valid choices"):
    ldm_stage.make_loss_fn(_unet(), ae, schedule, _diffusion_config(conditioning="caption"), 1.0)
  with pytest.raises(ValueError, match="valid choices"):
    ldm_stage.make_loss_fn(_unet(), ae, schedule, _diffusion_config(weighting="p2"), 1.0)


# ---------------------------------------------------------------------------------------------
# Text conditioning: a jointly trained or frozen encoder, caption dropout to the empty prompt


def _text_parts():
  from ldm_jax.models.bert_text import BERT_TINY  # pylint: disable=import-outside-toplevel
  encoder = BERT_TINY(vocab_size=20, max_length=6, width=16, layers=1, heads=2, head_dim=8, mlp_dim=32)
  unet = UNet(in_channels=4, out_channels=4, block_out_channels=(16,), layers_per_block=1,
              down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
              mid_block_type=None, attention_head_dim=8, cross_attention_dim=16, norm_num_groups=8)
  ids = jnp.asarray(np.random.default_rng(0).integers(4, 20, (16, 6)), jnp.int32)
  null_ids = jnp.asarray([2, 3, 0, 0, 0, 0], jnp.int32)
  return encoder, unet, ids, null_ids


def test_caption_dropout_rate_and_empty_prompt_rows():
  ids = jnp.tile(jnp.arange(5, 11, dtype=jnp.int32)[None], (20000, 1))
  null = jnp.asarray([2, 3, 0, 0, 0, 0], jnp.int32)
  out = np.asarray(ldm_stage.drop_captions(jax.random.key(0), ids, 0.1, null))
  dropped = np.all(out == np.asarray(null), axis=1)
  kept = np.all(out == np.asarray(ids[0]), axis=1)
  assert np.all(dropped | kept)  # whole rows: the caption or the empty prompt, nothing mixed
  assert abs(dropped.mean() - 0.1) < 5 * np.sqrt(0.1 * 0.9 / len(out))


@pytest.mark.parametrize("train_encoder", [True, False])
def test_text_loss_reads_the_encoder_context_and_trains_it_only_when_joint(first_stage, train_encoder):
  ae, ae_params, images = first_stage
  encoder, unet, ids, null_ids = _text_parts()
  d = _diffusion_config(conditioning="text", p_uncond=0.0)
  loss_fn = ldm_stage.make_loss_fn(unet, ae, schedules.get_schedule("linear", 100), d, 0.5,
                                   text_encoder=encoder, null_ids=null_ids,
                                   train_encoder=train_encoder)
  text_params = encoder.init(jax.random.key(1), ids[:1])["params"]
  unet_params = unet.init(jax.random.key(2), jnp.zeros((1, 4, 4, 4)), jnp.zeros((1,)),
                          context=jnp.zeros((1, 6, 16)))["params"]
  params = {"unet": unet_params}
  extra = {"frozen": ae_params}
  if train_encoder:
    params["text_encoder"] = text_params
  else:
    extra["text_encoder"] = text_params
  batch = {"image": images, "tokens": ids}
  rng = jax.random.key(5)
  (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng, extra)
  # The same loss computed by hand: the diffusion loss of the UNet on the encoder's context.
  z_rng, _, diff_rng, dropout_rng = jax.random.split(rng, 4)
  z = ldm_stage.encode_latents(ae, ae_params, images, z_rng) * 0.5
  context = encoder.apply({"params": text_params}, ids)
  model_fn = lambda x_t, t: unet.apply({"params": unet_params}, x_t, t, context=context)
  want = jnp.mean(diffusion.training_loss(model_fn, schedules.get_schedule("linear", 100), z, diff_rng,
                                          prediction_type="epsilon", weighting="simple"))
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  # Other captions give another loss (the context is really read).
  other = dict(batch, tokens=jnp.roll(ids, 1, axis=0))
  assert abs(float(loss_fn(params, other, rng, extra)[0]) - float(loss)) > 1e-6
  if train_encoder:  # LDM: the encoder learns with the UNet
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads["text_encoder"])]
    assert max(norms) > 0
  else:  # SD fine-tuning: frozen, no gradient path into it
    assert set(grads) == {"unet"}


def test_text_loss_needs_an_encoder_and_a_cross_attention_unet(first_stage):
  ae, _, _ = first_stage
  encoder, unet, _, null_ids = _text_parts()
  d = _diffusion_config(conditioning="text")
  with pytest.raises(ValueError, match="text encoder"):
    ldm_stage.make_loss_fn(unet, ae, schedules.get_schedule("linear", 100), d, 1.0)
  with pytest.raises(ValueError, match="cross-attention"):
    ldm_stage.make_loss_fn(_unet(None), ae, schedules.get_schedule("linear", 100), d, 1.0,
                           text_encoder=encoder, null_ids=null_ids)


def test_pooled_text_is_the_mean_of_the_encoder_context():
  from ldm_jax.models.pooled_text import PooledText  # pylint: disable=import-outside-toplevel
  encoder, _, ids, _ = _text_parts()
  pooled = PooledText(encoder)
  params = pooled.init(jax.random.key(0), ids)["params"]
  out = pooled.apply({"params": params}, ids)
  full = encoder.apply({"params": params["encoder"]}, ids)
  assert out.shape == (16, 1, 16)
  np.testing.assert_allclose(out[:, 0], np.asarray(full, np.float64).mean(axis=1), rtol=1e-5, atol=1e-6)
  assert (pooled.vocab_size, pooled.max_length, pooled.width) == (20, 6, 16)


# ---------------------------------------------------------------------------------------------
# Concat conditioning (LDM-SR): c = bicubic_x4(x) on the latent grid, concatenated to z_t


def _concat_parts(first_stage, degradation="bicubic_x4", num_class_embeds=None):
  """A UNet reading [z_t, c] for the concat degradation (SR: 4 latent + 1 image channels;
  inpainting: 4 + 1 + 4; segmentation: 4 + 11) built as run.py builds it, its params, and cached
  latents of the images (so c can change while z, hence z_t, stays fixed)."""
  from ldm_jax.diffusion import concat  # pylint: disable=import-outside-toplevel
  from ldm_jax.stages import builders  # pylint: disable=import-outside-toplevel
  ae, ae_params, images = first_stage
  model = ml_collections.ConfigDict(dict(
      preset="UNet", block_out_channels=(16,), layers_per_block=1, down_block_types=("DownBlock2D",),
      up_block_types=("UpBlock2D",), mid_block_type=None, norm_num_groups=8))
  channels = concat.concat_channels(degradation, ae.in_channels, ae.latent_channels)
  unet = builders.unet(model, in_channels=ae.latent_channels, num_class_embeds=num_class_embeds,
                       concat_channels=channels)
  y = None if num_class_embeds is None else jnp.zeros((1,), jnp.int32)
  params = nn.meta.unbox(unet.init(jax.random.key(1), jnp.zeros((1, 8, 8, ae.latent_channels + channels)),
                                   jnp.zeros((1,)), y=y)["params"])
  mean, logvar = ae.apply({"params": ae_params}, to_float(images), method="encode")
  return unet, params, mean, logvar


def test_concat_unet_reads_latent_plus_image_channels(first_stage):
  unet, params, _, _ = _concat_parts(first_stage)
  assert (unet.in_channels, unet.out_channels) == (4 + 1, 4)
  assert params["conv_in"]["kernel"].shape[2] == 5  # the first conv sees [z_t, c]
  assert params["conv_out"]["kernel"].shape[3] == 4  # and predicts eps of z only


def test_concat_loss_feeds_the_low_res_image_and_p_drop_1_feeds_zeros(first_stage):
  from ldm_jax.diffusion import concat  # pylint: disable=import-outside-toplevel
  from ldm_jax.models.unet import concat_conditioning  # pylint: disable=import-outside-toplevel
  ae, _, images = first_stage
  unet, params, mean, logvar = _concat_parts(first_stage)
  schedule = schedules.get_schedule("linear", 100)
  other = images[::-1].copy()  # other images, the same latents: only c changes
  rng = jax.random.key(5)

  def loss(p_drop, imgs):
    cfg = _diffusion_config(conditioning="concat")
    section = ml_collections.ConfigDict(dict(degradation="bicubic_x4", p_drop=p_drop))
    loss_fn = ldm_stage.make_loss_fn(unet, ae, schedule, cfg, 0.7, concat=section)
    batch = {"latent_mean": mean, "latent_logvar": logvar, "image": imgs}
    return float(jax.jit(loss_fn)(params, batch, rng, {})[0])

  # The same computation by hand (the documented key split): eps_theta([z_t, c], t) with
  # c = bicubic_x4(x) resized from 4x4 to the 8x8 latent grid, or zeros.
  z_rng, _, diff_rng, _ = jax.random.split(rng, 4)
  z = 0.7 * (mean + jnp.exp(0.5 * logvar) * jax.random.normal(z_rng, mean.shape))

  def want(c):
    model_fn = lambda x, t: unet.apply({"params": params}, concat_conditioning(x, c), t)
    return float(jnp.mean(diffusion.training_loss(model_fn, schedule, z, diff_rng)))

  c = concat.to_latent_grid(concat.bicubic_x4(None, to_float(images)), (8, 8))
  assert c.shape == (16, 8, 8, 1)
  np.testing.assert_allclose(loss(0.0, images), want(c), rtol=1e-5)
  np.testing.assert_allclose(loss(1.0, images), want(jnp.zeros_like(c)), rtol=1e-5)
  assert abs(loss(0.0, other) - loss(0.0, images)) > 1e-4  # the low-res image reaches the UNet
  assert loss(1.0, other) == loss(1.0, images)  # dropped: c is zeros whatever the images


def test_hybrid_concat_and_class_loss_reads_both(first_stage):
  from ldm_jax.diffusion import concat  # pylint: disable=import-outside-toplevel
  from ldm_jax.models.unet import concat_conditioning  # pylint: disable=import-outside-toplevel
  ae, _, images = first_stage
  unet, params, mean, logvar = _concat_parts(first_stage, num_class_embeds=11)
  schedule = schedules.get_schedule("linear", 100)
  cfg = _diffusion_config(conditioning="concat", p_uncond=0.0)
  section = ml_collections.ConfigDict(dict(degradation="bicubic_x4", p_drop=0.0, class_labels=True))
  loss_fn = jax.jit(ldm_stage.make_loss_fn(unet, ae, schedule, cfg, 0.7, concat=section))
  rng = jax.random.key(6)
  labels = np.arange(16, dtype=np.int32) % 10
  loss = lambda y, imgs: float(loss_fn(params, {"latent_mean": mean, "latent_logvar": logvar,
                                                "image": imgs, "label": y}, rng, {})[0])
  z_rng, _, diff_rng, _ = jax.random.split(rng, 4)
  z = 0.7 * (mean + jnp.exp(0.5 * logvar) * jax.random.normal(z_rng, mean.shape))
  c = concat.to_latent_grid(concat.bicubic_x4(None, to_float(images)), (8, 8))
  model_fn = lambda x, t: unet.apply({"params": params}, concat_conditioning(x, c), t,
                                     y=jnp.asarray(labels))
  want = float(jnp.mean(diffusion.training_loss(model_fn, schedule, z, diff_rng)))
  np.testing.assert_allclose(loss(labels, images), want, rtol=1e-5)
  assert abs(loss((labels + 1) % 10, images) - want) > 1e-5  # the labels reach the UNet
  assert abs(loss(labels, images[::-1].copy()) - want) > 1e-5  # and so does c
  with pytest.raises(ValueError, match="num_class_embeds = num_classes \\+ 1 = 11"):
    ldm_stage.make_loss_fn(_concat_parts(first_stage)[0], ae, schedule, cfg, 0.7, concat=section)


# Inpainting (SD-inpainting): c = [m, s E(x * (m < 0.5))] concatenated to z_t, 4 + 1 + 4 channels


def test_inpainting_loss_reads_the_mask_and_the_masked_image_latents(first_stage):
  from ldm_jax.diffusion import masks  # pylint: disable=import-outside-toplevel
  from ldm_jax.models.unet import concat_conditioning  # pylint: disable=import-outside-toplevel
  ae, ae_params, images = first_stage
  unet, params, mean, logvar = _concat_parts(first_stage, "inpaint_large_masks")
  assert (unet.in_channels, unet.out_channels) == (4 + 1 + 4, 4)
  schedule = schedules.get_schedule("linear", 100)
  rng = jax.random.key(5)
  cfg = _diffusion_config(conditioning="concat")

  def loss(p_drop, imgs):
    section = ml_collections.ConfigDict(dict(degradation="inpaint_large_masks", p_drop=p_drop))
    loss_fn = ldm_stage.make_loss_fn(unet, ae, schedule, cfg, 0.7, concat=section)
    batch = {"latent_mean": mean, "latent_logvar": logvar, "image": imgs}
    return float(jax.jit(loss_fn)(params, batch, rng, {"frozen": ae_params})[0])

  # By hand (the documented keys): m from fold_in(drop_rng, 1), the masked image's latents
  # sampled from fold_in(z_rng, 1) and scaled by s = 0.7, m subsampled to the 8 x 8 grid (f = 2).
  z_rng, drop_rng, diff_rng, _ = jax.random.split(rng, 4)
  z = 0.7 * (mean + jnp.exp(0.5 * logvar) * jax.random.normal(z_rng, mean.shape))
  x = np.asarray(to_float(images))
  m = np.asarray(masks.large_masks(jax.random.fold_in(drop_rng, 1), (16, 16, 16)))
  assert 0 < m.mean() < 1

  def c_of(m, x):
    z_masked = ae.apply({"params": ae_params}, jnp.asarray(np.where(m == 1, 0.0, x)),
                        jax.random.fold_in(z_rng, 1), method="latents")
    return jnp.concatenate([m[:, ::2, ::2], 0.7 * z_masked], -1)

  def want(c):
    model_fn = lambda v, t: unet.apply({"params": params}, concat_conditioning(v, c), t)
    return float(jnp.mean(diffusion.training_loss(model_fn, schedule, z, diff_rng)))

  c = c_of(m, x)
  np.testing.assert_allclose(loss(0.0, images), want(c), rtol=1e-5)
  assert abs(want(c.at[..., :1].set(1.0 - c[..., :1])) - want(c)) > 1e-5  # the mask channel counts
  # Pixels under the mask do not reach the UNet; pixels outside it do (z_t fixed: cached latents).
  inside, outside = images.copy(), images.copy()
  inside[m == 1] = 255 - inside[m == 1]
  outside[m == 0] = 255 - outside[m == 0]
  assert loss(0.0, inside) == loss(0.0, images)
  assert abs(loss(0.0, outside) - loss(0.0, images)) > 1e-5
  # p_drop = 1: the null conditioning, everything masked (m = 1, masked image 0) for any images.
  np.testing.assert_allclose(loss(1.0, images), want(c_of(np.ones_like(m), x)), rtol=1e-5)
  assert loss(1.0, outside) == loss(1.0, images)


def test_inpainting_loss_needs_the_mask_channels(first_stage):
  ae, _, _ = first_stage
  schedule = schedules.get_schedule("linear", 10)
  cfg = _diffusion_config(conditioning="concat")
  section = ml_collections.ConfigDict(dict(degradation="inpaint_large_masks", p_drop=0.0))
  sr_unet, _, _, _ = _concat_parts(first_stage)  # [z_t, image]: 5 channels
  with pytest.raises(ValueError, match=r"degradation='inpaint_large_masks': the UNet must read "
                     r"latent \+ mask \+ masked-image latent channels = 4 \+ 1 \+ 4 = 9 and predict 4, "
                     r"got in_channels=5"):
    ldm_stage.make_loss_fn(sr_unet, ae, schedule, cfg, 1.0, concat=section)
  section.degradation = "bicubic_x4"
  with pytest.raises(ValueError, match=r"latent \+ image channels = 4 \+ 1 = 5 .* got in_channels=9"):
    ldm_stage.make_loss_fn(_concat_parts(first_stage, "inpaint_large_masks")[0], ae, schedule, cfg, 1.0, concat=section)


def test_concat_loss_needs_its_section_and_matching_channels(first_stage):
  ae, _, _ = first_stage
  schedule = schedules.get_schedule("linear", 10)
  cfg = _diffusion_config(conditioning="concat")
  section = ml_collections.ConfigDict(dict(degradation="bicubic_x4", p_drop=0.0))
  with pytest.raises(ValueError, match="in_channels=4"):  # a UNet on z only
    ldm_stage.make_loss_fn(_unet(None), ae, schedule, cfg, 1.0, concat=section)
  unet, _, _, _ = _concat_parts(first_stage)
  with pytest.raises(ValueError, match="needs a `concat` section"):
    ldm_stage.make_loss_fn(unet, ae, schedule, cfg, 1.0)
  section.degradation = "nearest_x4"
  with pytest.raises(ValueError, match="valid choices: bicubic_x4"):
    ldm_stage.make_loss_fn(unet, ae, schedule, cfg, 1.0, concat=section)


# Semantic synthesis (LDM sec. 4.3.2): c = the stroke map's class fractions on the latent grid


def test_segmentation_loss_reads_the_map_of_images_and_labels(first_stage):
  from ldm_jax.models.unet import concat_conditioning  # pylint: disable=import-outside-toplevel
  ae, _, images = first_stage
  unet, params, mean, logvar = _concat_parts(first_stage, "segmentation_pairs")
  assert (unet.in_channels, unet.out_channels) == (4 + 11, 4)
  schedule = schedules.get_schedule("linear", 100)
  rng = jax.random.key(7)
  labels = (np.arange(16, dtype=np.int32) * 7) % 100  # 10 * left + right

  cfg = _diffusion_config(conditioning="concat")
  loss_fns = {p: jax.jit(ldm_stage.make_loss_fn(  # one compile per p_drop
      unet, ae, schedule, cfg, 0.7, concat=ml_collections.ConfigDict(
          dict(degradation="segmentation_pairs", p_drop=p)))) for p in (0.0, 1.0)}

  def loss(p_drop, imgs, y):
    batch = {"latent_mean": mean, "latent_logvar": logvar, "image": imgs, "label": y}
    return float(loss_fns[p_drop](params, batch, rng, {})[0])

  # By hand, in numpy: s = left / right digit + 1 where uint8 >= 128 on that half of the 16 x 16
  # images, one-hot, averaged over 2 x 2 blocks (f = 2: the 8 x 8 latent grid).
  digit = np.where(np.arange(16)[None, :] < 8, labels[:, None] // 10, labels[:, None] % 10)
  s = np.where(images[..., 0] >= 128, digit[:, None, :] + 1, 0)
  c = np.eye(11)[s].reshape(16, 8, 2, 8, 2, 11).mean(axis=(2, 4))
  z_rng, _, diff_rng, _ = jax.random.split(rng, 4)
  z = 0.7 * (mean + jnp.exp(0.5 * logvar) * jax.random.normal(z_rng, mean.shape))

  @jax.jit
  def by_hand(c):
    model_fn = lambda x, t: unet.apply({"params": params}, concat_conditioning(x, c), t)
    return jnp.mean(diffusion.training_loss(model_fn, schedule, z, diff_rng))

  want = lambda c: float(by_hand(jnp.asarray(c, jnp.float32)))
  np.testing.assert_allclose(loss(0.0, images, labels), want(c), rtol=1e-5)
  other = (labels + 11) % 100  # other digits, the same strokes: the map's classes reach the UNet
  assert abs(loss(0.0, images, other) - loss(0.0, images, labels)) > 1e-5
  # p_drop = 1: the null map c = 0 (no class anywhere) whatever the images and labels.
  np.testing.assert_allclose(loss(1.0, images, labels), want(np.zeros_like(c)), rtol=1e-5)
  assert loss(1.0, images[::-1].copy(), other) == loss(1.0, images, labels)


def test_hybrid_segmentation_and_class_loss_reads_both(first_stage):
  """concat.class_labels with a segmentation map: the UNet reads [z_t, class fractions] and the
  label (10 * left + right, 100 classes, null label 100), each the loss's own."""
  from ldm_jax.diffusion import concat  # pylint: disable=import-outside-toplevel
  from ldm_jax.models.unet import concat_conditioning  # pylint: disable=import-outside-toplevel
  ae, _, images = first_stage
  unet, params, mean, logvar = _concat_parts(first_stage, "segmentation_pairs", num_class_embeds=101)
  schedule = schedules.get_schedule("linear", 100)
  cfg = _diffusion_config(conditioning="concat", num_classes=100, p_uncond=0.0)
  section = ml_collections.ConfigDict(dict(degradation="segmentation_pairs", p_drop=0.0,
                                           class_labels=True))
  loss_fn = jax.jit(ldm_stage.make_loss_fn(unet, ae, schedule, cfg, 0.7, concat=section))
  rng = jax.random.key(8)
  labels = (np.arange(16, dtype=np.int32) * 7) % 100
  batch = {"latent_mean": mean, "latent_logvar": logvar, "image": images, "label": labels}
  got = float(loss_fn(params, batch, rng, {})[0])
  z_rng, _, diff_rng, _ = jax.random.split(rng, 4)
  z = 0.7 * (mean + jnp.exp(0.5 * logvar) * jax.random.normal(z_rng, mean.shape))
  c = concat.segmentation_to_latent_grid(
      concat.segmentation_pairs(None, to_float(images), labels), (8, 8), 11)

  @jax.jit
  def by_hand(y):
    model_fn = lambda x, t: unet.apply({"params": params}, concat_conditioning(x, c), t, y=y)
    return jnp.mean(diffusion.training_loss(model_fn, schedule, z, diff_rng))

  np.testing.assert_allclose(got, float(by_hand(jnp.asarray(labels))), rtol=1e-5)
  # the same map with other class labels: the label reaches the UNet beside the map
  assert abs(float(by_hand(jnp.asarray((labels + 1) % 100))) - got) > 1e-5


def test_segmentation_loss_needs_the_class_channels(first_stage):
  ae, _, _ = first_stage
  schedule = schedules.get_schedule("linear", 10)
  cfg = _diffusion_config(conditioning="concat")
  section = ml_collections.ConfigDict(dict(degradation="segmentation_pairs", p_drop=0.0))
  sr_unet, _, _, _ = _concat_parts(first_stage)  # [z_t, image]: 5 channels
  with pytest.raises(ValueError, match=r"degradation='segmentation_pairs': the UNet must read "
                     r"latent \+ segmentation class channels = 4 \+ 11 = 15 and predict 4, "
                     r"got in_channels=5"):
    ldm_stage.make_loss_fn(sr_unet, ae, schedule, cfg, 1.0, concat=section)
