"""Optimizer schedule against closed forms, EMA against a numpy LitEma loop, accumulation."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_tiny
from ldm_jax.train import ema, optim, state as state_lib
from ldm_jax.train.step import train_step


def _config(**kw):
  c = optim.default_config()
  for k, v in kw.items():
    c[k] = v
  return c


def _closed_form(t, peak, warm, total, end, decay):
  if t < warm:
    return peak * t / warm
  if decay == "constant":
    return peak
  frac = min(t - warm, total - warm) / (total - warm)
  if decay == "cosine":
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * frac))
  return peak + (end - peak) * frac


@pytest.mark.parametrize("decay", optim.DECAYS)
@pytest.mark.parametrize("warm", [0, 10])
def test_schedule_matches_closed_form(decay, warm):
  c = _config(learning_rate=3e-4, warmup_steps=warm, decay=decay, decay_steps=100,
              end_lr_factor=0.1)
  sched = optim.learning_rate_schedule(c)
  for t in [0, 1, 5, 9, 10, 11, 37, 55, 99, 100, 150]:
    want = _closed_form(t, 3e-4, warm, 100, 3e-5, decay)
    np.testing.assert_allclose(float(sched(t)), want, rtol=1e-5, atol=1e-12, err_msg=f"t={t}")


def test_bad_optimizer_config_lists_choices():
  with pytest.raises(ValueError, match="cosine"):
    optim.make_optimizer(_config(decay="exponential"))
  with pytest.raises(ValueError, match="decay_steps"):
    optim.make_optimizer(_config(warmup_steps=50, decay_steps=20))
  with pytest.raises((AttributeError, KeyError)):
    _config(learnig_rate=1.0)  # locked config: a misspelt key fails


def test_ema_matches_numpy_litema_loop():
  rng = np.random.default_rng(0)
  thetas = rng.normal(size=(30, 5))
  decay = 0.99
  shadow = thetas[0].copy()
  ema_j = {"w": jnp.asarray(thetas[0], jnp.float32)}
  for n in range(1, 30):  # LitEma: num_updates += 1; d = min(decay, (1+n)/(10+n))
    d = min(decay, (1 + n) / (10 + n))
    shadow = shadow - (1 - d) * (shadow - thetas[n])
    ema_j = ema.ema_update(ema_j, {"w": jnp.asarray(thetas[n], jnp.float32)},
                           ema.ema_decay(decay, n))
  np.testing.assert_allclose(np.asarray(ema_j["w"]), shadow, rtol=1e-5, atol=1e-6)
  assert float(ema.ema_decay(0.9999, 1)) == pytest.approx(2 / 11)
  assert float(ema.ema_decay(0.9999, 10**6)) == pytest.approx(0.9999)
  assert float(ema.ema_decay(0.5, 1, warmup=False)) == 0.5


def _run(config, batches):
  tx = optim.make_optimizer(config)
  st = state_lib.init_train_state(train_tiny.init_params(jax.random.key(0)), tx,
                                  jax.random.key(1))
  step = jax.jit(functools.partial(train_step, loss_fn=train_tiny.make_loss(), tx=tx,
                                   ema_decay=0.9))
  for b in batches:
    st, _ = step(st, b)
  return st


def test_accumulation_equals_large_batch():
  k, b = 4, 4
  big = [train_tiny.make_batch(i, k * b) for i in range(2)]
  micro = [{n: v[j * b:(j + 1) * b] for n, v in bb.items()} for bb in big for j in range(k)]
  common = dict(learning_rate=1e-2, warmup_steps=0, decay="constant", grad_clip_norm=0.5)
  one = _run(_config(**common), big)
  acc = _run(_config(grad_accum_steps=k, **common), micro)
  assert int(acc.step) == 2 * k and int(acc.num_updates) == 2 == int(one.num_updates)
  for a, o in zip(jax.tree.leaves((acc.params, acc.ema_params)),
                  jax.tree.leaves((one.params, one.ema_params))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(o), rtol=1e-5, atol=1e-6)
  start = train_tiny.init_params(jax.random.key(0))
  moved = max(float(jnp.max(jnp.abs(a - s))) for a, s in
              zip(jax.tree.leaves(acc.params), jax.tree.leaves(start)))
  assert moved > 1e-3  # the comparison is not between two unchanged states
