"""The loss sees the state's read-only `extra` collections and the step number, and never updates them."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ldm_jax.train import parallel


def test_loss_receives_step_and_frozen_extra_unchanged():
  frozen = {"scale": jnp.arange(4.0)}

  def loss_fn(params, batch, rng, extra):
    del rng
    pred = batch["x"] @ params["w"] * jnp.sum(extra["frozen"]["scale"])
    return jnp.mean((pred - batch["y"]) ** 2), {"seen_step": extra["step"].astype(jnp.float32)}

  mesh = parallel.make_mesh(1, jax.devices()[:2])
  dp = parallel.data_parallel(loss_fn, optax.sgd(0.01), mode="mesh", mesh=mesh)
  state = dp.create_state(lambda r: {"w": jax.random.normal(r, (3,))}, jax.random.key(0),
                          extra={"frozen": frozen})
  rng = np.random.default_rng(0)
  seen = []
  for _ in range(3):
    batch = {"x": rng.normal(size=(4, 3)).astype(np.float32), "y": rng.normal(size=(4,)).astype(np.float32)}
    state, m = dp.step(state, dp.put_batch(batch))
    seen.append(dp.fetch_metrics(m)["seen_step"])
  assert seen == [0.0, 1.0, 2.0]
  np.testing.assert_array_equal(np.asarray(state.extra["frozen"]["scale"]), np.arange(4.0))
  assert int(state.step) == 3
