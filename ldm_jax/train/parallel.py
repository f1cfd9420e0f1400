"""Data parallelism in two modes built from ONE pure loss: `jax.pmap` and `jax.jit` on a mesh.

  "pmap": the state is replicated with a leading local-device axis [n_local, ...]; each device
          gets [n_local, b / n_local, ...] of the process's batch; gradients, loss and metrics
          are averaged with `lax.pmean` over the axis "data" (all devices of all processes).
  "mesh": one `jax.jit` program on a Mesh with axes ("data", "fsdp"); params, EMA, optimizer
          state and the extra collections are sharded by their logical axis names and the
          rules of `axis_rules` (unnamed arrays: over "fsdp" along their largest divisible
          dimension, replicated where none divides); the batch's leading dim is sharded over
          both axes. The loss sees the global batch, so no explicit gradient reduction is
          written (XLA inserts it).
          Do not swap jit for `shard_map` here without care: under shard_map's default checks
          the gradient of a replicated parameter is already summed over devices.

In both modes the "global layout" of the state (what checkpoints hold) is a pytree of global
`jax.Array`s on the mesh: sharded as above in mesh mode, replicated in pmap mode. Each process
feeds its own host batch; `put_batch` assembles the global batch from the per-process pieces
(process p's rows follow process p-1's) with `jax.make_array_from_process_local_data`.
"""

from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ldm_jax.train import axis_rules
from ldm_jax.train import state as state_lib
from ldm_jax.train.axis_rules import fsdp_spec  # noqa: F401  (the fallback, as parallel.fsdp_spec)
from ldm_jax.train.step import LossFn, train_step

MODES = ("pmap", "mesh")
MESH_AXES = axis_rules.MESH_AXES
BATCH_SPEC = P(MESH_AXES)
PyTree = Any


def make_mesh(num_fsdp: int = 1, devices=None) -> Mesh:
  """Mesh ("data", "fsdp") of shape (n / num_fsdp, num_fsdp) over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if num_fsdp < 1 or n % num_fsdp:
    raise ValueError(f"num_fsdp={num_fsdp} must be >= 1 and divide the {n} devices")
  axis_types = (jax.sharding.AxisType.Auto,) * 2
  return jax.make_mesh((n // num_fsdp, num_fsdp), MESH_AXES, axis_types=axis_types,
                       devices=devices)


def state_shardings(abstract_state: state_lib.TrainState, mesh: Mesh, fsdp: bool = True, *,
                    param_names: PyTree | None = None, extra_names: PyTree | None = None,
                    rules=axis_rules.DEFAULT_RULES) -> PyTree:
  """NamedShardings of the global layout (fsdp=False: all replicated, the pmap layout).

  params, EMA and opt_state by `axis_rules.leaf_spec` under `param_names` (the
  `axis_rules.logical_names` of the params; EMA and Adam moments take their param's names by path
  suffix), extra by `extra_names` (its collections' names), under `rules`; unnamed leaves (all of
  them when the names are None) by the size rule `axis_rules.fsdp_spec`; step, rng, counters P()."""
  mesh_shape = dict(mesh.shape) if fsdp else {a: 1 for a in mesh.axis_names}
  rules = axis_rules.check_rules(rules)
  tables = {"params": axis_rules.names_by_path(param_names),
            "extra": axis_rules.names_by_path(extra_names)}
  tables["ema_params"] = tables["opt_state"] = tables["params"]

  def shardings(field, tree):
    if field not in tables:
      return jax.tree.map(lambda a: NamedSharding(mesh, P()), tree)
    specs = axis_rules.tree_specs(tree, tables[field], rules, mesh_shape)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, P))
  return state_lib.TrainState(**{f: shardings(f, getattr(abstract_state, f))
                                 for f in abstract_state.__dataclass_fields__})


def with_shardings(abstract: PyTree, shardings: PyTree) -> PyTree:
  """ShapeDtypeStructs carrying shardings (restore targets)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def _check_batch(batch: PyTree, n_local: int) -> None:
  for path, x in jax.tree_util.tree_leaves_with_path(batch):
    if np.ndim(x) == 0 or np.shape(x)[0] % n_local:
      raise ValueError(
          f"batch leaf {jax.tree_util.keystr(path)} has shape {np.shape(x)}; its leading "
          f"(per-process batch) dim must be a multiple of the {n_local} local devices")


