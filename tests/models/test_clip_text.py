"""Tests for ldm_jax.models.clip_text: sizes of the SD presets, causality, clip_skip, precision."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.models import clip_text as ct


@functools.partial(jax.jit, static_argnums=0, static_argnames=("output_hidden_states", "train"))
def apply(module, params, ids, rng=None, **kw):
  """module.apply, compiled (eager Flax is slow on a small CPU)."""
  rngs = {"dropout": rng} if rng is not None else None
  return module.apply({"params": params}, ids, rngs=rngs, **kw)


def _count(module):
  ids = jnp.zeros((1, module.max_length), jnp.int32)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), ids)
  return sum(x.size for x in jax.tree_util.tree_leaves(shapes))


def test_preset_parameter_counts():
  """SD 1.x text_encoder: 123,060,480 parameters; SD 2.x (23 blocks of ViT-H/14): 340,387,840."""
  assert _count(ct.CLIP_VIT_L14_TEXT()) == 123_060_480
  assert _count(ct.OPENCLIP_VIT_H14_TEXT()) == 340_387_840


@pytest.fixture(scope="module")
def tiny():
  module = ct.CLIP_TEXT_TINY()  # 2 blocks
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 77), 0, 1000)
  return module, jax.jit(module.init)(jax.random.PRNGKey(0), ids)["params"], ids


def test_causal(tiny):
  module, params, ids = tiny
  out = apply(module, params, ids)
  changed = apply(module, params, ids.at[:, 40].set(7))
  assert out.shape == (2, 77, 32) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out[:, :40], changed[:, :40])
  assert not np.allclose(out[:, 40:], changed[:, 40:])
  np.testing.assert_allclose(apply(module.clone(attention_impl="xla"), params, ids), out,
                             rtol=1e-6, atol=1e-6)


def test_hidden_states_and_clip_skip(tiny):
  module, params, ids = tiny
  out, hidden = apply(module, params, ids, output_hidden_states=True)
  assert len(hidden) == 3 and all(h.shape == (2, 77, 32) for h in hidden)
  # clip_skip=1 is the final LayerNorm of the second-to-last block: a 1-block model's output
  skipped = apply(module.clone(clip_skip=1), params, ids)
  two = {**params, "encoder": {k: v for k, v in params["encoder"].items() if k != "layers_1"}}
  np.testing.assert_allclose(skipped, apply(module.clone(layers=1), two, ids),
                             rtol=1e-6, atol=1e-6)
  assert not np.allclose(skipped, out)
  ids_short = ids[:, :10]  # fewer than 77 positions are fine
  assert apply(module, params, ids_short).shape == (2, 10, 32)


def test_bfloat16_and_remat(tiny):
  module, params, ids = tiny
  ref = apply(module, params, ids)
  bf = apply(module.clone(dtype=jnp.bfloat16), params, ids)
  assert bf.dtype == jnp.float32 and float(jnp.abs(bf - ref).max()) < 0.1

  # remat: same gradients (one block, 16 positions: the check is cheap to compile)
  one = {**params, "encoder": {"layers_0": params["encoder"]["layers_0"]}}

  def loss(p, m):
    return jnp.mean(apply(m, p, ids[:, :16]) ** 2)

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g = grad(one, module.clone(layers=1))
  for remat in (True, "dots"):  # True = "full"; "dots" saves the matmul outputs
    g_remat = grad(one, module.clone(layers=1, remat=remat))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           g, g_remat)


def test_cudnn_attention_on_a_cpu_host_is_a_clear_error(tiny):
  module, params, ids = tiny
  with pytest.raises(ValueError, match="needs an NVIDIA GPU; this process's JAX backend is 'cpu'"):
    apply(module.clone(attention_impl="cudnn"), params, ids)


def test_errors(tiny):
  module, params, ids = tiny
  with pytest.raises(ValueError, match=r"L <= 77, got \(2, 78\)"):
    apply(module, params, jnp.zeros((2, 78), jnp.int32))
  with pytest.raises(ValueError, match="integer token ids"):
    apply(module, params, ids.astype(jnp.float32))
  with pytest.raises(ValueError, match=r"activation 'relu' not in \('quick_gelu', 'gelu'\)"):
    apply(module.clone(activation="relu"), params, ids)
  with pytest.raises(ValueError, match=r"clip_skip 2 must be in \[0, layers=2\)"):
    apply(module.clone(clip_skip=2), params, ids)
  with pytest.raises(ValueError, match="attention_impl 'flash' not in"):
    apply(module.clone(attention_impl="flash"), params, ids)
