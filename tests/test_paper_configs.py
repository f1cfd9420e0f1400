"""The paper-scale configs (experiments/configs/paper_*.py) build the models the paper describes.

Everything is shape-only (jax.eval_shape): no parameter is materialised, so the 274M / 400M
networks cost a trace each.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import paper_autoencoder, paper_ldm
from ldm_jax.stages import builders
from ldm_jax.stages import latent_diffusion as ldm_stage

# Variant -> (autoencoder variant, latent shape at 256x256, (paper's parameter count in millions,
# tolerance)). CelebA-HQ LDM-4: Rombach et al. 2022 tab. 14 (274M). ImageNet cin256-v2: tab. 3
# ("400M"; here the UNet plus the 1001 x 512 class table, 401.4M). Churches LDM-8: not tabulated.
EXPECTED = {
    "celebahq_ldm_vq4": ("vq_f4", (64, 64, 3), (274, 0.5)),
    "churches_ldm_kl8": ("kl_f8", (32, 32, 4), None),
    "imagenet_cin_ldm_vq4": ("vq_f4", (64, 64, 3), (400, 2.0)),
}


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _shapes(module, *args, **kwargs):
  return nn.meta.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))["params"])


@pytest.fixture(scope="module")
def autoencoders():
  out = {}
  for variant in paper_autoencoder.VARIANTS:
    config = paper_autoencoder.get_config(variant)
    ae = builders.autoencoder(config.model)
    shape = (1, config.data.image_size, config.data.image_size, config.data.channels)
    latent = jax.eval_shape(lambda a=ae, s=shape: a.init_with_output(
        jax.random.key(0), jnp.zeros(s), method="encode")[0])
    out[variant] = (config, ae, latent, _shapes(ae, jnp.zeros(shape)))
  return out


def test_paper_autoencoders(autoencoders):
  vq, kl = autoencoders["vq_f4"], autoencoders["kl_f8"]
  assert vq[1].downsampling_factor == 4 and vq[1].num_embeddings == 8192
  assert vq[2].latents.shape == (1, 64, 64, 3)
  assert kl[1].downsampling_factor == 8 and kl[2][0].shape == (1, 32, 32, 4)
  # KL-f8 is the Stable Diffusion VAE shape: 83,653,863 parameters (diffusers AutoencoderKL).
  assert n_params(kl[3]) == 83_653_863
  assert (vq[0].loss.disc_start, vq[0].loss.disc_weight) == (0, 0.75)
  assert (kl[0].loss.disc_start, kl[0].loss.disc_weight, kl[0].loss.kl_weight) == (50_001, 0.5, 1e-6)
  disc = builders.discriminator(vq[0].disc)
  d = _shapes(disc, jnp.zeros((1, 256, 256, 3)))
  assert 2.7e6 < n_params(d) < 2.8e6  # taming's 3-layer PatchGAN, ndf 64: 2.77M


@pytest.mark.parametrize("variant", paper_ldm.VARIANTS)
def test_paper_ldms(variant, autoencoders):
  ae_variant, latent_shape, millions = EXPECTED[variant]
  config = paper_ldm.get_config(variant)
  _, ae, _, _ = autoencoders[ae_variant]
  d = config.diffusion
  num_class_embeds = d.num_classes + 1 if d.conditioning == "class" else None
  unet = builders.unet(config.model, in_channels=latent_shape[-1], num_class_embeds=num_class_embeds)
  y = jnp.zeros((1,), jnp.int32) if num_class_embeds else None
  shapes = _shapes(unet, jnp.zeros((1, *latent_shape)), jnp.zeros((1,)), y=y)
  count = n_params(shapes)
  if millions is not None:
    assert abs(count / 1e6 - millions[0]) < millions[1], count
  assert 2e8 < count < 5e8
  y2 = None if y is None else jnp.zeros((2,), jnp.int32)
  out = jax.eval_shape(lambda p: unet.apply({"params": p}, jnp.zeros((2, *latent_shape)),
                                            jnp.zeros((2,)), y=y2), shapes)
  assert out.shape == (2, *latent_shape)
  # The stage accepts the whole diffusion section (schedule, loss type, conditioning).
  schedule = builders.schedule(d)
  assert schedule.num_timesteps == 1000
  ldm_stage.make_loss_fn(unet, ae, schedule, d, 1.0)
  if variant == "imagenet_cin_ldm_vq4":
    assert unet.class_context and shapes["class_context_embedding"]["embedding"].shape == (1001, 512)


def test_unknown_variants_list_the_choices():
  with pytest.raises(ValueError, match="'celeba'.*celebahq_ldm_vq4, churches_ldm_kl8, imagenet_cin_ldm_vq4"):
    paper_ldm.get_config("celeba")
  with pytest.raises(ValueError, match="'vq_f8'.*vq_f4, kl_f8"):
    paper_autoencoder.get_config("vq_f8")
