"""Tests for ldm_jax.models.autoencoder (shapes, presets, errors, posterior, VQ, bf16, tiling)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ldm_jax.models import autoencoder, distributions, quantizer, resnet, tiling, vae_blocks

X_SHAPE = (2, 16, 16, 3)


def random_params(module, x, seed):
  """Random params with the module's structure, without compiling ``init`` (slow on CPU).

  Kernels ~ N(0, 1/fan_in); GroupNorm scale ~ 1 + N(0, 0.3^2) and biases ~ N(0, 0.1^2), away
  from 1 / 0 so that they matter; the VQ codebook ~ N(0, 1).
  """
  shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), x)["params"])
  rng = np.random.RandomState(seed)
  def draw(path, spec):
    name, shape = path[-1].key, spec.shape
    if name == "kernel":
      value = rng.randn(*shape) / np.sqrt(np.prod(shape[:-1]))
    elif name == "scale":
      value = 1.0 + 0.3 * rng.randn(*shape)
    elif name == "embedding":
      value = rng.randn(*shape)
    else:
      value = 0.1 * rng.randn(*shape)
    return jnp.asarray(value, jnp.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def kl():
  module = autoencoder.KL_TINY()
  x = jax.random.uniform(jax.random.key(1), X_SHAPE, minval=-1, maxval=1)
  return module, random_params(module, x, 0), x


@pytest.fixture(scope="module")
def vq():
  module = autoencoder.VQ_TINY()
  x = jax.random.uniform(jax.random.key(1), X_SHAPE, minval=-1, maxval=1)
  return module, random_params(module, x, 1), x


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def test_kl_f8_param_count_equals_sd_vae():
  # diffusers AutoencoderKL with the SD 1.x config has 83,653,863 parameters (also checked
  # against a torch build in tests/convert/test_diffusers_vae.py).
  module = autoencoder.KL_F8()
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  assert _count(shapes) == 83_653_863
  assert module.downsampling_factor == 8


@pytest.mark.parametrize("preset,f,c", [(autoencoder.KL_F4, 4, 3), (autoencoder.VQ_F4, 4, 3),
                                        (autoencoder.KL_F8, 8, 4)])
def test_preset_latent_shapes(preset, f, c):
  module = preset()
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  enc = jax.eval_shape(functools.partial(module.apply, method="encode"), variables, x)
  assert enc[0].shape == (1, 32 // f, 32 // f, c)


def test_kl_shapes_and_call(kl):
  module, params, x = kl
  mean, logvar = module.apply({"params": params}, x, method="encode")
  assert mean.shape == logvar.shape == (2, 8, 8, 4) and mean.dtype == jnp.float32
  rec_mode, post = module.apply({"params": params}, x)
  np.testing.assert_allclose(rec_mode, module.apply({"params": params}, mean, method="decode"),
                             rtol=1e-6, atol=1e-6)
  rec_sample, _ = module.apply({"params": params}, x, rng=jax.random.key(5))
  assert rec_sample.shape == X_SHAPE
  assert not np.allclose(rec_sample, rec_mode)  # sampling the posterior changes the latent
  np.testing.assert_array_equal(post.mean, mean)


def test_decode_scaled_inverts_latent_scaling(kl):
  module, params, x = kl
  module = module.clone(scaling_factor=0.5, shift_factor=0.1)
  z = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
  a = module.apply({"params": params}, (z - 0.1) * 0.5, method="decode_scaled")
  b = module.apply({"params": params}, z, method="decode")
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["kl", "vq"])
def test_bad_inputs_raise_with_shapes(which, kl, vq):
  module, params, _ = kl if which == "kl" else vq
  apply = functools.partial(module.apply, {"params": params})
  with pytest.raises(ValueError, match=r"expected shape \[B, H, W, 3\], got \(1, 16, 16, 4\)"):
    apply(jnp.zeros((1, 16, 16, 4)), method="encode")
  with pytest.raises(ValueError, match=r"divisible by .* f=2.*\(1, 15, 16, 3\)"):
    apply(jnp.zeros((1, 15, 16, 3)), method="encode")
  latent_c = 4 if which == "kl" else 3
  with pytest.raises(ValueError, match=rf"shape \[B, H, W, {latent_c}\], got \(1, 8, 8, 5\)"):
    apply(jnp.zeros((1, 8, 8, 5)), method="decode")


def test_diagonal_gaussian_against_closed_forms():
  rng = np.random.RandomState(0)
  mean, logvar = rng.randn(2, 3, 3, 2), rng.randn(2, 3, 3, 2) * 0.5
  q = distributions.DiagonalGaussian(jnp.asarray(mean), jnp.asarray(logvar))
  std = np.exp(0.5 * logvar)
  kl_ref = np.sum(0.5 * (mean**2 + std**2 - 1 - logvar), axis=(1, 2, 3))
  np.testing.assert_allclose(q.kl(), kl_ref, rtol=1e-5)
  x = rng.randn(*mean.shape)
  nll_ref = -np.sum(stats.norm.logpdf(x, mean, std), axis=(1, 2, 3))
  np.testing.assert_allclose(q.nll(jnp.asarray(x)), nll_ref, rtol=1e-5)
  # KL between two Gaussians: closed form vs a Monte-Carlo estimate of E_q[log q - log p].
  p = distributions.DiagonalGaussian(jnp.asarray(rng.randn(*mean.shape)),
                                     jnp.asarray(rng.randn(*mean.shape) * 0.3))
  np.testing.assert_allclose(q.kl(q), 0.0, atol=1e-5)
  zs = np.asarray(jax.vmap(q.sample)(jax.random.split(jax.random.key(0), 20000)), np.float64)
  np.testing.assert_allclose(zs.mean(0), mean, atol=0.05)
  np.testing.assert_allclose(zs.std(0), std, rtol=0.05)
  p_std = np.exp(0.5 * np.asarray(p.logvar, np.float64))
  log_ratio = stats.norm.logpdf(zs, mean, std) - stats.norm.logpdf(zs, np.asarray(p.mean), p_std)
  np.testing.assert_allclose(log_ratio.sum((2, 3, 4)).mean(0), q.kl(p), rtol=0.05)
  # moments are clamped like the reference
  moments = jnp.concatenate([jnp.zeros((1, 1, 1, 1)), jnp.full((1, 1, 1, 1), 50.0)], -1)
  assert float(distributions.DiagonalGaussian.from_moments(moments).logvar.max()) == 20.0


@pytest.mark.parametrize("legacy", [True, False])
def test_vq_indices_and_losses_against_numpy(legacy):
  rng = np.random.RandomState(1)
  z, codebook, beta = rng.randn(2, 3, 3, 4), rng.randn(10, 4), 0.25
  vq = quantizer.VectorQuantizer(10, 4, beta=beta, legacy=legacy)
  params = {"embedding": {"embedding": jnp.asarray(codebook, jnp.float32)}}
  z_q, idx, loss = vq.apply({"params": params}, jnp.asarray(z, jnp.float32))
  loss_fn = lambda p, z: vq.apply({"params": p}, z)[2]
  g_params, g_z = jax.grad(loss_fn, argnums=(0, 1))(params, jnp.asarray(z, jnp.float32))
  d = ((z[..., None, :] - codebook) ** 2).sum(-1)
  idx_ref = d.argmin(-1)
  np.testing.assert_array_equal(idx, idx_ref)
  e = codebook[idx_ref]
  np.testing.assert_allclose(z_q, e, rtol=1e-5, atol=1e-6)
  mse = np.mean((e - z) ** 2)
  np.testing.assert_allclose(loss, mse * (1 + beta), rtol=1e-5)
  # gradients of the loss alone: the commitment term pulls z, the codebook term pulls e_k.
  w_commit, w_code = (1.0, beta) if legacy else (beta, 1.0)
  np.testing.assert_allclose(g_z, w_commit * 2 * (z - e) / z.size, rtol=1e-4, atol=1e-7)
  g_code_ref = np.zeros_like(codebook)
  np.add.at(g_code_ref, idx_ref.reshape(-1), (w_code * 2 * (e - z) / z.size).reshape(-1, 4))
  np.testing.assert_allclose(g_params["embedding"]["embedding"], g_code_ref, rtol=1e-4, atol=1e-7)


def test_vq_straight_through_gradient_is_identity(vq):
  module, params, x = vq
  h = module.apply({"params": params}, x, method="encode").latents
  quantize = lambda h: module.apply({"params": params}, h,
                                    method=lambda m, h: m.quantize(h)[0])
  z_q, vjp = jax.vjp(quantize, h)
  assert not np.allclose(z_q, h)  # it does quantise...
  cot = jax.random.normal(jax.random.key(0), h.shape)
  np.testing.assert_allclose(vjp(cot)[0], cot, rtol=0, atol=0)  # ...with an identity Jacobian


def test_vq_encode_decode_consistency(vq):
  module, params, x = vq
  apply = functools.partial(module.apply, {"params": params})
  enc = apply(x, method="encode")
  assert enc.indices.shape == (2, 8, 8) and enc.indices.dtype == jnp.int32
  codebook = params["quantize"]["embedding"]["embedding"]
  np.testing.assert_allclose(enc.quantized, codebook[enc.indices], atol=1e-5)
  a = apply(enc.latents, method="decode")
  b = apply(enc.indices, method="decode_indices")
  rec, _ = apply(x)
  np.testing.assert_allclose(a, b, atol=1e-5)
  np.testing.assert_allclose(rec, b, atol=1e-5)


def test_one_latent_interface_for_kl_and_vq(kl, vq):
  """latents / decode / regularized_latents / decode_code / latent_channels: what the stages and
  the pipeline call, checked against each kind's own encode path."""
  rng = jax.random.key(3)
  (km, kp, x), (vm, vp, _) = kl, vq
  kl_apply, vq_apply = functools.partial(km.apply, {"params": kp}), functools.partial(vm.apply, {"params": vp})
  mean, logvar = kl_apply(x, method="encode")
  enc = vq_apply(x, method="encode")
  assert (km.latent_channels, vm.latent_channels) == (km.z_channels, vm.code_dim)
  assert kl_apply(x, method="latents").shape[-1] == km.latent_channels
  assert vq_apply(x, method="latents").shape[-1] == vm.latent_channels
  # KL: the mode without rng, a posterior sample with it (the same draw as DiagonalGaussian's).
  np.testing.assert_array_equal(kl_apply(x, method="latents"), mean)
  eps = jax.random.normal(rng, mean.shape)
  np.testing.assert_allclose(kl_apply(x, rng, method="latents"), mean + jnp.exp(0.5 * logvar) * eps,
                             rtol=1e-6, atol=1e-6)
  # VQ: the pre-quantisation h whatever the rng; decode quantises it.
  np.testing.assert_array_equal(vq_apply(x, rng, method="latents"), enc.latents)
  np.testing.assert_array_equal(vq_apply(enc.latents, method="decode"),
                                vq_apply(enc.quantized, method=lambda m, z: m.decode(z, quantize=False)))
  # Training: (z, regulariser) per kind, named by `regularizer`; decode_code decodes that z.
  z, kl_loss = kl_apply(x, rng, method="regularized_latents")
  np.testing.assert_array_equal(z, kl_apply(x, rng, method="latents"))
  kl_per_image = 0.5 * np.sum(mean ** 2 + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3))
  np.testing.assert_allclose(kl_loss, np.mean(kl_per_image), rtol=1e-5)  # LDM's: summed, batch mean
  np.testing.assert_array_equal(kl_apply(z, method="decode_code"), kl_apply(z, method="decode"))
  z_q, vq_loss = vq_apply(x, rng, method="regularized_latents")
  np.testing.assert_array_equal(z_q, enc.quantized)
  np.testing.assert_array_equal(vq_loss, enc.loss)
  np.testing.assert_array_equal(vq_apply(z_q, method="decode_code"), vq_apply(x)[0])
  assert (km.regularizer, vm.regularizer) == ("kl", "vq_loss")


