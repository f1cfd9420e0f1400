"""Pod scale without a pod: lower and compile the train step on large simulated meshes.

  python -m experiments.benchmarks.pod_compile [--models=sd1_unet,imagenet_cin_ldm_vq4]
      [--devices=8,256] [--fsdp=8] [--batch_per_device=1,2] [--remat=none,full]
      [--dtype=bfloat16] [--out=experiments/results/pod_compile.json] [--estimate]
  # any stage config of yours (an LDM config needs its autoencoder's):
  python -m experiments.benchmarks.pod_compile --models=my_ldm.py --first_stage=my_ae.py

For every model, mesh ("data" x "fsdp" over N simulated CPU devices), per-device batch and remat
policy, the project's own train step (`ldm_jax.train.step.train_step` around the stage's loss:
frozen encoder, label dropout, EMA, clipping, AdamW) is lowered on abstract inputs (nothing is
allocated) with the mesh-mode shardings of a training run (`ldm_jax.train.parallel.state_shardings`
under the config's `parallel.axis_rules`: params, EMA and optimizer state sharded by their logical
axis names, unnamed ones by size over "fsdp"; the batch over both axes) and compiled by XLA's SPMD
partitioner. A sharding error fails the run. Reported per device, from the compiled program's
`memory_analysis()`: arguments (state + batch shard), temporaries, and their sum less the donated
aliases (the peak estimate); and the number of collectives in the partitioned HLO.

Models: the paper configs (`experiments/configs/paper_ldm.py`: celebahq_ldm_vq4, churches_ldm_kl8,
imagenet_cin_ldm_vq4, each with its paper first stage frozen in the step; `paper_autoencoder.py`:
vq_f4, kl_f8, the GAN stage at 256x256) and `sd1_unet`: the SD-1.x UNet (UNET_SD1, 860M) on
64x64x4 latents with a random 77x768 context (the text encoder is not in the step).

--estimate lowers instead of compiling (`estimate_step`): the shardings are still checked against
every array, and the memory is the exact state and batch shards plus the gradients, the
parameters all-gathered in float32 (an upper bound) and the activations the backward pass keeps
(the residuals of `jax.vjp`, which remat shrinks; with remat they are the saved block inputs
only, without the transient of recomputing one block, so remat rows are lower bounds and get no
fit row). It takes minutes where an XLA:CPU compile of a
paper-size step takes hours on a 2-core machine; on the MNIST LDM (8 devices, bf16) the estimate
gives the compiled arguments exactly and 0.83x the compiled peak (XLA:CPU keeps more temporaries).

These are XLA:CPU compilations: buffer sizes and the collective schedule are those of the CPU
backend's SPMD program. Parameter, optimizer and batch bytes are exact for any backend; the
temporaries (activations) are an estimate: TPU/GPU compilers fuse differently (typically fewer,
not more, live temporaries). `--dtype=bfloat16` sets the networks' activations dtype (params
stay float32), as `--config.model.dtype=bfloat16` does for a user's run.
"""

import argparse
import importlib.util
import json
import os
import re
import sys
import time

_N = max(int(v) for v in
         next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), "8,256").split(","))
# The programs are compiled, never run: skip LLVM's optimisation of the CPU code (about 0.7x the
# compile CPU time measured here; buffer assignment, hence memory_analysis, is decided before it).
_FAST = "" if "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", "") else \
    " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={_N}" + _FAST).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=wrong-import-position

from experiments.configs import mnist_autoencoder, mnist_ldm, paper_autoencoder, paper_ldm  # pylint: disable=wrong-import-position
from ldm_jax import diffusion  # pylint: disable=wrong-import-position
from ldm_jax.stages import autoencoder as ae_stage  # pylint: disable=wrong-import-position
from ldm_jax.stages import builders  # pylint: disable=wrong-import-position
from ldm_jax.stages import latent_diffusion as ldm_stage  # pylint: disable=wrong-import-position
from ldm_jax.train import axis_rules  # pylint: disable=wrong-import-position
from ldm_jax.train import parallel  # pylint: disable=wrong-import-position
from ldm_jax.train import state as state_lib  # pylint: disable=wrong-import-position
from ldm_jax.train.step import train_step  # pylint: disable=wrong-import-position

