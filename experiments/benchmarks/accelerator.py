"""Accelerator benchmark: an SD-1.5-size UNet's train step and guided sampling on one GPU / TPU chip.

  python -m experiments.benchmarks.accelerator                 # on the accelerator, < 5 min on an H100/H200
  python -m experiments.benchmarks.accelerator --batches=8,16,32 --remat=none,full --sample_batches=1,8
  python -m experiments.benchmarks.accelerator --cpu_smoke   # tiny, on CPU (the tests run this)

What is measured, with random weights (nothing is downloaded):
  * train: the UNET_SD1 preset (859.5M params, diffusers' UNet2DConditionModel layout) on 64x64x4
    latents with a random [B, 77, 768] context: t ~ U{0..999}, eps ~ N(0, I), the eps-prediction
    MSE (Rombach et al. 2022 eq. 2), its gradient and one AdamW update, jitted with the state
    donated. The networks run with the issue-21 precision keys: dtype=bfloat16 activations,
    param_dtype=float32 (so AdamW's moments are float32 too), attention_impl="cudnn" (fused flash
    attention) where the backend has it, falling back to "xla" when cuDNN rejects the layout (the
    row says which ran), and remat "none" / "full".
  * sample: the same UNet, 50 DDIM steps (`ldm_jax.samplers.sample`, one `lax.scan`) with
    classifier-free guidance w = 7.5 (2B UNet evaluations per step), latency of one call at batch
    1 and 8. The VAE decode is not included.

Columns: images/s = B / median step time (after a compile call and a warm-up call); MFU = model
FLOP/s / the chip's dense bf16 peak from its data sheet (model FLOPs = 3 x the forward FLOPs XLA
counts for the UNet, the usual convention; remat's recomputation is not counted as useful work);
"matmul peak" is a bf16 [n, n] matmul chain measured here, for reference; memory: the compiled
step's footprint from `memory_analysis()` (arguments + outputs - donated aliases + temporaries)
and the device allocator's peak so far (`memory_stats()`, where the backend reports it). A
configuration that runs out of memory gets an "OOM" row and the run goes on. --budget_s stops
starting new configurations once that many seconds have passed (the rows left out are listed).

Anchors, printed beside the table (whole SD pipelines at 512 px, other code, other chips): MLPerf
Training v4.0, NVIDIA NeMo SD2 on 8x H200, about 131 images/s per GPU; MLPerf Training v4.1,
MaxDiffusion SD2 on TPU v5p, about 87 images/s per chip.

--cpu_smoke runs the same code on a tiny one-level cross-attention UNet on the CPU (train at batch
2 with remat none and full, sampling at batch 1 with 2 DDIM steps, float32, xla attention) and labels every row "cpu smoke": it checks the script, its
numbers are not accelerator numbers.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "--cpu_smoke" in sys.argv:
  os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from ldm_jax import diffusion  # pylint: disable=wrong-import-position
from ldm_jax import samplers  # pylint: disable=wrong-import-position
from ldm_jax.models import unet as unet_lib  # pylint: disable=wrong-import-position
from ldm_jax.pipeline import random_params  # pylint: disable=wrong-import-position
from ldm_jax.samplers.guidance import classifier_free_guidance  # pylint: disable=wrong-import-position
from ldm_jax import schedules  # pylint: disable=wrong-import-position

GIB = 2**30
# Dense bf16 tensor FLOP/s per chip from the vendors' data sheets (no sparsity), matched against
# jax.devices()[0].device_kind by substring, first match wins; --peak_tflops overrides.
BF16_PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0),
                    ("L40S", 362.0), ("TPU v6", 918.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0),
                    ("TPU v5", 459.0), ("TPU v4", 275.0))
ANCHORS = ("MLPerf Training v4.0, NVIDIA NeMo SD2 512 px, 8x H200: ~131 images/s per GPU",
           "MLPerf Training v4.1, MaxDiffusion SD2 512 px, TPU v5p: ~87 images/s per chip")
SD1 = dict(latent=(64, 64, 4), context=(77, 768), sample_steps=50, guidance=7.5)
SMOKE = dict(latent=(8, 8, 4), context=(7, 16), sample_steps=2, guidance=7.5)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  p.add_argument("--batches", default="8,16,32", help="train batch sizes")
  p.add_argument("--remat", default="none,full", help="remat policies (ldm_jax.models.precision)")
  p.add_argument("--sample_batches", default="1,8")
  p.add_argument("--dtype", default="bfloat16", help="activations dtype; params stay float32")
  p.add_argument("--attention", default="auto", choices=("auto", "cudnn", "xla"),
                 help="auto: cudnn on GPUs, xla elsewhere")
  p.add_argument("--steps", type=int, default=5, help="timed train steps (median)")
  p.add_argument("--repeats", type=int, default=3, help="timed sampling calls (median)")
  p.add_argument("--peak_tflops", type=float, default=0.0, help="override the data-sheet bf16 peak")
  p.add_argument("--budget_s", type=float, default=270.0,
                 help="start no new configuration after this many seconds")
  p.add_argument("--cpu_smoke", action="store_true", help="tiny model on the CPU (checks the script)")
  a = p.parse_args(argv)
  if a.cpu_smoke:
    a.batches, a.sample_batches, a.dtype, a.attention, a.steps, a.repeats = "2", "1", "float32", "xla", 2, 1
    a.remat, a.budget_s = "none,full", 1e9
  a.batches = [int(b) for b in a.batches.split(",") if b]
  a.sample_batches = [int(b) for b in a.sample_batches.split(",") if b]
  a.remat = [r for r in a.remat.split(",") if r]
  for b in a.batches + a.sample_batches:
    if b < 1:
      p.error(f"batch sizes must be >= 1, got {b}")
  return a


def peak_tflops(kind: str, override: float) -> float | None:
  if override:
    return override
  return next((tf for name, tf in BF16_PEAK_TFLOPS if name.lower() in kind.lower()), None)


def make_unet(smoke: bool, dtype: str, remat: str, attention: str):
  precision = dict(dtype=jnp.dtype(dtype), param_dtype=jnp.float32, remat=remat, attention_impl=attention)
  if smoke:  # one level, one resnet + cross-attention transformer per block: the fewest ops to compile
    return unet_lib.UNet(in_channels=4, out_channels=4, block_out_channels=(16,), layers_per_block=1,
                         down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
                         mid_block_type=None, num_attention_heads=2, cross_attention_dim=16,
                         norm_num_groups=8, **precision)
  return unet_lib.UNET_SD1(**precision)


def _sync(tree):
  jax.tree.map(lambda x: x.block_until_ready(), tree)


def _median_seconds(call, n):
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    _sync(call())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _memory(compiled):
  m = compiled.memory_analysis()
  if m is None:
    return None
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes) / GIB


def _device_peak_gib():
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / GIB


def forward_gflops(unet, params, shapes, batch):
  """XLA's FLOP count of the UNet forward at `batch` (from the lowered, unoptimised program)."""
  fwd = jax.jit(lambda p, x, t, c: unet.apply({"params": p}, x, t, context=c))
  lowered = fwd.lower(params, jax.ShapeDtypeStruct((batch, *shapes["latent"]), jnp.float32),
                      jax.ShapeDtypeStruct((batch,), jnp.float32),
                      jax.ShapeDtypeStruct((batch, *shapes["context"]), jnp.float32))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) / 1e9


