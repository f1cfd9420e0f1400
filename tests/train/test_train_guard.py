"""NaN guard: a non-finite step leaves params / EMA / opt_state untouched and is counted."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import train_tiny
from ldm_jax.train import guard, loop
from ldm_jax.train import state as state_lib
from ldm_jax.train import step as step_lib


@pytest.fixture(scope="module")
def dp():
  return train_tiny.data_parallel("mesh", num_fsdp=2, num_devices=2)


def _host(tree):
  return jax.tree.map(np.asarray, tree)


def test_nan_batch_skips_update(dp):
  state = dp.create_state(train_tiny.init_params, jax.random.key(0))
  state, _ = dp.step(state, dp.put_batch(train_tiny.make_batch(0, 8)))
  before = _host(state)
  bad = train_tiny.make_batch(1, 8)
  bad["image"][3, 2, 2, 0] = np.nan
  state, m = dp.step(state, dp.put_batch(bad))
  after, m = _host(state), dp.fetch_metrics(m)
  for name in ("params", "ema_params", "opt_state", "num_updates"):
    for a, b in zip(jax.tree.leaves(getattr(after, name)), jax.tree.leaves(getattr(before, name))):
      np.testing.assert_array_equal(a, b, err_msg=name)
  assert int(after.step) == 2 and int(after.bad_steps) == 1 and int(after.consecutive_bad) == 1
  assert m["skipped"] == 1.0 and m["bad_steps"] == 1 and np.isnan(m["loss"])
  inf = train_tiny.make_batch(2, 8)
  inf["target"][0, 0] = np.inf  # finite input, infinite loss
  state, m = dp.step(state, dp.put_batch(inf))
  assert dp.fetch_metrics(m)["consecutive_bad"] == 2
  state, m = dp.step(state, dp.put_batch(train_tiny.make_batch(3, 8)))
  m = dp.fetch_metrics(m)
  assert m["skipped"] == 0.0 and m["consecutive_bad"] == 0 and m["bad_steps"] == 2
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
  moved = np.asarray(state.params["head"]["kernel"]) - after.params["head"]["kernel"]
  assert np.abs(moved).max() > 0


def test_consecutive_bad_steps_stop_the_run(dp):
  state = dp.create_state(train_tiny.init_params, jax.random.key(0))
  data = train_tiny.ArrayBatches(8, nan_at={2, 3, 4})
  with pytest.raises(guard.NonFiniteError, match="3 consecutive steps .* step 5"):
    loop.fit(dp, state, data, num_steps=10, max_consecutive_bad=3, progress=False)
  state = dp.create_state(train_tiny.init_params, jax.random.key(0))
  data = train_tiny.ArrayBatches(8, nan_at={2, 3, 6})  # never 3 in a row: the run finishes
  result = loop.fit(dp, state, data, num_steps=8, max_consecutive_bad=3, progress=False)
  assert result.step == 8 and int(result.state.bad_steps) == 3
  assert int(result.state.num_updates) == 5


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_is_exact(bad):
  big = np.float32(3e38)  # finite, but its square (a norm) would overflow
  tree = {"a": np.full((3, 4), big, np.float32), "b": np.zeros((5,), jnp.bfloat16),
          "n": np.arange(4, dtype=np.int32)}
  assert bool(jax.jit(guard.all_finite)(tree, np.float32(-big)))
  for name in ("a", "b"):
    broken = dict(tree, **{name: np.asarray(tree[name]).copy()})
    broken[name].flat[-1] = bad
    assert not bool(jax.jit(guard.all_finite)(tree, broken)), name
  assert bool(guard.all_finite({}))


def test_compiled_step_grows_linearly_with_leaves():
  """The non-finite flag stays one value in the compiled step: XLA:CPU once copied the flag's
  chain of one op per leaf into every per-leaf update (leaves^2 ops; 8 min to compile the
  464-leaf text LDM step, 47 s after)."""
  def ops_per_leaf(num_leaves):
    params = {f"w{i}": jnp.zeros((3 + i % 4,)) for i in range(num_leaves)}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    state = state_lib.init_train_state(params, tx, jax.random.key(0))
    loss_fn = lambda p, b, r, e: (sum(jnp.sum(x * b) for x in jax.tree.leaves(p)), {})
    step = jax.jit(lambda st, b: step_lib.train_step(st, b, loss_fn=loss_fn, tx=tx))
    text = step.lower(state, jnp.float32(1.0)).compile().as_text()
    return len(re.findall(r"^\s+\S+ = ", text, re.M)) / num_leaves
  small, large = ops_per_leaf(20), ops_per_leaf(120)
  assert large < 1.5 * small, (small, large)