def global_batch(host_batch: PyTree, mesh: Mesh) -> PyTree:
  """Per-process host batch [b, ...] -> global jax.Array [b * n_processes, ...] on the mesh."""
  _check_batch(host_batch, len(mesh.local_devices))
  sharding = NamedSharding(mesh, BATCH_SPEC)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch)


class DataParallel(NamedTuple):
  """A compiled step and the layout conversions of one parallel mode (see module docstring).

  step(state, device_batch, at=None) -> (state, device_metrics)
                                                         the state argument is donated; `at`, the
                                                         host's count of steps taken, picks the
                                                         early loss' program before its end.
  put_batch(host_batch) -> device_batch                  host numpy [b_process, ...] in.
  create_state(init_params_fn, rng, extra=None) -> state created directly in the layout.
  to_global(state) / from_global(global_state)           layout <-> checkpoint layout.
  global_shardings(abstract_state) -> shardings          of the checkpoint layout.
  fetch_metrics(device_metrics) -> dict[str, float]      one host copy.
  compiler_options: the XLA options the step compiles with (None: the defaults).
  """
  mode: str
  mesh: Mesh
  step: Callable
  put_batch: Callable
  create_state: Callable
  to_global: Callable
  from_global: Callable
  global_shardings: Callable
  fetch_metrics: Callable
  compiler_options: dict | None = None


def data_parallel(loss_fn: LossFn, tx: optax.GradientTransformation, *, mode: str,
                  mesh: Mesh | None = None, ema_decay: float = 0.9999,
                  ema_warmup: bool = True, lr_schedule: optax.Schedule | None = None,
                  donate: bool = True, param_names: PyTree | None = None,
                  extra_names: PyTree | None = None,
                  rules=axis_rules.DEFAULT_RULES,
                  compiler_options: dict | None = None,
                  early_loss: tuple[int, LossFn] | None = None) -> DataParallel:
  """Builds the step of `mode` ("pmap" or "mesh") around `train_step(loss_fn, tx, ...)`.
  param_names / extra_names / rules: the mesh layout (see `state_shardings`); pmap replicates.
  compiler_options: XLA options of the step's program (`ldm_jax.xla_cpu.compiler_options`).
  early_loss: (until, loss_fn_early): `step(state, batch, at=s)` with s < until runs a second
    program built from loss_fn_early, which must give loss_fn's loss and gradients at those steps
    at a lower cost (the autoencoder without its discriminator before disc_start). Each program
    compiles on its first use; a step without `at` always runs loss_fn's. A lax.cond on the step
    inside one program would not do: XLA:CPU runs a convolution's weight gradient inside a
    conditional ~100x slower (experiments/benchmarks/nested_grads.py)."""
  if mode not in MODES:
    raise ValueError(f"parallel mode {mode!r}; valid choices: {MODES}")
  mesh = make_mesh() if mesh is None else mesh
  if tuple(mesh.axis_names) != MESH_AXES:
    raise ValueError(f"mesh axes {mesh.axis_names}; expected {MESH_AXES} (use make_mesh)")
  kw = dict(loss_fn=loss_fn, tx=tx, ema_decay=ema_decay, ema_warmup=ema_warmup,
            lr_schedule=lr_schedule)
  if mode == "pmap":
    dp = _pmap_parallel(mesh, kw, donate, compiler_options)
    build = lambda kw_early: _pmap_parallel(mesh, kw_early, donate, compiler_options).step
  else:
    layout = dict(param_names=param_names, extra_names=extra_names,
                  rules=axis_rules.check_rules(rules))
    dp = _mesh_parallel(mesh, kw, donate, layout, compiler_options)
    build = lambda kw_early: _mesh_parallel(mesh, kw_early, donate, layout, compiler_options).step
  until, step_early = ((0, dp.step) if early_loss is None else
                       (int(early_loss[0]), build(dict(kw, loss_fn=early_loss[1]))))
  return dp._replace(step=_phased(dp.step, step_early, until))


def _phased(step, step_early, until: int) -> Callable:
  """`step(state, batch, at=None)` that runs `step_early` for host steps `at` < `until`."""
  def call(state, batch, at=None):
    return (step_early if at is not None and at < until else step)(state, batch)
  return call