def test_bfloat16_compute_close_to_float32(kl):
  module, params, x = kl
  ref, ref_post = module.apply({"params": params}, x)
  out, post = module.clone(dtype=jnp.bfloat16).apply({"params": params}, x)
  assert post.mean.dtype == out.dtype == jnp.float32
  assert np.isfinite(np.asarray(post.mean)).all() and np.isfinite(np.asarray(out)).all()
  # bfloat16 has an 8-bit mantissa. Stated tolerance: max error 5%, mean error 1% of max|ref|.
  for ours, theirs in ((post.mean, ref_post.mean), (out, ref)):
    err, scale = np.abs(ours - theirs), np.abs(theirs).max()
    assert err.max() < 0.05 * scale and err.mean() < 0.01 * scale


def test_remat_gives_same_values_and_gradients():
  # remat wraps the down / mid / up blocks of Encoder and Decoder alike; a small Encoder shows it.
  enc = vae_blocks.Encoder(out_channels=2, block_out_channels=(8,), layers_per_block=1,
                           norm_groups=4)
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, 3))
  params = random_params(enc, x, 2)
  loss = lambda m: jax.jit(jax.value_and_grad(lambda p: jnp.mean(m.apply({"params": p}, x) ** 2)))
  l0, g0 = loss(enc)(params)
  l1, g1 = loss(enc.clone(remat=True))(params)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g0, g1)