def matmul_peak_tflops(dtype, n: int, iters: int = 10) -> float:
  a = jax.random.normal(jax.random.key(1), (n, n), dtype) / np.sqrt(n)

  @jax.jit
  def chain(x):
    return jax.lax.fori_loop(0, iters, lambda _, y: (y @ a).astype(dtype), x)

  _sync(chain(a))
  seconds = _median_seconds(lambda: chain(a), 3)
  return 2 * n**3 * iters / seconds / 1e12


def train_row(unet, params, shapes, schedule, batch, steps):
  tx = optax.adamw(1e-4, weight_decay=0.01)
  opt_state = tx.init(params)

  def loss_fn(p, z0, ctx, rng):
    model_fn = lambda x, t: unet.apply({"params": p}, x, t, context=ctx)
    return jnp.mean(diffusion.training_loss(model_fn, schedule, z0, rng))

  def step(p, o, z0, ctx, rng):
    loss, grads = jax.value_and_grad(loss_fn)(p, z0, ctx, rng)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  step = jax.jit(step, donate_argnums=(0, 1))
  k = jax.random.key(2)
  z0 = jax.random.normal(k, (batch, *shapes["latent"]))
  ctx = jax.random.normal(jax.random.fold_in(k, 1), (batch, *shapes["context"]))
  t0 = time.perf_counter()
  compiled = step.lower(params, opt_state, z0, ctx, k).compile()
  state = {"p": jax.tree.map(jnp.copy, params), "o": opt_state}

  def call():
    state["p"], state["o"], loss = compiled(state["p"], state["o"], z0, ctx, k)
    return loss

  _sync(call())
  compile_s = time.perf_counter() - t0
  _sync(call())  # warm-up
  seconds = _median_seconds(call, steps)
  loss = float(call())
  if not np.isfinite(loss):
    raise FloatingPointError(f"non-finite training loss {loss} at batch {batch}")
  return dict(seconds=seconds, compile_s=compile_s, compiled_gib=_memory(compiled), loss=loss)


