"""The autoencoder objective: gradient routing between G and D, the adaptive weight, disc_start."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ldm_jax.data import to_float
from ldm_jax.models.autoencoder import KL_TINY, VQ_TINY
from ldm_jax.models.discriminator import PATCHGAN_TINY
from ldm_jax.stages import autoencoder as ae_stage
from ldm_jax.stages import gan


def _loss_config(**kw):
  c = ml_collections.ConfigDict(dict(rec_loss="l1", kl_weight=1e-3, codebook_weight=1.0,
                                     disc_weight=0.5, disc_start=10, disc_loss="hinge",
                                     perceptual_weight=0.0))
  c.update(kw)
  return c


@pytest.fixture(scope="module")
def setup():
  ae = KL_TINY(in_channels=1, out_channels=1)
  disc = PATCHGAN_TINY()
  params = ae_stage.init_params(ae, disc, jax.random.key(0), (1, 16, 16, 1))
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (4, 16, 16, 1)).astype(np.uint8)}
  return ae, disc, params, batch


def _grads(loss_fn, params, batch, step):
  return jax.jit(jax.grad(lambda p: loss_fn(p, batch, jax.random.key(1), {"step": step})[0]))(params)


def test_generator_and_discriminator_gradients_are_routed_to_their_own_network(setup):
  ae, disc, params, batch = setup
  loss_fn = ae_stage.make_loss_fn(ae, disc, _loss_config())
  grads = _grads(loss_fn, params, batch, jnp.int32(20))
  x = to_float(batch["image"])

  # Independent reference for D: the hinge loss on fixed real / reconstructed images.
  posterior = ae.apply({"params": params["autoencoder"]}, x, method="posterior")
  z = posterior.sample(jax.random.key(1))
  x_hat = ae.apply({"params": params["autoencoder"]}, z, method="decode")
  d_loss = lambda dp: gan.discriminator_loss(disc.apply({"params": dp}, x), disc.apply({"params": dp}, x_hat))
  want = jax.grad(d_loss)(params["discriminator"])
  for a, b in zip(jax.tree.leaves(grads["discriminator"]), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)

  # G's gradient does not depend on the discriminator loss: compare with a hinge-free variant
  # whose D term would differ (vanilla) -- the autoencoder gradient must be unchanged.
  other = ae_stage.make_loss_fn(ae, disc, _loss_config(disc_loss="vanilla"))
  grads_v = _grads(other, params, batch, jnp.int32(20))
  for a, b in zip(jax.tree.leaves(grads["autoencoder"]), jax.tree.leaves(grads_v["autoencoder"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
  assert any(np.abs(a - b).max() > 1e-6 for a, b in
             zip(jax.tree.leaves(grads["discriminator"]), jax.tree.leaves(grads_v["discriminator"])))


def test_adaptive_weight_equals_ratio_of_last_layer_gradient_norms(setup):
  ae, disc, params, batch = setup
  cfg = _loss_config()
  loss_fn = ae_stage.make_loss_fn(ae, disc, cfg)
  _, metrics = jax.jit(lambda p: loss_fn(p, batch, jax.random.key(1), {"step": jnp.int32(20)}))(params)
  x = to_float(batch["image"])
  ap = params["autoencoder"]
  z = ae.apply({"params": ap}, x, method="posterior").sample(jax.random.key(1))

  def nll(p):  # full-parameter gradient, then read off the last layer: independent of the stage code
    x_hat = ae.apply({"params": p}, z, method="decode")
    return jnp.sum(jnp.abs(x - x_hat) / jnp.exp(params["logvar"]) + params["logvar"]) / x.shape[0]

  def g_loss(p):
    return -jnp.mean(disc.apply({"params": params["discriminator"]}, ae.apply({"params": p}, z, method="decode")))

  norm = lambda g: np.sqrt(sum(np.sum(np.square(v)) for v in jax.tree.leaves(g["decoder"]["conv_out"])))
  want = cfg.disc_weight * norm(jax.grad(nll)(ap)) / (norm(jax.grad(g_loss)(ap)) + 1e-4)
  np.testing.assert_allclose(float(metrics["d_weight"]), want, rtol=1e-3)
  assert float(metrics["disc_factor"]) == 1.0


def test_before_disc_start_the_adversarial_terms_are_off(setup):
  ae, disc, params, batch = setup
  loss_fn = ae_stage.make_loss_fn(ae, disc, _loss_config())
  loss, m = jax.jit(lambda p: loss_fn(p, batch, jax.random.key(1), {"step": jnp.int32(3)}))(params)
  assert float(m["disc_factor"]) == 0.0 and float(m["d_weight"]) == 0.0
  np.testing.assert_allclose(float(loss), float(m["nll_loss"] + 1e-3 * m["kl"]), rtol=1e-6)
  grads = _grads(loss_fn, params, batch, jnp.int32(3))
  assert all(np.all(g == 0) for g in jax.tree.leaves(grads["discriminator"]))


def test_vq_variant_is_the_mean_pixel_loss_plus_the_weighted_codebook_loss():
  """VQLPIPSWithDiscriminator: L = mean over every pixel of |x - x_hat| + w_codebook * vq_loss,
  no log-variance (its gradient is exactly 0), before disc_start. The per-pixel sum of the KL form
  would be H * W * C = 256 times larger here."""
  ae = VQ_TINY(in_channels=1, out_channels=1)
  disc = PATCHGAN_TINY()
  params = ae_stage.init_params(ae, disc, jax.random.key(0), (1, 16, 16, 1))
  params["logvar"] = jnp.float32(0.7)  # would scale the nll and add 0.7 if the KL form were used
  batch = {"image": np.random.default_rng(0).integers(0, 256, (2, 16, 16, 1)).astype(np.uint8)}
  loss_fn = ae_stage.make_loss_fn(ae, disc, _loss_config(codebook_weight=2.0))
  run = jax.jit(jax.value_and_grad(
      lambda p: loss_fn(p, batch, jax.random.key(1), {"step": jnp.int32(0)}), has_aux=True))
  (loss, m), grads = run(params)
  x = to_float(batch["image"])
  z, vq_loss = ae.apply({"params": params["autoencoder"]}, x, jax.random.key(1),
                        method="regularized_latents")
  x_hat = ae.apply({"params": params["autoencoder"]}, z, method="decode_code")
  rec = np.mean(np.abs(np.asarray(x, np.float64) - np.asarray(x_hat, np.float64)))
  np.testing.assert_allclose(float(m["nll_loss"]), rec, rtol=1e-5)
  np.testing.assert_allclose(float(m["vq_loss"]), float(vq_loss), rtol=1e-6)
  np.testing.assert_allclose(float(loss), rec + 2.0 * float(vq_loss), rtol=1e-5)
  assert float(grads["logvar"]) == 0.0


def test_bad_options_raise_with_valid_choices(setup):
  ae, disc, _, _ = setup
  with pytest.raises(ValueError, match="valid choices: hinge, vanilla"):
    ae_stage.make_loss_fn(ae, disc, _loss_config(disc_loss="wgan"))
  with pytest.raises(ValueError, match="valid choices: l1, l2"):
    ae_stage.make_loss_fn(ae, disc, _loss_config(rec_loss="huber"))
  with pytest.raises(ValueError, match="perceptual"):
    ae_stage.make_loss_fn(ae, disc, _loss_config(perceptual_weight=1.0))


def test_lpips_term_from_config_adds_weighted_perceptual_distance(setup, tmp_path):
  # perceptual_from_config loads LPIPS from weight files; with weight w the generator loss grows
  # by w * H * W * C * mean_b LPIPS(x_b, x_hat_b) (the per-image term is added to every pixel's
  # reconstruction NLL, summed over pixels and averaged over the batch, logvar = 0).
  from ldm_jax.convert import lpips as lpips_convert
  from ldm_jax.models.lpips import lpips_distance
  ae, disc, params, batch = setup
  rng = np.random.default_rng(1)
  vgg = {k: (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)
         for k, s in lpips_convert.vgg_shapes().items()}
  lin = {k: np.abs(rng.standard_normal(s)).astype(np.float32) for k, s in lpips_convert.lin_shapes().items()}
  np.savez(tmp_path / "vgg.npz", **vgg)
  np.savez(tmp_path / "lin.npz", **lin)
  assert ae_stage.perceptual_from_config(_loss_config()) is None
  with pytest.raises(ValueError, match="loss.lpips_vgg"):
    ae_stage.perceptual_from_config(_loss_config(perceptual_weight=1.0))
  config = _loss_config(perceptual_weight=0.5, lpips_vgg=str(tmp_path / "vgg.npz"),
                        lpips_lin=str(tmp_path / "lin.npz"))
  with_lpips = ae_stage.make_loss_fn(ae, disc, config, ae_stage.perceptual_from_config(config))
  without = ae_stage.make_loss_fn(ae, disc, _loss_config())
  key, extra = jax.random.key(1), {"step": jnp.int32(0)}
  (l1, m1), (l0, _) = (jax.jit(f)(params, batch, key, extra) for f in (with_lpips, without))
  x = to_float(batch["image"])
  p = params["autoencoder"]
  z = ae.apply({"params": p}, x, method="posterior").sample(key)
  x_hat = ae.apply({"params": p}, z, method="decode")
  d = lpips_distance(lpips_convert.load_lpips(vgg, lin), x, x_hat)
  assert float(jnp.min(d)) > 0
  np.testing.assert_allclose(float(l1 - l0), 0.5 * 16 * 16 * float(jnp.mean(d)), rtol=1e-3)


def _nested_convolutions(jaxpr, inside=False):
  """Counts conv_general_dilated equations inside cond / while / scan bodies of a (closed) jaxpr."""
  count = 0
  for eqn in jaxpr.eqns:
    nested = inside or eqn.primitive.name in ("cond", "while", "scan")
    if eqn.primitive.name == "conv_general_dilated" and inside:
      count += 1
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if hasattr(sub, "jaxpr"):
          count += _nested_convolutions(getattr(sub.jaxpr, "jaxpr", sub.jaxpr), nested)
        elif hasattr(sub, "eqns"):
          count += _nested_convolutions(sub, nested)
  return count


def test_no_differentiated_convolution_runs_inside_control_flow(setup):
  """XLA:CPU runs a convolution's weight gradient inside cond / scan up to ~100x slower
  (experiments/benchmarks/nested_grads.py): the stage's gradient program keeps every convolution
  at top level, before and after disc_start, and lambda still reads 0 before disc_start."""
  ae, disc, params, batch = setup
  loss_fn = ae_stage.make_loss_fn(ae, disc, _loss_config())
  grad = jax.grad(lambda p, s: loss_fn(p, batch, jax.random.key(1), {"step": s})[0])
  jaxpr = jax.make_jaxpr(grad)(params, jnp.int32(3)).jaxpr
  assert sum(e.primitive.name == "conv_general_dilated" for e in jaxpr.eqns) > 10
  assert _nested_convolutions(jaxpr) == 0


def _convolutions(loss_fn, params, batch):
  grad = jax.grad(lambda p: loss_fn(p, batch, jax.random.key(1), {"step": jnp.int32(3)})[0])
  return sum(e.primitive.name == "conv_general_dilated" for e in jax.make_jaxpr(grad)(params).eqns)


@pytest.mark.parametrize("make_ae", [KL_TINY, VQ_TINY])
def test_the_early_loss_is_the_full_loss_before_disc_start_without_the_discriminator(make_ae):
  """adversarial=False (the program run before disc_start): same loss, metrics and gradients as
  the full loss there, discriminator gradients exactly 0, and ~half the convolutions."""
  ae, disc = make_ae(in_channels=1, out_channels=1), PATCHGAN_TINY()
  params = ae_stage.init_params(ae, disc, jax.random.key(0), (1, 16, 16, 1))
  batch = {"image": np.random.default_rng(0).integers(0, 256, (4, 16, 16, 1)).astype(np.uint8)}
  full = ae_stage.make_loss_fn(ae, disc, _loss_config())
  early = ae_stage.make_loss_fn(ae, disc, _loss_config(), adversarial=False)
  run = lambda f: jax.jit(jax.value_and_grad(
      lambda p: f(p, batch, jax.random.key(1), {"step": jnp.int32(3)}), has_aux=True))(params)
  (loss_f, m_f), g_f = run(full)
  (loss_e, m_e), g_e = run(early)
  np.testing.assert_allclose(float(loss_e), float(loss_f), rtol=1e-6)
  assert set(m_e) < set(m_f) and "d_loss" not in m_e
  for k in m_e:
    np.testing.assert_allclose(float(m_e[k]), float(m_f[k]), rtol=1e-6, err_msg=k)
  for a, b in zip(jax.tree.leaves(g_e), jax.tree.leaves(g_f)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_e["discriminator"]))
  assert _convolutions(early, params, batch) < 0.6 * _convolutions(full, params, batch)  # 83 vs 155