class _LocalDecoder(nn.Module):
  """A decoder without spatial context (Dense + nearest x2): tiling it must be exact."""
  downsampling_factor = 2

  @nn.compact
  def decode(self, z):
    return resnet.upsample_nearest(nn.Dense(3)(z))


def test_tiled_decode_blends_exactly_for_a_local_decoder():
  z = jax.random.normal(jax.random.key(3), (2, 11, 9, 4))
  dec = _LocalDecoder()
  params = dec.init(jax.random.key(0), z, method="decode")["params"]
  plain = dec.apply({"params": params}, z, method="decode")
  for tile, overlap in ((4, 1), (5, 3), (9, 0)):
    out = tiling.decode_tiled(dec, params, z, tile_size=tile, overlap=overlap)
    np.testing.assert_allclose(out, plain, rtol=1e-6, atol=1e-6)


def test_tiled_decode(kl):
  module, params, _ = kl
  z = jax.random.normal(jax.random.key(7), (2, 8, 8, 4))
  plain = module.apply({"params": params}, z, method="decode")
  whole = tiling.decode_tiled(module, params, z, tile_size=8, overlap=2)
  np.testing.assert_allclose(whole, plain, rtol=1e-6, atol=1e-6)
  tiled = tiling.decode_tiled(module, params, z, tile_size=6, overlap=2)  # 2 x 2 tiles
  assert tiled.shape == plain.shape and np.isfinite(np.asarray(tiled)).all()
  # Tiles see less context (and the mid-block attention sees only its tile): close, not equal.
  # Stated tolerance for this random tiny model: mean error < 10% of max|plain|.
  err = np.abs(tiled - plain)
  assert 0 < err.mean() < 0.1 * np.abs(plain).max()
  with pytest.raises(ValueError, match="overlap"):
    tiling.decode_tiled(module, params, z, tile_size=4, overlap=4)