def sample_row(unet, params, shapes, schedule, batch, num_steps, guidance, repeats):
  def model_fn(x, t, ctx):
    return unet.apply({"params": params}, x, t, context=ctx)

  @jax.jit
  def generate(x_T, ctx, null_ctx, rng):
    guided = classifier_free_guidance(model_fn, ctx, null_ctx, guidance)
    return samplers.sample(guided, schedule, x_T, rng, method="ddim", num_steps=num_steps)

  k = jax.random.key(3)
  x_T = jax.random.normal(k, (batch, *shapes["latent"]))
  ctx = jax.random.normal(jax.random.fold_in(k, 1), (batch, *shapes["context"]))
  null = jnp.zeros_like(ctx)
  t0 = time.perf_counter()
  compiled = generate.lower(x_T, ctx, null, k).compile()
  out = compiled(x_T, ctx, null, k)
  _sync(out)
  compile_s = time.perf_counter() - t0
  if not bool(jnp.all(jnp.isfinite(out))):
    raise FloatingPointError(f"non-finite samples at batch {batch}")
  seconds = _median_seconds(lambda: compiled(x_T, ctx, null, k), repeats)
  return dict(seconds=seconds, compile_s=compile_s, compiled_gib=_memory(compiled))


def _is_oom(err: Exception) -> bool:
  text = str(err)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def _fmt(x, spec):
  return "" if x is None else format(x, spec)


