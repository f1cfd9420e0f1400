"""The latent cache (ldm_jax/stages/latent_cache.py): the encoder's posterior of each distinct image
computed once and read back; the loss on cached latents equals the loss that encodes; a VQ first
stage's h exactly; the config key reaches a training run (tests/stages/test_run.py's door test)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.data import to_float
from ldm_jax.models.autoencoder import VQ_TINY
from ldm_jax.stages import latent_cache
from ldm_jax.stages import latent_diffusion as ldm_stage
from tests.stages.test_latent_diffusion_stage import _diffusion_config, _unet
from tests.stages.test_latent_diffusion_stage import first_stage  # pylint: disable=unused-import
from ldm_jax import schedules


@pytest.fixture(scope="module")
def kl(first_stage):  # the latent diffusion stage tests' tiny KL autoencoder, 6 of its images
  ae, params, images = first_stage
  return ae, params, images[:6]


def test_posterior_once_per_distinct_image(kl):
  ae, params, images = kl
  cache = latent_cache.LatentCache(ae, params)
  out = cache({"image": images, "label": np.arange(6, dtype=np.int32)})
  assert set(out) == {"label", "latent_mean", "latent_logvar"}  # the images stay on the host
  mean, logvar = ae.apply({"params": params}, to_float(images), method="encode")
  np.testing.assert_allclose(out["latent_mean"], mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["latent_logvar"], logvar, rtol=1e-5, atol=1e-5)
  assert cache.encoded == len(cache) == 6
  # The same images in another order (and one repeated): read back, nothing encoded again.
  order = np.array([5, 0, 0, 3, 2, 1])
  again = cache({"image": images[order]})
  assert cache.encoded == 6
  np.testing.assert_array_equal(again["latent_mean"], out["latent_mean"][order])
  # One new image (a flipped copy is a different image): exactly one more entry.
  mixed = images.copy()
  mixed[2] = mixed[2, :, ::-1]
  kept = latent_cache.LatentCache(ae, params, keep_images=True)
  kept({"image": images})
  res = kept({"image": mixed})
  assert kept.encoded == 7 and set(res) == {"image", "latent_mean", "latent_logvar"}
  np.testing.assert_array_equal(res["image"], mixed)
  want = ae.apply({"params": params}, to_float(mixed[2:3]), method="encode")[0]
  np.testing.assert_allclose(res["latent_mean"][2:3], want, rtol=1e-5, atol=1e-5)


def test_loss_on_cached_latents_equals_the_loss_that_encodes(first_stage):
  ae, ae_params, images = first_stage
  images = images[:8]
  unet = _unet()
  schedule = schedules.get_schedule("linear", 100)
  cfg = _diffusion_config()
  params = unet.init(jax.random.key(1), jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)),
                     y=jnp.zeros((1,), jnp.int32))["params"]
  labels = np.arange(8, dtype=np.int32) % 10
  loss_fn = jax.jit(ldm_stage.make_loss_fn(unet, ae, schedule, cfg, scale_factor=0.7))
  extra = {"frozen": ae_params}
  want, _ = loss_fn(params, {"image": images, "label": labels}, jax.random.key(5), extra)
  cached = latent_cache.LatentCache(ae, ae_params)({"image": images, "label": labels})
  got, _ = loss_fn(params, cached, jax.random.key(5), extra)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_vq_first_stage_caches_h_exactly():
  ae = VQ_TINY(in_channels=1, out_channels=1)
  params = ae.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))["params"]
  images = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 1)).astype(np.uint8)
  out = latent_cache.LatentCache(ae, params)({"image": images})
  h = ae.apply({"params": params}, to_float(images), method="latents")
  np.testing.assert_allclose(out["latent_mean"], h, rtol=1e-5, atol=1e-5)
  # The loss's z = mean + exp(logvar / 2) eps is h itself (std underflows to exactly 0).
  std = jnp.exp(0.5 * jnp.asarray(out["latent_logvar"]))
  assert float(jnp.max(std)) == 0.0