GIB = 2**30
HBM = {"TPU v5e": 16, "TPU v4": 32, "H100": 80, "TPU v5p": 95}  # GiB per chip / GPU
FIRST_STAGE = {"celebahq_ldm_vq4": "vq_f4", "churches_ldm_kl8": "kl_f8", "imagenet_cin_ldm_vq4": "vq_f4"}
MODELS = ("sd1_unet", "imagenet_cin_ldm_vq4", "celebahq_ldm_vq4", "churches_ldm_kl8", "kl_f8", "vq_f4",
          "mnist_ldm", "mnist_autoencoder")  # or any config file: path/to/config.py[:variant]
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def _precision(section, dtype, remat):
  section.dtype, section.remat = dtype, remat


def config_file(spec: str):
  """The config of `path/to/config.py[:variant]` (its get_config(variant))."""
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("pod_compile_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def configs(name: str, first_stage: str = ""):
  """(stage config, first-stage config or None) of a model name or config file."""
  if name in paper_autoencoder.VARIANTS:
    return paper_autoencoder.get_config(name), None
  if name in paper_ldm.VARIANTS:
    return paper_ldm.get_config(name), paper_autoencoder.get_config(FIRST_STAGE[name])
  if name == "mnist_autoencoder":
    return mnist_autoencoder.get_config(), None
  if name == "mnist_ldm":
    return mnist_ldm.get_config(), mnist_autoencoder.get_config()
  if ".py" not in name:
    raise ValueError(f"Unknown model {name!r}; valid choices: {', '.join(MODELS)}, or a config file.")
  c = config_file(name)
  if c.stage == "autoencoder":
    return c, None
  if not first_stage:
    raise ValueError(f"{name} is a latent diffusion config: give its autoencoder's config file with "
                     "--first_stage=path/to/config.py[:variant].")
  return c, config_file(first_stage)


def stage_step(name: str, dtype: str, remat: str, first_stage: str = ""):
  """(loss_fn, init_params_fn, extra ShapeDtypeStructs, optimizer, batch dict of (shape, dtype),
  axis rules). init_params_fn returns the params with their logical-axis boxes, as module.init."""
  c, ae_config = configs(name, first_stage) if name != "sd1_unet" else (None, None)
  step = _stage_step(c, ae_config, name, dtype, remat)
  # sd1_unet: the churches config's optimizer and diffusion sections, the default rules
  rules = axis_rules.DEFAULT_RULES if c is None else c.parallel.get("axis_rules", axis_rules.DEFAULT_RULES)
  return (*step, rules)


def _stage_step(c, ae_config, name, dtype, remat):
  if c is not None and c.stage == "autoencoder":
    _precision(c.model, dtype, remat)
    ae, disc = builders.autoencoder(c.model), builders.discriminator(c.disc)
    shape = (c.data.image_size, c.data.image_size, c.data.channels)
    tx, _ = builders.optimizer(c)
    return (ae_stage.make_loss_fn(ae, disc, c.loss), lambda r: ae_stage.init_params(ae, disc, r, (1, *shape)),
            {}, tx, {"image": (shape, jnp.uint8)})
  if name == "sd1_unet":
    c = paper_ldm.get_config("churches_ldm_kl8")  # optimizer / diffusion sections; model below
    c.model = paper_ldm._unet("UNET_SD1")  # pylint: disable=protected-access
    _precision(c.model, dtype, remat)
    unet = builders.unet(c.model, in_channels=4, num_class_embeds=None)
    schedule = builders.schedule(c.diffusion)

    def loss_fn(params, batch, rng, extra):
      del extra
      model_fn = lambda x, t: unet.apply({"params": params}, x, t, context=batch["context"])
      loss = jnp.mean(diffusion.training_loss(model_fn, schedule, batch["latent"], rng))
      return loss, {"loss": loss}
    tx, _ = builders.optimizer(c)
    init = lambda r: unet.init(r, jnp.zeros((1, 64, 64, 4)), jnp.zeros((1,)),
                               context=jnp.zeros((1, 77, 768)))["params"]
    return loss_fn, init, {}, tx, {"latent": ((64, 64, 4), jnp.float32),
                                   "context": ((77, 768), jnp.float32)}
  _precision(c.model, dtype, remat)
  _precision(ae_config.model, dtype, "none")
  ae = builders.autoencoder(ae_config.model)
  d = c.diffusion
  num_class_embeds = d.num_classes + 1 if d.conditioning == "class" else None
  f, size = ae.downsampling_factor, c.data.image_size
  latent = (1, size // f, size // f, ae.latent_channels)
  unet = builders.unet(c.model, in_channels=latent[-1], num_class_embeds=num_class_embeds)
  loss_fn = ldm_stage.make_loss_fn(unet, ae, builders.schedule(d), d, 1.0)
  y0 = jnp.zeros((1,), jnp.int32) if num_class_embeds else None
  init = lambda r: unet.init(r, jnp.zeros(latent), jnp.zeros((1,)), y=y0)["params"]
  channels = c.data.channels
  ae_params = jax.eval_shape(lambda r: ae.init(r, jnp.zeros((1, size, size, channels)))["params"],
                             jax.random.key(0))
  batch = {"image": ((size, size, channels), jnp.uint8)}
  if num_class_embeds:
    batch["label"] = ((), jnp.int32)
  tx, _ = builders.optimizer(c)
  return loss_fn, init, {"frozen": ae_params}, tx, batch


def lower_step(loss_fn, init, extra, tx, batch_spec, n, fsdp, per_device, rules=axis_rules.DEFAULT_RULES):
  """(the step lowered on abstract inputs over a data x fsdp mesh of n devices, the abstract train
  state, its shardings, seconds the lowering took); sharding errors raise here. The layout is a
  run's (`ldm_jax.stages.run`): logical-axis names of the boxed init and `rules`, plain arrays."""
  mesh = parallel.make_mesh(fsdp, jax.devices()[:n])
  param_names = axis_rules.logical_names(jax.eval_shape(init, jax.random.key(0)))
  extra_names, extra = axis_rules.logical_names(extra), nn.meta.unbox(extra)
  abstract = jax.eval_shape(
      lambda r: state_lib.init_train_state(nn.meta.unbox(init(r)), tx, r, extra=extra),
      jax.random.key(0))
  shardings = parallel.state_shardings(abstract, mesh, param_names=param_names,
                                       extra_names=extra_names, rules=rules)
  state = parallel.with_shardings(abstract, shardings)
  data = NamedSharding(mesh, parallel.BATCH_SPEC)
  batch = {k: jax.ShapeDtypeStruct((n * per_device, *s), dt, sharding=data) for k, (s, dt) in batch_spec.items()}
  step = jax.jit(lambda st, b: train_step(st, b, loss_fn=loss_fn, tx=tx, ema_decay=0.9999),
                 in_shardings=(shardings, data), out_shardings=(shardings, NamedSharding(mesh, P())),
                 donate_argnums=(0,))
  t0 = time.time()
  lowered = step.lower(state, batch)
  return lowered, abstract, shardings, time.time() - t0


def compile_step(name, n, fsdp, per_device, dtype, remat, first_stage=""):
  loss_fn, init, extra, tx, batch_spec, rules = stage_step(name, dtype, remat, first_stage)
  lowered, abstract, _, seconds = lower_step(loss_fn, init, extra, tx, batch_spec, n, fsdp,
                                             per_device, rules)
  t0 = time.time()
  compiled = lowered.compile()
  seconds += time.time() - t0
  mem = compiled.memory_analysis()
  text = compiled.as_text()
  params = sum(x.size for x in jax.tree.leaves(abstract.params))
  return {"model": name, "devices": n, "mesh": f"{n // fsdp}x{fsdp}", "batch_per_device": per_device,
          "dtype": dtype, "remat": remat, "params": params,
          "argument_gib": mem.argument_size_in_bytes / GIB, "temp_gib": mem.temp_size_in_bytes / GIB,
          "output_gib": mem.output_size_in_bytes / GIB, "alias_gib": mem.alias_size_in_bytes / GIB,
          "peak_gib": (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                       + mem.temp_size_in_bytes) / GIB,
          "collectives": {c: len(re.findall(rf"\b{c}(-start)?\(", text)) for c in COLLECTIVES},
          "compile_s": seconds}


def _bytes(shape, dtype):
  return int(np.prod(shape, dtype=np.int64)) * jnp.dtype(dtype).itemsize


def activation_bytes(loss_fn, params, batch_spec, extra, per_device):
  """Bytes of the residuals the backward pass keeps (what `jax.vjp` saves besides the inputs)
  for `per_device` examples: the activations one device holds at the start of its backward pass
  (remat policies shrink them). Inputs (params, batch) are not counted here."""
  def residuals(p, b, ex, rng):
    _, vjp = jax.vjp(lambda q: loss_fn(q, b, rng, ex)[0], p)
    inputs = {id(x) for x in jax.tree.leaves((p, b, ex))}
    return [r for r in jax.tree.leaves(vjp) if id(r) not in inputs]

  batch = {k: jax.ShapeDtypeStruct((per_device, *s), dt) for k, (s, dt) in batch_spec.items()}
  ex = dict(extra, step=jax.ShapeDtypeStruct((), jnp.int32))
  out = jax.eval_shape(residuals, params, batch, ex, jax.random.key(0))
  return sum(_bytes(r.shape, r.dtype) for r in out)


def estimate_step(name, n, fsdp, per_device, dtype, remat, first_stage=""):
  """The row `compile_step` gives, from lowering alone plus arithmetic (no XLA compilation).

  Lowering `jit` with the mesh shardings checks every in/out sharding against its array (an
  indivisible dimension or a bad spec raises here). Per device: the train state's shards (exact:
  params, EMA and AdamW moments by `state_shardings`), the batch shard, the gradients (one
  sharded copy), the parameters all-gathered for compute (upper bound: every layer at once, in
  float32) and the activations the backward pass keeps (`activation_bytes`). The SPMD
  partitioner's own errors and XLA's buffer reuse are only seen by a compile (`compile_step`)."""
  loss_fn, init, extra, tx, batch_spec, rules = stage_step(name, dtype, remat, first_stage)
  _, abstract, shardings, seconds = lower_step(loss_fn, init, extra, tx, batch_spec, n, fsdp,
                                               per_device, rules)
  extra = nn.meta.unbox(extra)
  leaves, specs = jax.tree.leaves(abstract), jax.tree.leaves(shardings)
  state_b = sum(_bytes(sh.shard_shape(x.shape), x.dtype) for x, sh in zip(leaves, specs))
  param_leaves = jax.tree.leaves(abstract.params)
  param_specs = jax.tree.leaves(shardings.params)
  grads_b = sum(_bytes(sh.shard_shape(x.shape), x.dtype) for x, sh in zip(param_leaves, param_specs))
  gathered_b = sum(_bytes(x.shape, jnp.float32) for x in param_leaves)
  batch_b = sum(_bytes((per_device, *s), dt) for s, dt in batch_spec.values())
  act_b = activation_bytes(loss_fn, abstract.params, batch_spec, extra, per_device)
  params = sum(x.size for x in param_leaves)
  return {"model": name, "devices": n, "mesh": f"{n // fsdp}x{fsdp}", "batch_per_device": per_device,
          "dtype": dtype, "remat": remat, "params": params, "method": "estimate",
          "argument_gib": (state_b + batch_b) / GIB, "temp_gib": (grads_b + gathered_b + act_b) / GIB,
          "activation_gib": act_b / GIB, "output_gib": state_b / GIB, "alias_gib": state_b / GIB,
          "peak_gib": (state_b + batch_b + grads_b + gathered_b + act_b) / GIB,
          "collectives": None, "compile_s": seconds}


def fits(rows):
  """Largest per-device batch fitting each HBM size, from peak(b) = a + b * slope (b = 1, 2).
  Estimated rows with remat are left out: their activations are the saved block inputs only, not
  the transient of recomputing one block in the backward pass (for SD-size attention at 64x64
  that is hundreds of MiB per image), so a fit from them would be optimistic."""
  out = []
  keyed = {}
  for r in rows:
    if r.get("method") == "estimate" and r["remat"] != "none":
      continue
    keyed.setdefault((r["model"], r["devices"], r["dtype"], r["remat"]), {})[r["batch_per_device"]] = r["peak_gib"]
  for (model, n, dtype, remat), peaks in sorted(keyed.items()):
    if 1 not in peaks or 2 not in peaks:
      continue
    slope = max(peaks[2] - peaks[1], 1e-9)
    base = peaks[1] - slope
    row = {"model": model, "devices": n, "dtype": dtype, "remat": remat, "fixed_gib": base,
           "gib_per_image": slope}
    row.update({hbm: max(0, int((0.9 * gib - base) // slope)) for hbm, gib in HBM.items()})
    out.append(row)
  return out


def table(rows):
  lines = ["| model | params | devices (data x fsdp) | batch/dev | dtype | remat | args GiB | temp GiB | "
           "peak GiB | collectives (ar/ag/rs) | compile (lower) s |", "|" + "---|" * 11]
  for r in rows:
    c = r["collectives"]
    counts = f"{c['all-reduce']}/{c['all-gather']}/{c['reduce-scatter']}" if c else "(estimate)"
    lines.append(f"| {r['model']} | {r['params'] / 1e6:.0f}M | {r['devices']} ({r['mesh']}) | "
                 f"{r['batch_per_device']} | {r['dtype']} | {r['remat']} | {r['argument_gib']:.2f} | "
                 f"{r['temp_gib']:.2f} | {r['peak_gib']:.2f} | {counts} | {r['compile_s']:.0f} |")
  fit = fits(rows)
  if fit:
    lines += ["", "Largest per-device batch within 90% of HBM (linear fit of the peak at batch 1 and 2):", "",
              "| model | devices | dtype | remat | fixed GiB | GiB / image | " + " | ".join(HBM) + " |",
              "|" + "---|" * (6 + len(HBM))]
    for f in fit:
      lines.append(f"| {f['model']} | {f['devices']} | {f['dtype']} | {f['remat']} | {f['fixed_gib']:.2f} | "
                   f"{f['gib_per_image']:.2f} | " + " | ".join(str(f[h]) for h in HBM) + " |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default=",".join(MODELS))
  p.add_argument("--devices", default="8,256")
  p.add_argument("--fsdp", type=int, default=8)
  p.add_argument("--batch_per_device", default="1,2")
  p.add_argument("--remat", default="none,full")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--first_stage", default="", help="autoencoder config file of a latent diffusion "
                 "config file given in --models")
  p.add_argument("--out", default="")
  p.add_argument("--estimate", action="store_true",
                 help="lower only (sharding check) and estimate memory (estimate_step): minutes "
                      "instead of hours for paper-size models on a small CPU")
  p.add_argument("--full_grid", action="store_true",
                 help="every combination; default: batches and remat only on the smallest mesh, "
                      "the larger meshes at batch 1 without remat (a sharding check)")
  a = p.parse_args()
  models = [m for m in a.models.split(",") if m]
  bad = [m for m in models if m not in MODELS and ".py" not in m]
  if bad:
    p.error(f"unknown model(s) {bad}; valid choices: {', '.join(MODELS)}")
  devices = sorted(int(v) for v in a.devices.split(","))
  batches = [int(v) for v in a.batch_per_device.split(",")]
  remats = a.remat.split(",")
  rows = []
  if a.out and os.path.exists(a.out):
    with open(a.out, encoding="utf-8") as f:
      rows = json.load(f)["rows"]
  done = {(r["model"], r["devices"], r["batch_per_device"], r["dtype"], r["remat"]) for r in rows}
  for model in models:
    for n in devices:
      grid = [(b, r) for b in batches for r in remats]
      if not a.full_grid and n != devices[0]:
        grid = [(batches[0], remats[0])]
      for b, remat in grid:
        if (model, n, b, a.dtype, remat) in done:
          continue
        measure = estimate_step if a.estimate else compile_step
        row = measure(model, n, min(a.fsdp, n), b, a.dtype, remat, a.first_stage)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.out:
          with open(a.out, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "load_average": os.getloadavg()}, f, indent=1)
  print(table(rows))
  print(f"load average {os.getloadavg()}; jax {jax.__version__}, {jax.device_count()} simulated CPU devices")


if __name__ == "__main__":
  main()
