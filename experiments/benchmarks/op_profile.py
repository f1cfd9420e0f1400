"""Where the train step's time goes, op class by op class: JAX (XLA:CPU) next to PyTorch diffusers.

  python -m experiments.benchmarks.op_profile [--model=mnist|larger] [--batch=64] [--steps=5]
      [--torch_threads=2] [--quick]

The step is `train_throughput`'s UNet step (the eps-prediction MSE of Rombach et al. 2022 eq. 2,
its gradient and one AdamW update) on random latents: JAX under `jax.jit` on one device (XLA's
intra-op thread pool uses every core), torch eager with --torch_threads threads
(`torch_peers.unet_step`). Each side runs --steps steps under its own profiler after two warm-up
steps:
  * JAX: `jax.profiler` traces the XLA:CPU thunks (one event per fusion, convolution, dot or copy,
    named as in the compiled HLO). Each event is put in a class from its HLO: the convolutions by
    kind (the weight gradient is the one whose output has the kernel's shape; the input gradient
    sits under `transpose(jvp(...))` in the op metadata; the rest are forward), dots (attention
    when the metadata names an attention module), and every other fusion by the layers its
    metadata names (GroupNorm modules, SiLU, the optimizer = ops outside the UNet), then data
    movement (copy, transpose, concatenate, pad, slice) and the remaining elementwise fusions. A
    fusion of a GroupNorm and the SiLU after it counts as GroupNorm.
  * torch: `torch.profiler` self CPU time per aten op, in the same classes (torch's convolution
    backward computes the input and weight gradients in one op, so they share a row; the
    optimizer is every op under `Optimizer.step`).
Times are per step and summed over threads (ms of CPU busy in that class, which can exceed the
wall time when ops run in parallel); "wall" is the median unprofiled step. The ratio column is
JAX time / torch time (> 1: JAX slower in that class).
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from experiments.benchmarks import train_throughput as tt  # pylint: disable=wrong-import-position

CLASSES = ("convolution forward", "convolution input gradient", "convolution weight gradient",
           "matmul: attention", "matmul: other", "GroupNorm (fwd + bwd, with a fused SiLU)",
           "SiLU (fwd + bwd)", "optimizer (AdamW)", "data movement (copy, transpose, concat, pad)",
           "other elementwise / reductions")
CONV_BACKWARD = "convolution backward (input + weight)"
_NORM = re.compile(r"(^|/)(norm\d?|group_norm|conv_norm_out)(/|$)")
_MOVES = ("copy", "transpose", "concatenate", "pad", "slice", "dynamic-slice", "dynamic-update-slice",
          "bitcast", "broadcast", "reshape", "tuple", "get-tuple-element", "parameter", "constant")
QUICK = dict(model="larger", batch=4, steps=2)  # train_throughput's --quick UNet (4x4x4, 1 level)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="mnist", choices=tt.MODELS)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--steps", type=int, default=5, help="profiled steps (and timed steps for the wall)")
  p.add_argument("--torch_threads", type=int, default=2)
  p.add_argument("--quick", action="store_true", help="smoke settings where not given: " + str(QUICK))
  if p.parse_known_args(argv)[0].quick:
    p.set_defaults(**QUICK)
  args = p.parse_args(argv)
  # the UNet builder reads train_throughput's own flags (its --quick sizes the "larger" UNet)
  args.tt = tt.parse_args(["--cpu_devices=1", f"--models={args.model}"] + (["--quick"] if args.quick else []))
  return args


# ----------------------------------------------------------------------------------------------
# JAX: the compiled HLO's instructions and their classes.

def _computations(hlo_text):
  """{computation name: [instruction lines]} of an HLO module's text."""
  comps, cur = {}, None
  for line in hlo_text.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if m:
      cur = comps.setdefault(m.group(1), [])
    elif cur is not None and line.startswith("  "):
      cur.append(line)
  return comps


