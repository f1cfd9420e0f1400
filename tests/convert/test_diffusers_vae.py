"""Parity of ldm_jax autoencoders with diffusers' AutoencoderKL / VQModel (torch, CPU, float32).

Outputs must agree to 1e-5 relative: |ours - ref| <= 1e-5 * (|ref| + max|ref|).
"""

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchKL
from diffusers import VQModel as TorchVQ

from ldm_jax.convert import diffusers_vae, load_diffusers, save_diffusers
from ldm_jax.models import autoencoder

KL_CONFIGS = {
    "f2_c4": dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
                  norm_num_groups=8),
    "f4_c3_lpb2": dict(block_out_channels=(16, 32, 32), layers_per_block=2, latent_channels=3,
                       norm_num_groups=4),
    "noattn_noquant": dict(block_out_channels=(16, 32), layers_per_block=1, latent_channels=2,
                           norm_num_groups=16, in_channels=1, out_channels=2,
                           mid_block_add_attention=False, use_quant_conv=False,
                           use_post_quant_conv=False),
}
VQ_CONFIGS = {
    "f2_c3": dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=3,
                  norm_num_groups=8, num_vq_embeddings=16),
    "f2_embed3_lpb2": dict(block_out_channels=(16, 32), layers_per_block=2, latent_channels=4,
                           vq_embed_dim=3, norm_num_groups=4, num_vq_embeddings=32),
}
HW = 16


def _blocks(config):
  n = len(config["block_out_channels"])
  return dict(down_block_types=("DownEncoderBlock2D",) * n,
              up_block_types=("UpDecoderBlock2D",) * n)


