"""Tests for ldm_jax.models.bert_text: LDM's BERTEmbedder size, bidirectionality, dropout, remat."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax.models import bert_text as bt


@functools.partial(jax.jit, static_argnums=0, static_argnames=("output_hidden_states", "train"))
def apply(module, params, ids, rng=None, **kw):
  """module.apply, compiled (eager Flax is slow on a small CPU)."""
  rngs = {"dropout": rng} if rng is not None else None
  return module.apply({"params": params}, ids, rngs=rngs, **kw)


def test_txt2img_parameter_count():
  """Closed form: embeddings + 32 x (2 LN, q/k/v 1280->512 no bias, out, 1280-5120-1280 MLP) + LN."""
  d, inner, ff, n, vocab, pos = 1280, 512, 5120, 32, 30522, 77
  layer = 4 * d + 3 * d * inner + (inner * d + d) + (d * ff + ff) + (ff * d + d)
  expected = vocab * d + pos * d + n * layer + 2 * d
  module = bt.BERT_TXT2IMG_1P4B()
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 77), jnp.int32))
  assert sum(x.size for x in jax.tree_util.tree_leaves(shapes)) == expected == 542_895_360


@pytest.fixture(scope="module")
def tiny():
  module = bt.BERT_TINY()
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 77), 0, 1000)
  return module, jax.jit(module.init)(jax.random.PRNGKey(0), ids)["params"], ids


def test_bidirectional_and_hidden_states(tiny):
  module, params, ids = tiny
  out, hidden = apply(module, params, ids, output_hidden_states=True)
  assert out.shape == (2, 77, 32) and out.dtype == jnp.float32 and len(hidden) == 3
  changed = apply(module, params, ids.at[:, -1].set(3))
  assert not np.allclose(out[:, 0], changed[:, 0])  # the first token sees the last one
  assert "bias" not in params["layers_0"]["self_attn"]["q_proj"]


def test_dropout_and_remat(tiny):
  module, params, ids = tiny
  noisy = module.clone(dropout=0.5)
  eval_out = apply(noisy, params, ids)
  np.testing.assert_allclose(eval_out, apply(module, params, ids), rtol=1e-6)
  train_out = apply(noisy, params, ids, train=True, rng=jax.random.PRNGKey(2))
  assert not np.allclose(train_out, eval_out)
  # remat: same gradients with the same dropout masks (one block, 16 positions)
  one = {k: v for k, v in params.items() if k != "layers_1"}

  def loss(p, m):
    return jnp.mean(apply(m, p, ids[:, :16], train=True, rng=jax.random.PRNGKey(3)) ** 2)

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  g = grad(one, noisy.clone(layers=1))
  g_remat = grad(one, noisy.clone(layers=1, remat=True))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                         g, g_remat)


def test_bfloat16(tiny):
  module, params, ids = tiny
  bf = apply(module.clone(dtype=jnp.bfloat16), params, ids)
  assert bf.dtype == jnp.float32
  assert float(jnp.abs(bf - apply(module, params, ids)).max()) < 0.1