def test_tile_weights_partition_unity():
  starts = tiling.tile_starts(20, 8, 6)
  assert starts == [0, 6, 12]
  total = np.zeros(20)
  for s in starts:
    total[s:s + 8] += np.asarray(tiling.ramp_weights(8, 2, s > 0, s + 8 < 20))
  assert (total > 0).all() and np.allclose(total[:2], 1.0) and np.allclose(total[-2:], 1.0)


@pytest.mark.parametrize("preset", ["KL_TINY", "VQ_TINY"])
def test_logical_axis_names_for_sharding_rules(preset):
  # Attention projections, the codebook and every conv carry the UNet's logical axis names, so
  # nn.logical_to_mesh_sharding (and ldm_jax.train.axis_rules) map them with the same rules.
  module = getattr(autoencoder, preset)()
  boxed = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(X_SHAPE))["params"]
  specs = nn.get_partition_spec(boxed)
  conv = jax.sharding.PartitionSpec(None, None, "conv_in", "conv_out")
  assert specs["encoder"]["conv_in"]["kernel"] == conv
  assert specs["decoder"]["up_blocks_0"]["resnets_0"]["conv2"]["kernel"] == conv
  assert specs["post_quant_conv"]["kernel"] == conv
  assert specs["decoder"]["conv_out"]["bias"] == jax.sharding.PartitionSpec("conv_out")
  attn = specs["encoder"]["mid_block"]["attentions_0"]
  assert attn["to_q"]["kernel"] == jax.sharding.PartitionSpec("embed", "heads")
  assert attn["to_out_0"]["kernel"] == jax.sharding.PartitionSpec("heads", "embed")
  if preset == "VQ_TINY":
    assert specs["quantize"]["embedding"]["embedding"] == jax.sharding.PartitionSpec("vocab", "embed")
  rules = (("embed", "fsdp"), ("heads", None), ("vocab", "fsdp"))
  mesh = jax.make_mesh((2,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  assert shardings["encoder"]["mid_block"]["attentions_0"]["to_q"]["kernel"].spec == \
      jax.sharding.PartitionSpec("fsdp", None)
