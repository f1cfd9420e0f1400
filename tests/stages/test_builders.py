"""builders.optimizer: the text encoder's learning-rate scale (text.lr_scale)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import mnist_ldm, mnist_text
from ldm_jax.stages import builders
from ldm_jax.train import optim


def _params():
  r = np.random.default_rng(0)
  return {"unet": {"conv": jnp.asarray(r.normal(size=(3, 4)), jnp.float32)},
          "text_encoder": {"embed": jnp.asarray(r.normal(size=(5, 2)), jnp.float32),
                           "ln": jnp.asarray(r.normal(size=(2,)), jnp.float32)}}


def _grads(step, params):
  r = np.random.default_rng(100 + step)  # some steps are clipped (global norm 1)
  return jax.tree.map(lambda p: jnp.asarray(r.normal(size=p.shape) * (0.1 + step), jnp.float32),
                      params)


def _run(tx, params, steps=6):
  state = tx.init(params)
  for i in range(steps):
    updates, state = tx.update(_grads(i, params), state, params)
    params = optax.apply_updates(params, updates)
  return params


def _reference(config, params, scale, steps=6):
  """The joint gradient clipped once, then one AdamW per subtree, the encoder's schedule x scale."""
  o = config.optim
  lr = optim.learning_rate_schedule(o)
  adamw = lambda sched: optax.adamw(sched, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
  txs = {"unet": adamw(lr), "text_encoder": adamw(lambda n: scale * lr(n))}
  clip = optax.clip_by_global_norm(o.grad_clip_norm)
  states = {k: tx.init(params[k]) for k, tx in txs.items()}
  for i in range(steps):
    g, _ = clip.update(_grads(i, params), clip.init(params))
    new = {}
    for k, tx in txs.items():
      u, states[k] = tx.update(g[k], states[k], params[k])
      new[k] = optax.apply_updates(params[k], u)
    params = new
  return params


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_text_lr_scale_trains_the_encoder_at_scale_times_the_rate(scale):
  config = mnist_text.get_config()
  config.optim.grad_clip_norm, config.optim.weight_decay, config.optim.warmup_steps = 1.0, 0.1, 2
  config.text.lr_scale = scale
  tx, _ = builders.optimizer(config)
  params = _params()
  got, want = _run(tx, params), _reference(config, params, scale)
  for k in ("unet", "text_encoder"):
    for a, b in zip(jax.tree.leaves(got[k]), jax.tree.leaves(want[k])):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  if scale != 1.0:  # the unscaled optimizer does not match: the scale reached the encoder only
    unscaled = mnist_text.get_config()
    unscaled.optim.grad_clip_norm, unscaled.optim.weight_decay = 1.0, 0.1
    unscaled.optim.warmup_steps = 2
    plain = _run(builders.optimizer(unscaled)[0], params)
    assert not np.allclose(plain["text_encoder"]["embed"], got["text_encoder"]["embed"], atol=1e-4)
    np.testing.assert_allclose(plain["unet"]["conv"], got["unet"]["conv"], rtol=1e-6)


def test_lr_scale_applies_to_jointly_trained_encoders_only():
  config = mnist_text.get_config()
  config.text.lr_scale = 3.0
  assert builders.text_lr_scales(config) == {"text_encoder": 3.0}
  config.text.train_encoder = False  # frozen: params {"unet"} only (validate refuses scale != 1)
  assert builders.text_lr_scales(config) == {}
  assert builders.text_lr_scales(mnist_ldm.get_config()) == {}
  # scale 1 keeps the optimizer state of older runs (their checkpoints restore unchanged)
  c1 = mnist_text.get_config()
  s_plain = optim.make_optimizer(c1.optim).init(_params())
  s_one = builders.optimizer(c1)[0].init(_params())
  assert jax.tree.structure(s_plain) == jax.tree.structure(s_one)


def test_lr_scales_name_unknown_subtrees():
  tx = optim.make_optimizer(mnist_text.get_config().optim, {"encoder": 2.0})
  params = _params()
  with pytest.raises(ValueError, match=r"scales for \['encoder'\].*subtrees are \['text_encoder', 'unet'\]"):
    tx.update(params, tx.init(params), params)
  with pytest.raises(ValueError, match="numbers > 0"):
    optim.make_optimizer(mnist_text.get_config().optim, {"text_encoder": -1.0})