def _instruction(line):
  m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(", line)
  return (m.group(1), m.group(2)) if m else (None, None)


def _body(comps, line, depth=0):
  """The instruction lines of `line` and of every computation it calls (fusions, reductions)."""
  out = [line]
  if depth < 4:
    for sub in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", line):
      for inner in comps.get(sub, ()):
        out += _body(comps, inner, depth + 1)
  return out


def _shape(line):
  m = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = \w+\[([\d,]*)\]", line)
  return tuple(int(d) for d in m.group(1).split(",") if d) if m else ()


def classify_hlo(hlo_text, kernel_shapes):
  """{instruction name: class} for every top-level instruction of the entry computation (and of
  any computation it calls that is not itself a fusion body)."""
  comps = _computations(hlo_text)
  kernels = {tuple(sorted(s)) for s in kernel_shapes}
  classes = {}
  for lines in comps.values():
    for line in lines:
      name, op = _instruction(line)
      if name is None:
        continue
      body = _body(comps, line)
      ops = [_instruction(l)[1] for l in body]
      meta = " ".join(re.findall(r'op_name="([^"]+)"', " ".join(body)))
      if "convolution" in ops:
        conv = next(l for l in body if _instruction(l)[1] == "convolution")
        conv_meta = " ".join(re.findall(r'op_name="([^"]+)"', conv))
        if tuple(sorted(_shape(conv))) in kernels:
          classes[name] = "convolution weight gradient"
        elif "transpose(" in conv_meta:
          classes[name] = "convolution input gradient"
        else:
          classes[name] = "convolution forward"
      elif "dot" in ops:
        classes[name] = "matmul: attention" if re.search(r"attention|attn", meta) else "matmul: other"
      elif meta and "UNet" not in meta:
        classes[name] = "optimizer (AdamW)"
      elif _NORM.search(meta.replace(" ", "/")) or any(_NORM.search(m) for m in meta.split()):
        classes[name] = "GroupNorm (fwd + bwd, with a fused SiLU)"
      elif "silu" in meta:
        classes[name] = "SiLU (fwd + bwd)"
      elif all(o in _MOVES for o in ops if o):
        classes[name] = "data movement (copy, transpose, concat, pad)"
      else:
        classes[name] = "other elementwise / reductions"
  return classes


def _trace_events(trace_dir):
  path = sorted(glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz")))[-1]
  with gzip.open(path) as f:
    return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def profile_jax(args):
  """({class: ms per step}, wall ms per step) of the jitted JAX UNet step."""
  unet, latent, ncls = tt.build_unet(args.model, args.tt)
  z, y = tt._random_batch(latent, args.batch, ncls)  # pylint: disable=protected-access
  z, y = jnp.asarray(z), None if y is None else jnp.asarray(y)
  params = unet.init(jax.random.key(0), z[:1], jnp.zeros((1,)), y=None if y is None else y[:1])["params"]
  tx = optax.adamw(tt.LR, weight_decay=tt.WEIGHT_DECAY)
  step = jax.jit(tt.make_step(tt.unet_loss(unet, tt.make_schedule()), tx), donate_argnums=(0, 1))
  state = [params, tx.init(params)]
  compiled = step.lower(state[0], state[1], z, y, jax.random.key(0)).compile()
  kernel_shapes = [tuple(v.shape) for path, v in jax.tree_util.tree_leaves_with_path(params)
                   if v.ndim == 4 and "kernel" in jax.tree_util.keystr(path)]
  classes = classify_hlo(compiled.as_text(), kernel_shapes)

  def run(n):
    for i in range(n):
      state[0], state[1], loss = compiled(state[0], state[1], z, y, jax.random.key(i))
    jax.block_until_ready(loss)
  run(2)
  walls = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    run(1)
    walls.append(time.perf_counter() - t0)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    run(args.steps)
    jax.profiler.stop_trace()
    events = _trace_events(trace_dir)
  per_class = collections.Counter()
  for e in events:
    c = classes.get(e["name"])
    if c is not None:
      per_class[c] += e["dur"] / 1e3 / args.steps
  return per_class, 1e3 * float(np.median(walls))


# ----------------------------------------------------------------------------------------------
# torch: aten self times in the same classes.

def torch_class(name, under_optimizer):
  if under_optimizer:
    return "optimizer (AdamW)"
  if name == "aten::convolution_backward":
    return CONV_BACKWARD
  if "convolution" in name or name.startswith("aten::_nnpack") or "conv2d" in name:
    return "convolution forward"
  if "scaled_dot_product" in name or name in ("aten::bmm", "aten::baddbmm"):
    return "matmul: attention"
  if name in ("aten::addmm", "aten::mm", "aten::matmul", "aten::linear"):
    return "matmul: other"
  if "group_norm" in name:
    return "GroupNorm (fwd + bwd, with a fused SiLU)"
  if "silu" in name:
    return "SiLU (fwd + bwd)"
  if name in ("aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::_to_copy",
              "aten::constant_pad_nd", "aten::pad", "aten::slice_backward", "aten::upsample_nearest2d",
              "aten::upsample_nearest2d_backward"):
    return "data movement (copy, transpose, concat, pad)"
  return "other elementwise / reductions"


def profile_torch(args):
  """({class: ms per step}, wall ms per step) of the diffusers UNet step, eager."""
  import torch  # pylint: disable=import-outside-toplevel
  from experiments.benchmarks import torch_peers  # pylint: disable=import-outside-toplevel
  from ldm_jax.convert.diffusers_unet import unet_config_from_module  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.torch_threads)
  unet, latent, ncls = tt.build_unet(args.model, args.tt)
  z, y = tt._random_batch(latent, args.batch, ncls)  # pylint: disable=protected-access
  call, _ = torch_peers.unet_step(unet_config_from_module(unet), z, y,
                                  np.asarray(tt.make_schedule().alphas_cumprod), lr=tt.LR,
                                  weight_decay=tt.WEIGHT_DECAY)
  call(), call()
  walls = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    call()
    walls.append(time.perf_counter() - t0)
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(args.steps):
      call()
  per_class = collections.Counter()
  for e in prof.events():
    if not e.name.startswith("aten::") or e.self_cpu_time_total <= 0:
      continue
    parent, under = e.cpu_parent, False
    while parent is not None and not under:
      under, parent = parent.name.startswith("Optimizer.step"), parent.cpu_parent
    per_class[torch_class(e.name, under)] += e.self_cpu_time_total / 1e3 / args.steps
  return per_class, 1e3 * float(np.median(walls))


# ----------------------------------------------------------------------------------------------

def table(jax_ms, torch_ms, jax_wall, torch_wall):
  """Markdown rows: every class, the convolution backward total, the sums and the walls."""
  def row(label, a, b):
    ratio = f"{a / b:.2f}" if b > 0.05 else "n/a"
    return f"| {label} | {a:.1f} | {b:.1f} | {ratio} |"
  lines = ["| op class | JAX ms/step | torch ms/step | JAX / torch |", "|---|---|---|---|"]
  for c in CLASSES:
    lines.append(row(c, jax_ms.get(c, 0.0), torch_ms.get(c, 0.0)))
  jax_bwd = jax_ms.get("convolution input gradient", 0.0) + jax_ms.get("convolution weight gradient", 0.0)
  lines.append(row(CONV_BACKWARD, jax_bwd, torch_ms.get(CONV_BACKWARD, 0.0)))
  lines.append(row("sum of the op classes", sum(jax_ms.values()), sum(torch_ms.values())))
  lines.append(row("wall (median step, not profiled)", jax_wall, torch_wall))
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(argv)
  jax_ms, jax_wall = profile_jax(args)
  torch_ms, torch_wall = profile_torch(args)
  print(f"\n{args.model} UNet train step, batch {args.batch}: JAX jit on 1 device (XLA:CPU, "
        f"{os.environ.get('XLA_FLAGS', '') or 'default flags'}) vs torch eager, "
        f"{args.torch_threads} threads; {args.steps} profiled steps\n")
  print(table(jax_ms, torch_ms, jax_wall, torch_wall))
  print(f"\nload average (1/5/15 min) {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
  return jax_ms, torch_ms


if __name__ == "__main__":
  main(sys.argv[1:])
