"""The optimizer: AdamW with a warm-up + decay learning-rate schedule, clipping and accumulation.

Built from an `ml_collections.ConfigDict` (see `default_config`). The schedule counts optimizer
updates, not micro-steps: with `grad_accum_steps = k` the schedule advances once per k batches.
"""

import jax
import ml_collections
import optax

DECAYS = ("cosine", "linear", "constant")


def default_config() -> ml_collections.ConfigDict:
  """The optimizer section of a training config (locked: a misspelt key fails)."""
  c = ml_collections.ConfigDict()
  c.learning_rate = 1e-4      # peak learning rate, reached at the end of the warm-up
  c.warmup_steps = 0          # linear warm-up from 0 over this many optimizer updates
  c.decay = "cosine"          # shape after the warm-up: one of DECAYS
  c.decay_steps = 10_000      # updates at which the decay ends (warm-up included); then held
  c.end_lr_factor = 0.0       # final learning rate as a fraction of the peak
  c.b1 = 0.9                  # Adam beta_1
  c.b2 = 0.999                # Adam beta_2
  c.eps = 1e-8                # Adam epsilon
  c.weight_decay = 0.01       # decoupled weight decay (torch.optim.AdamW's default, as in LDM)
  c.grad_clip_norm = 1.0      # clip the global gradient norm to this; 0 turns clipping off
  c.grad_accum_steps = 1      # average gradients over this many batches per update
  c.lock()
  return c


def _check(config: ml_collections.ConfigDict) -> None:
  if config.decay not in DECAYS:
    raise ValueError(f"optim.decay={config.decay!r}; valid choices: {DECAYS}")
  if config.warmup_steps < 0:
    raise ValueError(f"optim.warmup_steps={config.warmup_steps} must be >= 0")
  if config.decay != "constant" and config.decay_steps <= config.warmup_steps:
    raise ValueError(f"optim.decay_steps={config.decay_steps} must exceed "
                     f"optim.warmup_steps={config.warmup_steps} for decay={config.decay!r}")
  if int(config.grad_accum_steps) < 1:
    raise ValueError(f"optim.grad_accum_steps={config.grad_accum_steps} must be >= 1")
  if config.grad_clip_norm < 0:
    raise ValueError(f"optim.grad_clip_norm={config.grad_clip_norm} must be >= 0 (0 = off)")


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """update count n -> learning rate: linear warm-up 0 -> peak, then cosine/linear/constant."""
  _check(config)
  peak, warm = config.learning_rate, int(config.warmup_steps)
  end = peak * config.end_lr_factor
  if config.decay == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warm, int(config.decay_steps), end)
  if config.decay == "linear":
    decay = optax.linear_schedule(peak, end, int(config.decay_steps) - warm)
  else:
    decay = optax.constant_schedule(peak)
  if warm == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), decay], [warm])


def scale_subtrees(lr_scales: dict) -> optax.GradientTransformation:
  """Multiplies the updates of each top-level params subtree by lr_scales[name] (default 1).

  After AdamW this is a per-subtree learning rate (weight decay included, as AdamW couples it to
  the learning rate): {"text_encoder": 10.0} trains the encoder at 10 x the schedule's rate.
  Stateless, so the opt_state's arrays are those of the unscaled optimizer.
  """
  bad = {k: v for k, v in lr_scales.items() if not (isinstance(v, (int, float)) and v > 0)}
  if bad:
    raise ValueError(f"learning-rate scales must be numbers > 0, got {bad}")

  def update(updates, state, params=None):
    del params
    if not isinstance(updates, dict) or not set(lr_scales) <= set(updates):
      names = sorted(updates) if isinstance(updates, dict) else type(updates).__name__
      raise ValueError(f"learning-rate scales for {sorted(lr_scales)}, but the params' top-level "
                       f"subtrees are {names}")
    return {k: (jax.tree.map(lambda u, s=lr_scales[k]: u * s, v) if k in lr_scales else v)
            for k, v in updates.items()}, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config: ml_collections.ConfigDict,
                   lr_scales: dict | None = None) -> optax.GradientTransformation:
  """clip_by_global_norm -> AdamW(schedule) [-> `scale_subtrees(lr_scales)`], wrapped in
  `optax.MultiSteps` when accumulating.

  With accumulation the opt_state is an `optax.MultiStepsState`; the train step reads its
  `mini_step` to know whether parameters moved (see `applied_update`). lr_scales (e.g.
  {"text_encoder": 10.0}, scales != 1 only) multiplies the learning rate of top-level subtrees.
  """
  _check(config)
  adamw = optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2,
                      eps=config.eps, weight_decay=config.weight_decay)
  tx = adamw
  scales = {k: v for k, v in (lr_scales or {}).items() if v != 1}
  if scales:
    tx = optax.chain(tx, scale_subtrees(scales))
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  k = int(config.grad_accum_steps)
  if k > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
  return tx


def applied_update(opt_state) -> bool:
  """True where the last `tx.update` moved the parameters (always, unless accumulating)."""
  if isinstance(opt_state, optax.MultiStepsState):
    return opt_state.mini_step == 0
  return True
