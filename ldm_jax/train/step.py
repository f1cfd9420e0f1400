"""The generic train step: gradient of one pure loss -> guard -> optimizer update -> EMA.

`train_step` is a pure function of (state, batch); `ldm_jax.train.parallel` compiles it under
`jax.pmap` (with `axis_name`, gradients averaged with `lax.pmean`) or `jax.jit` on a mesh
(`axis_name=None`: the loss already sees the global batch, so its gradient is the global one).

The loss contract: `loss_fn(params, batch, rng, extra) -> (loss, aux)` with `loss` a float32 [] mean
over the examples of `batch`, `aux` a dict of float32 [] metrics, `rng` a typed key, and `extra` the
state's `extra` collections plus "step" (int32 [], the step being taken) -- read-only inputs such as
a frozen first stage or a switch-on step (no gradient is taken with respect to them). Under pmap the
key is folded with the device index so that devices draw different noise.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from ldm_jax.train import ema as ema_lib
from ldm_jax.train import guard
from ldm_jax.train import optim
from ldm_jax.train.state import TrainState, step_rng

LossFn = Callable[[Any, Any, jax.Array, dict], tuple[jax.Array, dict]]


def train_step(state: TrainState, batch: Any, *, loss_fn: LossFn,
               tx: optax.GradientTransformation, ema_decay: float = 0.9999,
               ema_warmup: bool = True, lr_schedule: optax.Schedule | None = None,
               axis_name: str | None = None) -> tuple[TrainState, dict]:
  """One step; returns the new state and float32 [] metrics (loss, grad_norm, skipped, ...)."""
  rng = step_rng(state)
  if axis_name is not None:
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
  extra = dict(state.extra, step=state.step)
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng, extra)
  if axis_name is not None:
    loss, aux, grads = jax.lax.pmean((loss, aux, grads), axis_name)
  ok = guard.all_finite(loss, grads)

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  moved = jnp.logical_and(ok, optim.applied_update(opt_state))
  num_updates = state.num_updates + moved.astype(jnp.int32)
  decay = ema_lib.ema_decay(ema_decay, num_updates, ema_warmup)
  ema_params = ema_lib.ema_update(state.ema_params, params, decay)
  bad_steps, consecutive_bad = guard.count_bad(ok, state.bad_steps, state.consecutive_bad)

  new_state = state.replace(
      step=state.step + 1,
      params=guard.select_tree(ok, params, state.params),
      opt_state=guard.select_tree(ok, opt_state, state.opt_state),
      ema_params=guard.select_tree(moved, ema_params, state.ema_params),
      num_updates=num_updates, bad_steps=bad_steps, consecutive_bad=consecutive_bad)
  metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads),
                 skipped=1.0 - ok.astype(jnp.float32), bad_steps=bad_steps,
                 consecutive_bad=consecutive_bad)
  if lr_schedule is not None:
    metrics["learning_rate"] = lr_schedule(state.num_updates)
  return new_state, metrics
