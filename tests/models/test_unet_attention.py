"""UNet attention layers against float64 numpy and diffusers' Attention / Transformer2DModel."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention as TorchAttention
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from ldm_jax.convert import torch_layout
from ldm_jax.models.attention import Attention, AttentionBlock
from ldm_jax.models.embeddings import sincos_2d
from ldm_jax.models.transformer import SpatialTransformer


def attention_reference(x, context, p, heads):
  """softmax(q k^T / sqrt(d)) v per head, float64 numpy (Vaswani et al. 2017, eq. 1)."""
  f64 = lambda a: np.asarray(a, np.float64)
  dense = lambda h, q: h @ f64(q["kernel"]) + (f64(q["bias"]) if "bias" in q else 0)
  q, k, v = dense(x, p["to_q"]), dense(context, p["to_k"]), dense(context, p["to_v"])
  split = lambda a: a.reshape(*a.shape[:2], heads, -1).transpose(0, 2, 1, 3)
  q, k, v = split(q), split(k), split(v)
  logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
  w = np.exp(logits - logits.max(-1, keepdims=True))
  out = (w / w.sum(-1, keepdims=True)) @ v
  return dense(out.transpose(0, 2, 1, 3).reshape(*x.shape[:2], -1), p["to_out_0"])


@pytest.mark.parametrize("cross", [False, True])
def test_attention_matches_float64_reference(cross):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 16)).astype(np.float32)
  context = rng.standard_normal((2, 4, 12)).astype(np.float32) if cross else None
  module = Attention(heads=2, head_dim=8)
  params = nn.unbox(module.init(jax.random.key(0), x, context))["params"]
  out = module.apply({"params": params}, x, context)
  ref = attention_reference(np.float64(x), np.float64(x if context is None else context),
                            params, heads=2)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_attention_bfloat16_keeps_float32_logits():
  """Large logits: bfloat16 q/k would round them by ~1 unit if the softmax ran in bfloat16."""
  rng = np.random.default_rng(1)
  x = 6 * rng.standard_normal((1, 32, 16)).astype(np.float32)
  module = Attention(heads=1, head_dim=16)
  params = nn.unbox(module.init(jax.random.key(0), x))["params"]
  ref = module.apply({"params": params}, x)
  out = module.clone(dtype=jnp.bfloat16).apply({"params": params}, x)
  assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out)))
  err = float(jnp.abs(out.astype(jnp.float32) - ref).max() / jnp.abs(ref).max())
  assert err < 5e-2


def _randomize(model, seed=0):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      r = torch.randn(p.shape, generator=g)
      if name.endswith("bias"):
        p.copy_(0.1 * r)
      elif p.ndim == 1:
        p.copy_(1 + 0.1 * r)
      else:
        p.copy_(r / np.sqrt(np.prod(p.shape[1:])))
  return model.eval()


def _flax_params(torch_model, module, *args):
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))["params"]
  state = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  return torch_layout.torch_to_flax(state, shapes)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def test_attention_block_matches_diffusers():
  """UNet2DModel's attention: GroupNorm, 4 heads of width 8, residual, output rescale."""
  torch.manual_seed(0)
  ref_model = _randomize(TorchAttention(32, heads=4, dim_head=8, rescale_output_factor=1.5,
                                        eps=1e-5, norm_num_groups=8, residual_connection=True,
                                        bias=True, upcast_softmax=True,
                                        _from_deprecated_attn_block=True))
  x = np.random.default_rng(0).standard_normal((2, 4, 6, 32)).astype(np.float32)
  module = AttentionBlock(heads=4, head_dim=8, groups=8, epsilon=1e-5, rescale_output_factor=1.5)
  params = _flax_params(ref_model, module, x)
  with torch.no_grad():
    ref = ref_model(_nchw(x)).permute(0, 2, 3, 1).numpy()
  out = module.apply({"params": params}, x)
  assert float(np.abs(out - ref).max() / np.abs(ref).max()) < 1e-5


@pytest.mark.parametrize("linear,depth", [(False, 1), (True, 2)])
def test_spatial_transformer_matches_diffusers(linear, depth):
  torch.manual_seed(0)
  ref_model = _randomize(Transformer2DModel(
      num_attention_heads=2, attention_head_dim=16, in_channels=32, num_layers=depth,
      cross_attention_dim=24, norm_num_groups=8, use_linear_projection=linear))
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4, 4, 32)).astype(np.float32)
  context = rng.standard_normal((2, 5, 24)).astype(np.float32)
  module = SpatialTransformer(heads=2, head_dim=16, depth=depth, groups=8,
                              use_linear_projection=linear)
  params = _flax_params(ref_model, module, x, context)
  with torch.no_grad():
    ref = ref_model(_nchw(x), encoder_hidden_states=torch.from_numpy(context)).sample
  ref = ref.permute(0, 2, 3, 1).numpy()
  out = jax.jit(lambda p: module.apply({"params": p}, x, context))(params)
  assert float(np.abs(out - ref).max() / np.abs(ref).max()) < 1e-5


def test_sincos_2d_matches_float64_formula():
  h, w, d = 3, 5, 8
  got = np.asarray(sincos_2d(h, w, d))
  freqs = 10000.0 ** (-np.arange(d // 4, dtype=np.float64) / (d // 4))
  for r in range(h):
    for c in range(w):
      ref = np.concatenate([np.sin(r * freqs), np.cos(r * freqs), np.sin(c * freqs), np.cos(c * freqs)])
      np.testing.assert_allclose(got[r * w + c], ref, atol=1e-6)
  assert len({tuple(np.round(v, 5)) for v in got}) == h * w  # every position distinct
  with pytest.raises(ValueError, match="divisible by 4"):
    sincos_2d(2, 2, 6)


def test_position_embedding_breaks_the_translation_symmetry_of_cross_attention():
  """A spatially constant feature map stays constant through the spatial transformer without
  positions (every query is the same), and varies by position with "sincos_2d": each query then
  knows where it is. The parameters (names, shapes, init) are the same either way."""
  x = jnp.ones((1, 4, 8, 16)) * jnp.linspace(-1.0, 1.0, 16)
  context = jax.random.normal(jax.random.key(1), (1, 5, 12))
  plain = SpatialTransformer(heads=2, head_dim=8, groups=4)
  placed = SpatialTransformer(heads=2, head_dim=8, groups=4, position_embedding="sincos_2d")
  params = plain.init(jax.random.key(0), x, context)["params"]
  params_placed = placed.init(jax.random.key(0), x, context)["params"]
  jax.tree.map(np.testing.assert_array_equal, nn.meta.unbox(params), nn.meta.unbox(params_placed))
  # proj_out is zero-initialised in neither (diffusers' layout); randomise all to see the effect
  params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(2), a.shape),
                        nn.meta.unbox(params))
  spread = lambda m: float(jnp.ptp(m.apply({"params": params}, x, context).reshape(-1, 16), axis=0).max())
  assert spread(plain) < 1e-5
  assert spread(placed) > 1e-2
  with pytest.raises(ValueError, match="valid choices"):
    SpatialTransformer(heads=2, head_dim=8, groups=4, position_embedding="rope").init(
        jax.random.key(0), x, context)