def _randomise(model, seed):
  """Random weights, with GroupNorm affine away from 1 / 0 and a N(0, 1) VQ codebook."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.3 * torch.randn_like(p))
      elif "embedding" in name:
        p.copy_(torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
  return model.eval()


def assert_close(ours, ref, nchw=True):
  ours = np.asarray(ours)
  if nchw and ours.ndim == 4:
    ours = ours.transpose(0, 3, 1, 2)
  ref = np.asarray(ref)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def _nhwc(x):
  return jnp.asarray(x.transpose(0, 2, 3, 1))


def _inputs(in_channels, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, (2, in_channels, HW, HW)).astype(np.float32)


@pytest.fixture(scope="module", params=sorted(KL_CONFIGS))
def kl_pair(request, tmp_path_factory):
  config = KL_CONFIGS[request.param]
  ref = _randomise(TorchKL(**config, **_blocks(config)), seed=len(request.param))
  path = str(tmp_path_factory.mktemp(f"kl_{request.param}"))
  ref.save_pretrained(path)
  module, params = load_diffusers(path)
  return ref, module, params, path


@pytest.fixture(scope="module", params=sorted(VQ_CONFIGS))
def vq_pair(request, tmp_path_factory):
  config = VQ_CONFIGS[request.param]
  ref = _randomise(TorchVQ(**config, **_blocks(config)), seed=len(request.param))
  path = str(tmp_path_factory.mktemp(f"vq_{request.param}"))
  ref.save_pretrained(path)
  module, params = load_diffusers(path)
  return ref, module, params, path


def test_kl_encode_decode_match_diffusers(kl_pair):
  ref, module, params, _ = kl_pair
  assert isinstance(module, autoencoder.AutoencoderKL)
  x = _inputs(ref.config.in_channels)
  mean, logvar = module.apply({"params": params}, _nhwc(x), method="encode")
  z = np.random.RandomState(1).randn(*np.asarray(mean).transpose(0, 3, 1, 2).shape)
  z = z.astype(np.float32)
  out = module.apply({"params": params}, _nhwc(z), method="decode")
  with torch.no_grad():
    posterior = ref.encode(torch.from_numpy(x)).latent_dist
    dec = ref.decode(torch.from_numpy(z)).sample
  assert_close(mean, posterior.mean)
  assert_close(logvar, posterior.logvar)
  assert_close(out, dec)


def test_vq_encode_quantize_decode_match_diffusers(vq_pair):
  ref, module, params, _ = vq_pair
  assert isinstance(module, autoencoder.VQModel)
  x = _inputs(ref.config.in_channels)
  enc = module.apply({"params": params}, _nhwc(x), method="encode")
  out = module.apply({"params": params}, enc.latents, method="decode")
  with torch.no_grad():
    h = ref.encode(torch.from_numpy(x)).latents
    z_q, loss, (_, _, indices) = ref.quantize(h)
    dec = ref.decode(h)
  assert_close(enc.latents, h)
  np.testing.assert_array_equal(np.asarray(enc.indices).reshape(-1), indices.numpy().reshape(-1))
  assert_close(enc.quantized, z_q)
  assert_close(enc.loss, loss, nchw=False)
  assert_close(enc.loss, dec.commit_loss, nchw=False)
  assert_close(out, dec.sample)


@pytest.fixture(scope="module")
def small_kl_folder(tmp_path_factory):
  config = KL_CONFIGS["f2_c4"]
  ref = _randomise(TorchKL(**config, **_blocks(config)), seed=0)
  path = str(tmp_path_factory.mktemp("kl_small"))
  ref.save_pretrained(path)
  return ref, path


def test_bin_checkpoint_loads_the_same(small_kl_folder, tmp_path):
  ref, path = small_kl_folder
  _, params = load_diffusers(path)
  ref.save_pretrained(str(tmp_path), safe_serialization=False)
  assert os.path.exists(tmp_path / "diffusion_pytorch_model.bin")
  _, params_bin = load_diffusers(str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, params_bin, params)


def _random_flax_params(module, seed):
  f = module.downsampling_factor
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, f, f, module.in_channels)))
  rng = np.random.RandomState(seed)
  def draw(path, spec):
    name, shape = path[-1].key, spec.shape
    scale = {"kernel": 1 / np.sqrt(np.prod(shape[:-1])), "embedding": 1.0}.get(name, 0.3)
    value = (1.0 if name == "scale" else 0.0) + scale * rng.randn(*shape)
    return jnp.asarray(value, jnp.float32)
  return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(shapes["params"]))


@pytest.mark.parametrize("preset", ["KL_TINY", "VQ_TINY"])
def test_save_diffusers_round_trip_through_torch(preset, tmp_path):
  module = getattr(autoencoder, preset)()
  params = _random_flax_params(module, seed=3)
  save_diffusers(module, params, str(tmp_path))
  cls = TorchKL if preset == "KL_TINY" else TorchVQ
  ref = cls.from_pretrained(str(tmp_path)).eval()
  x = _inputs(3, seed=4)
  with torch.no_grad():  # KL: decodes the posterior mode; VQ: encode -> quantise -> decode
    expected = ref(torch.from_numpy(x)).sample
  ours, _ = module.apply({"params": params}, _nhwc(x))
  assert_close(ours, expected)
  module2, params2 = load_diffusers(str(tmp_path))
  assert module2 == module
  jax.tree.map(np.testing.assert_array_equal, params2, params)


@pytest.mark.parametrize("preset,config", [
    ("KL_F8", dict(cls=TorchKL, block_out_channels=(128, 256, 512, 512), latent_channels=4)),
    ("KL_F4", dict(cls=TorchKL, block_out_channels=(128, 256, 512), latent_channels=3)),
    ("VQ_F4", dict(cls=TorchVQ, block_out_channels=(128, 256, 512), latent_channels=3,
                   num_vq_embeddings=8192)),
])
def test_preset_param_counts_equal_diffusers(preset, config):
  config = dict(config)
  cls = config.pop("cls")
  with torch.device("meta"):  # shapes only, no memory
    ref = cls(layers_per_block=2, norm_num_groups=32, **config, **_blocks(config))
  n_ref = sum(p.numel() for p in ref.parameters())
  module = getattr(autoencoder, preset)()
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes)) == n_ref
  if preset == "KL_F8":
    assert n_ref == 83_653_863


def _write_config(path, **changes):
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  config.update(changes)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)


@pytest.mark.parametrize("change,match", [
    (dict(act_fn="gelu"), "act_fn='gelu' is not supported"),
    (dict(norm_type="spatial"), "not supported by ldm_jax: \\['norm_type'\\]"),
    (dict(up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"]), "up_block_types="),
    (dict(_class_name="ControlNetModel"), "'ControlNetModel' is not supported"),
    (dict(latent_channels=5), "shape mismatches"),
])
def test_unsupported_or_inconsistent_config_raises(small_kl_folder, tmp_path, change, match):
  _, path = small_kl_folder
  dst = str(tmp_path / "model")
  shutil.copytree(path, dst)
  _write_config(dst, **change)
  with pytest.raises(ValueError, match=match):
    load_diffusers(dst)


def test_vae_from_config_overrides():
  config = dict(_class_name="AutoencoderKL", block_out_channels=[32, 32], norm_num_groups=8,
                scaling_factor=0.5, shift_factor=0.1)
  module = diffusers_vae.vae_from_config(config, dtype=jnp.bfloat16, remat=True)
  assert (module.dtype, module.remat, module.scaling_factor, module.shift_factor) == (
      jnp.bfloat16, True, 0.5, 0.1)
  back = diffusers_vae.vae_config_from_module(module)
  assert back["shift_factor"] == 0.1 and back["block_out_channels"] == [32, 32]
