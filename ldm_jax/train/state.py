"""The train state: one pytree holding everything a training run needs to continue exactly.

Fields (all jax arrays, so the whole state jits, shards, donates and checkpoints as one value):
  step            int32 []   number of train steps taken (skipped non-finite steps included).
  params          pytree     the network parameters theta.
  ema_params      pytree     exponential moving average of theta (see `ldm_jax.train.ema`).
  opt_state       pytree     the Optax state.
  rng             uint32 [2] base key data; step t uses `fold_in(rng, t)` (see `step_rng`).
  num_updates     int32 []   optimizer updates actually applied (drives the EMA warm-up).
  bad_steps       int32 []   total steps skipped for a non-finite loss or gradient.
  consecutive_bad int32 []   skipped steps since the last good one (the run stops at a limit).
  extra           dict       other collections carried along (e.g. discriminator params and
                             optimizer state, batch statistics); the generic step leaves it alone.

The rng is stored as raw uint32 key data rather than a typed key so that every leaf is an ordinary
array for Orbax and for the content fingerprint.
"""

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  ema_params: PyTree
  opt_state: PyTree
  rng: jax.Array
  num_updates: jax.Array
  bad_steps: jax.Array
  consecutive_bad: jax.Array
  extra: dict = flax.struct.field(default_factory=dict)


def init_train_state(params: PyTree, tx: optax.GradientTransformation, rng: jax.Array,
                     extra: dict | None = None) -> TrainState:
  """Builds step-0 state from `params`; EMA starts as a copy of theta (LitEma does the same)."""
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  zero = jnp.zeros((), jnp.int32)
  return TrainState(
      step=zero, params=params, ema_params=jax.tree.map(jnp.copy, params),
      opt_state=tx.init(params), rng=jnp.asarray(rng, jnp.uint32), num_updates=zero,
      bad_steps=zero, consecutive_bad=zero, extra=dict(extra or {}))


def step_rng(state: TrainState) -> jax.Array:
  """The typed key of the current step: fold_in(base key, step), independent of the layout."""
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def state_creator(tx: optax.GradientTransformation, shardings_fn: Callable[[TrainState], PyTree]
                  ) -> Callable[[Callable, jax.Array], TrainState]:
  """create(init_params_fn, rng, extra=None) -> the train state, created directly in the sharding
  shardings_fn(abstract state) gives (never materialised on one device); one compiled program per
  `init_params_fn`. rng seeds the parameters and becomes the state's base key; extra: arrays
  carried in `state.extra` (e.g. frozen first-stage params)."""
  cache = {}

  def create(init_params_fn, rng, extra=None):
    key = (init_params_fn, jax.tree.structure(extra))
    if key not in cache:
      init = lambda r, e: init_train_state(init_params_fn(r), tx, r, e)
      cache[key] = jax.jit(init, out_shardings=shardings_fn(jax.eval_shape(init, rng, extra)))
    return cache[key](rng, extra)
  return create


def count_params(params: PyTree) -> int:
  """Number of scalar parameters in a pytree."""
  return int(sum(x.size for x in jax.tree.leaves(params)))