def run(a):
  t_start = time.perf_counter()
  device = jax.devices()[0]
  backend, kind = jax.default_backend(), device.device_kind
  label = "cpu smoke" if a.cpu_smoke else kind
  peak = None if a.cpu_smoke else peak_tflops(kind, a.peak_tflops)
  shapes = SMOKE if a.cpu_smoke else SD1
  attention = a.attention if a.attention != "auto" else ("cudnn" if backend == "gpu" else "xla")
  schedule = schedules.get_schedule("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012)  # SD's
  measured = matmul_peak_tflops(jnp.dtype(a.dtype), 256 if a.cpu_smoke else 8192)
  rows, skipped = [], []
  plan = [("train", r, b) for r in a.remat[:1] for b in a.batches]
  plan += [("sample", a.remat[0], b) for b in a.sample_batches]
  plan += [("train", r, b) for r in a.remat[1:] for b in sorted(a.batches, reverse=True)]
  notes, param_cache, flops_cache = {}, {}, {}
  for what, remat, batch in plan:
    if time.perf_counter() - t_start > a.budget_s:
      skipped.append(f"{what} remat={remat} batch={batch}")
      continue
    impls = [attention] + (["xla"] if attention == "cudnn" else [])
    for impl in impls:
      unet = make_unet(a.cpu_smoke, a.dtype, remat if what == "train" else "none", impl)
      if "params" not in param_cache:
        param_cache["params"] = jax.device_put(random_params(  # LeCun-normal, drawn on the host
            unet, jnp.zeros((1, *shapes["latent"])), jnp.zeros((1,)),
            context=jnp.zeros((1, *shapes["context"]))))
        param_cache["count"] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(param_cache["params"]))
      params = param_cache["params"]
      try:
        key = (impl, batch)
        if key not in flops_cache:
          flops_cache[key] = forward_gflops(unet, params, shapes, batch)
        if what == "train":
          r = train_row(unet, params, shapes, schedule, batch, a.steps)
          gflop = 3 * flops_cache[key]
        else:
          r = sample_row(unet, params, shapes, schedule, batch, shapes["sample_steps"], shapes["guidance"],
                         a.repeats)
          gflop = shapes["sample_steps"] * flops_cache[(impl, batch)] * 2  # 2B evaluations per step
        r.update(status="ok", attention=impl)
      except Exception as err:  # pylint: disable=broad-except
        if impl == "cudnn" and not _is_oom(err):
          notes[(what, remat, batch)] = f"cudnn failed ({type(err).__name__}); "
          continue
        if not _is_oom(err):
          raise
        r, gflop = dict(status="OOM", attention=impl, seconds=None, compile_s=None, compiled_gib=None), None
      note = notes.get((what, remat, batch), "")
      rows.append(dict(what=what, remat=remat, batch=batch, gflop=gflop, note=note, **r,
                       device_peak_gib=_device_peak_gib()))
      print(_row_text(rows[-1], label, a.dtype, peak), flush=True)
      break
  print()
  print(table(rows, label, a.dtype, peak, param_cache.get("count", 0)))
  print()
  print(f"device: {label} ({backend}, {jax.device_count()} device(s)); bf16 data-sheet peak: "
        f"{_fmt(peak, '.0f') or 'unknown (--peak_tflops)'} TFLOP/s; measured {a.dtype} matmul peak: "
        f"{measured:.1f} TFLOP/s; jax {jax.__version__}; load average {os.getloadavg()}; "
        f"total {time.perf_counter() - t_start:.0f} s")
  if skipped:
    print(f"not run (over --budget_s={a.budget_s:.0f}): {'; '.join(skipped)}")
  print("anchors (other code, whole pipelines, for scale only): " + " | ".join(ANCHORS))
  return rows


HEADER = ("| device | task | batch | dtype | remat | attention | step / call (ms) | images/s | MFU % | "
          "compiled GiB | device peak GiB | compile (s) |")


def _row_text(r, label, dtype, peak):
  ms = None if r["seconds"] is None else 1e3 * r["seconds"]
  ips = None if r["seconds"] is None else r["batch"] / r["seconds"]
  mfu = None
  if peak and r["seconds"] and r["gflop"]:
    mfu = 100 * r["gflop"] / r["seconds"] / (peak * 1e3)
  task = "train step" if r["what"] == "train" else "DDIM-50 guided" if label != "cpu smoke" else "DDIM guided"
  status = "" if r["status"] == "ok" else " (OOM)"
  return (f"| {label} | {task}{status} | {r['batch']} | {dtype} | {r['remat']} | {r['note']}{r['attention']} | "
          f"{_fmt(ms, '.1f')} | {_fmt(ips, '.2f')} | {_fmt(mfu, '.1f') if peak else 'n/a'} | "
          f"{_fmt(r['compiled_gib'], '.3g')} | {_fmt(r['device_peak_gib'], '.3g')} | {_fmt(r['compile_s'], '.0f')} |")


def table(rows, label, dtype, peak, n_params):
  lines = [f"UNet params: {n_params / 1e6:.1f}M", HEADER, "|" + "---|" * 12]
  lines += [_row_text(r, label, dtype, peak) for r in rows]
  return "\n".join(lines)


def main(argv=None):
  run(parse_args(argv))


if __name__ == "__main__":
  main()