def _mesh_parallel(mesh: Mesh, kw: dict, donate: bool, layout: dict,
                   compiler_options: dict | None) -> DataParallel:
  shardings_of = lambda abstract: state_shardings(abstract, mesh, **layout)
  replicated = NamedSharding(mesh, P())
  cache = {}

  def step(state, batch):
    key = jax.tree.structure(state)
    if key not in cache:
      s = shardings_of(state)
      cache[key] = jax.jit(lambda st, b: train_step(st, b, **kw), in_shardings=(s, None),
                           out_shardings=(s, replicated),
                           donate_argnums=(0,) if donate else (),
                           compiler_options=compiler_options)
    return cache[key](state, batch)

  create_state = state_lib.state_creator(kw["tx"], shardings_of)
  return DataParallel(
      mode="mesh", mesh=mesh, step=step, put_batch=lambda b: global_batch(b, mesh),
      create_state=create_state, to_global=lambda s: s, from_global=lambda s: s,
      global_shardings=shardings_of,
      fetch_metrics=lambda m: {k: float(v) for k, v in jax.device_get(m).items()},
      compiler_options=compiler_options)


def compiled_with(fn, compiler_options: dict | None):
  """`fn` (a pmapped function) compiled with `compiler_options`, once per argument layout
  (`jax.pmap` takes no compiler options; its lowering's `compile` does)."""
  if not compiler_options:
    return fn
  cache = {}

  def call(*args):
    leaves, treedef = jax.tree.flatten(args)
    key = (treedef, tuple((x.shape, x.dtype) for x in leaves))
    if key not in cache:
      cache[key] = fn.lower(*args).compile(compiler_options)
    return cache[key](*args)
  return call


def _pmap_parallel(mesh: Mesh, kw: dict, donate: bool,
                   compiler_options: dict | None) -> DataParallel:
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  n_local = len(local)
  subset = sorted(d.id for d in local) != sorted(d.id for d in jax.local_devices())
  if subset and jax.process_count() > 1:
    raise ValueError("pmap mode on several processes runs on all local devices; the mesh has "
                     f"{n_local} of the {jax.local_device_count()} local devices")
  local_mesh = Mesh(np.array(local), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  stacked = NamedSharding(local_mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  shardings_of = lambda abstract: state_shardings(abstract, mesh, fsdp=False)
  pstep = jax.pmap(lambda st, b: train_step(st, b, axis_name="data", **kw), axis_name="data",
                   donate_argnums=(0,) if donate else (), devices=local if subset else None)
  pstep = compiled_with(pstep, compiler_options)

  def to_global(state):
    def leaf(x):
      shards = sorted(x.addressable_shards, key=lambda s: s.device.id)
      return jax.make_array_from_single_device_arrays(
          x.shape[1:], replicated, [s.data.reshape(x.shape[1:]) for s in shards])
    return jax.tree.map(leaf, state)

  def from_global(state):
    def leaf(x):
      by_device = {s.device: s.data for s in x.addressable_shards}
      if set(by_device) != set(local) or not x.sharding.is_fully_replicated:
        x = jax.device_put(x, replicated)  # e.g. restored from an fsdp-sharded checkpoint
        by_device = {s.device: s.data for s in x.addressable_shards}
      return jax.make_array_from_single_device_arrays(
          (n_local,) + x.shape, stacked, [by_device[d][None] for d in local])
    return jax.tree.map(leaf, state)

  def put_batch(host_batch):
    _check_batch(host_batch, n_local)
    split = lambda x: np.asarray(x).reshape((n_local, -1) + np.shape(x)[1:])
    return jax.device_put(jax.tree.map(split, host_batch), stacked)

  def fetch_metrics(m):
    return {k: float(np.asarray(v.addressable_shards[0].data).reshape(-1)[0])
            for k, v in m.items()}

  create_global = state_lib.state_creator(kw["tx"], shardings_of)
  return DataParallel(
      mode="pmap", mesh=mesh, step=pstep, put_batch=put_batch,
      create_state=lambda f, rng, extra=None: from_global(create_global(f, rng, extra)),
      to_global=to_global, from_global=from_global, global_shardings=shardings_of,
      fetch_metrics=fetch_metrics, compiler_options=compiler_options)
