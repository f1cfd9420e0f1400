"""Training throughput (images/s and MFU) of the latent diffusion step, next to PyTorch diffusers.

  python -m experiments.benchmarks.train_throughput [--models=mnist,larger]
      [--batch=128,16] [--steps=3] [--cpu_devices=2] [--torch_threads=2,1] [--skip_torch]
      [--skip_torch_compile] [--torch_compile_mode=default] [--skip_stage] [--quick]

What one "step" is (the same on both sides): t ~ U{0..T-1}, eps ~ N(0, I), z_t = sqrt(abar_t) z +
sqrt(1 - abar_t) eps, the UNet's eps-prediction, the MSE to eps (Rombach et al. 2022 eq. 2), its
gradient and one AdamW update (lr 1e-4, weight decay 0.01), on random latents z [B, H, W, C].
  * "jax jit, 1 dev": `ldm_jax.diffusion.training_loss` + optax.adamw under `jax.jit` (donated),
    compiled with the convolution back end the CLI's "auto" picks for the UNet's width (named in
    the row, e.g. "(eigen)"; `ldm_jax.xla_cpu`; XLA_FLAGS that set it win).
  * "jax pmap, N dev": the same step under `jax.pmap` over N simulated XLA CPU devices, each on
    B / N examples, gradients averaged with `lax.pmean` (XLA runs a convolution on one core, so
    one device per core is how JAX data parallelism uses all cores of a CPU).
  * "torch eager, T threads": the same UNet config as diffusers `UNet2DModel` (built from the Flax
    module's config with `unet_config_from_module`), NCHW, torch.optim.AdamW,
    `torch.set_num_threads(T)` (`experiments/benchmarks/torch_peers.py`).
  * "torch.compile, T threads" (unless --skip_torch_compile): the same step with the UNet compiled
    the way a PyTorch user compiles a training model, `model.compile(backend="inductor",
    mode=--torch_compile_mode, dynamic=False, fullgraph=True)`: inductor's C++/OpenMP kernels for
    the forward and (via AOTAutograd) the backward, built with gcc for T threads; q_sample, the
    MSE and AdamW stay eager.
  * "jax full LDM stage step, mesh N dev" (MNIST only, unless --skip_stage): the project's full
    LDM train step, `ldm_jax.stages.latent_diffusion.make_loss_fn` (frozen MNIST KL encoder on
    32x32 uint8 images, label dropout) + `train_step` (clipping, AdamW schedule, guard, EMA)
    built by `ldm_jax.train.parallel.data_parallel(mode="mesh")` on a mesh of N devices.
  * "torch full LDM stage step, eager / torch.compile, T threads": its same-work peer, diffusers
    `AutoencoderKL` (the same config, `vae_config_from_module`, random weights) encoding the same
    uint8 images (z ~ q(z|x), no gradient), label dropout, the UNet step, clip_grad_norm_, AdamW at
    the config's schedule, the guard and LDM's EMA (`torch_peers.stage_step`); compiled: the
    UNet and the encoder, as above.
The JAX/torch columns are ratios of images/s (> 1: JAX faster) of each JAX row over the torch row
of the same work (UNet rows over UNet rows, stage rows over stage rows) at the first thread count
of --torch_threads, eager and compiled, and over the fastest torch row of that work.

Timing: the first call (trace + compile + 1 step) is reported separately as "compile" (torch.compile
rows: dynamo + inductor + gcc, into a fresh temporary TORCHINDUCTOR_CACHE_DIR unless you set one,
so the first compile is cold; a later row may reuse kernels built earlier in the same run); then one
more warm-up step, then --steps single steps each timed to completion (block_until_ready); the
table gives their MEDIAN. images/s = B / median step time.

FLOPs: the UNet forward at batch B is counted by XLA (`jax.jit(fwd).lower(...).compile()
.cost_analysis()["flops"]`); model FLOPs per step = 3 x forward (forward + backward ~ 3x forward,
the usual MFU convention; the optimizer and the encoder are not counted). MFU = model FLOP/s /
measured peak, where the peak is the best float32 matmul throughput measured in this script on
this machine: an [n, n] x [n, n] jnp.dot chain in a jitted fori_loop on one device and under pmap
on all devices, and torch.matmul with the torch thread count (the table lists all of them).

The machine is shared (other jobs run on it): the load average is printed with the table, and
absolute numbers are pessimistic; ratios measured back to back are more meaningful.
"""

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import time

if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  _n = os.environ.get("BENCH_CPU_DEVICES", "2")  # main() checks this against --cpu_devices
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_n}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # cold torch.compile, nothing left behind
  os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="train_throughput_inductor_")
  atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from experiments.configs import mnist_autoencoder, mnist_ldm  # pylint: disable=wrong-import-position
from ldm_jax import diffusion  # pylint: disable=wrong-import-position
from ldm_jax import xla_cpu  # pylint: disable=wrong-import-position
from ldm_jax.convert import diffusers_vae  # pylint: disable=wrong-import-position
from ldm_jax.convert.diffusers_unet import unet_config_from_module  # pylint: disable=wrong-import-position
from ldm_jax.models import unet as unet_lib  # pylint: disable=wrong-import-position
from ldm_jax.stages import builders  # pylint: disable=wrong-import-position
from ldm_jax.stages import latent_diffusion as ldm_stage  # pylint: disable=wrong-import-position
from ldm_jax.train import parallel  # pylint: disable=wrong-import-position

MODELS = ("mnist", "larger")
LR, WEIGHT_DECAY = 1e-4, 0.01  # same AdamW on both sides


# --quick: a tiny 1-level "larger" UNet on 4x4x4 latents, batch 4, no stage rows, small matmuls,
# torch eager and torch.compile at 2 threads only (a cold inductor compile of even this UNet builds
# some 30 C++ kernels with gcc: 30-130 s on a 2-core machine).
QUICK = dict(models="larger", steps=2, larger_size=4, larger_channels="8", torch_threads="2",
             larger_layers=1, peak_n=64, peak_iters=2, skip_stage=True)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="mnist,larger", help=f"comma list of {MODELS}")
  p.add_argument("--batch", default=None,
                 help="global batch per model, in the order of --models (default 128,16; --quick: 4)")
  p.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median reported)")
  p.add_argument("--cpu_devices", type=int, default=2, help="simulated XLA CPU devices for the pmap rows")
  p.add_argument("--torch_threads", default="2,1",
                 help="comma list of torch.set_num_threads values, one torch row each; the "
                      "JAX/torch ratio is against the first")
  p.add_argument("--larger_size", type=int, default=32, help="latent side of the larger UNet")
  p.add_argument("--larger_channels", default="128,256,256", help="block_out_channels of the larger UNet")
  p.add_argument("--larger_layers", type=int, default=2, help="layers_per_block of the larger UNet")
  p.add_argument("--peak_n", type=int, default=1024, help="matmul side for the peak measurement")
  p.add_argument("--peak_iters", type=int, default=8, help="chained matmuls per timed call")
  p.add_argument("--skip_torch", action="store_true", help="no torch rows (eager or compiled)")
  p.add_argument("--skip_torch_compile", action="store_true", help="no torch.compile rows")
  p.add_argument("--torch_compile_mode", default="default",
                 choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                 help="torch.compile mode of the compiled rows")
  p.add_argument("--skip_stage", action="store_true", help="skip the full LDM stage-step rows")
  p.add_argument("--quick", action="store_true",
                 help="smoke settings (about 40 s with a warm inductor cache, 1-2 min cold), where not "
                      "given explicitly: " + str(QUICK))
  if p.parse_known_args(argv)[0].quick:
    p.set_defaults(**QUICK)
  args = p.parse_args(argv)
  names = args.models.split(",")
  for n in names:
    if n not in MODELS:
      raise ValueError(f"Unknown model {n!r}; valid choices: {MODELS}.")
  if args.batch is None:
    args.batch = ",".join(["4"] * len(names)) if args.quick else ",".join(
        str(dict(mnist=128, larger=16)[n]) for n in names)
  batches = [int(b) for b in args.batch.split(",")]
  if len(batches) != len(names):
    raise ValueError(f"--batch={args.batch} needs one batch per model of --models={args.models}.")
  for b in batches:
    if b % args.cpu_devices:
      raise ValueError(f"batch {b} must be a multiple of --cpu_devices={args.cpu_devices}.")
  if args.cpu_devices > jax.device_count():
    raise ValueError(f"--cpu_devices={args.cpu_devices} but JAX sees {jax.device_count()} devices; "
                     f"set BENCH_CPU_DEVICES={args.cpu_devices} (or XLA_FLAGS) before starting.")
  args.model_names, args.batches = names, batches
  args.torch_threads = [int(t) for t in str(args.torch_threads).split(",")]
  return args


# ----------------------------------------------------------------------------------------------
# Measured matmul peak.


def _timed_median(fn, repeats):
  fn()  # warm-up (and compile)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _on_devices(x, devs):
  """Host array [len(devs), ...] -> one jax.Array with row i on devs[i] (a pmap input)."""
  mesh = jax.sharding.Mesh(np.array(devs), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))


def peak_jax(n, iters, num_devices, repeats=3):
  """GFLOP/s of a chain of `iters` float32 [n, n] x [n, n] jnp.dot per device, on num_devices."""
  def chain(a, b):
    return jax.lax.fori_loop(0, iters, lambda i, c: jnp.dot(a, c), b)
  rng = np.random.default_rng(0)
  a = (rng.standard_normal((num_devices, n, n)) / np.sqrt(n)).astype(np.float32)
  b = rng.standard_normal((num_devices, n, n)).astype(np.float32)
  if num_devices == 1:
    f, a, b = jax.jit(chain), jnp.asarray(a[0]), jnp.asarray(b[0])
  else:
    devs = jax.devices()[:num_devices]
    f = jax.pmap(chain, devices=devs)
    a, b = _on_devices(a, devs), _on_devices(b, devs)
  sec = _timed_median(lambda: f(a, b).block_until_ready(), repeats)
  return 2.0 * n ** 3 * iters * num_devices / sec / 1e9


def peak_torch(n, iters, repeats=3):
  import torch  # pylint: disable=import-outside-toplevel
  g = torch.Generator().manual_seed(0)
  a = torch.randn(n, n, generator=g) / n ** 0.5
  b = torch.randn(n, n, generator=g)

  def run():
    c = b
    for _ in range(iters):
      c = torch.matmul(a, c)
    return c
  sec = _timed_median(run, repeats)
  return 2.0 * n ** 3 * iters / sec / 1e9


# ----------------------------------------------------------------------------------------------
# Models.


def build_unet(name, args):
  """(Flax UNet, latent shape (H, W, C), num_classes or None) of a benchmark model."""
  if name == "mnist":
    c = mnist_ldm.get_config()
    latent = (8, 8, mnist_autoencoder.get_config().model.z_channels)
    ncls = c.diffusion.num_classes
    return builders.unet(c.model, in_channels=latent[-1], num_class_embeds=ncls + 1), latent, ncls
  boc = tuple(int(x) for x in args.larger_channels.split(","))
  levels = len(boc)
  down = ("DownBlock2D",) + ("AttnDownBlock2D",) * (levels - 1)  # attention at the lower levels
  up = ("AttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",)
  groups = 32 if all(ch % 32 == 0 for ch in boc) else 8
  net = unet_lib.UNet(in_channels=4, out_channels=4, block_out_channels=boc,
                      layers_per_block=args.larger_layers,
                      down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2D",
                      num_attention_heads=None, attention_head_dim=min(32, min(boc)),
                      cross_attention_dim=None, norm_num_groups=groups)
  return net, (args.larger_size, args.larger_size, 4), None


def make_schedule():
  return builders.schedule(mnist_ldm.get_config().diffusion)


def unet_loss(unet, schedule):
  """mean_B || eps - eps_theta(z_t, t, y) ||^2 via `ldm_jax.diffusion.training_loss`."""
  def loss_fn(params, z, y, rng):
    model_fn = lambda x_t, t: unet.apply({"params": params}, x_t, t, y=y, train=True)
    return jnp.mean(diffusion.training_loss(model_fn, schedule, z, rng))
  return loss_fn


def make_step(loss_fn, tx, axis_name=None):
  """(params, opt_state, z, y, rng) -> (params, opt_state, loss): gradient + one AdamW update."""
  def step(params, opt_state, z, y, rng):
    if axis_name is not None:
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    loss, grads = jax.value_and_grad(loss_fn)(params, z, y, rng)
    if axis_name is not None:
      loss, grads = jax.lax.pmean((loss, grads), axis_name)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return step


def forward_flops(unet, params, latent, batch, num_classes):
  """XLA's FLOP count of one UNet forward at batch `batch` (cost_analysis of the compiled fwd)."""
  x = jax.ShapeDtypeStruct((batch,) + latent, jnp.float32)
  t = jax.ShapeDtypeStruct((batch,), jnp.float32)
  y = None if num_classes is None else jax.ShapeDtypeStruct((batch,), jnp.int32)
  fwd = jax.jit(lambda p, x, t, y: unet.apply({"params": p}, x, t, y=y))
  cost = fwd.lower(params, x, t, y).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def _time_loop(first_call, call, steps):
  """(first-call seconds, median of `steps` timed calls after one warm-up)."""
  t0 = time.perf_counter()
  jax.block_until_ready(first_call())
  first = time.perf_counter() - t0
  jax.block_until_ready(call())  # warm-up, excluded
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
  return first, float(np.median(times))


def _random_batch(latent, batch, num_classes, seed=0):
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((batch,) + latent).astype(np.float32)
  y = None if num_classes is None else (np.arange(batch) % num_classes).astype(np.int32)
  return z, y


def time_jax_unet(unet, params, latent, num_classes, batch, num_devices, steps, options=None):
  """Times the UNet step on `num_devices` devices (jit for 1, pmap otherwise), compiled with XLA
  `options` (the convolution back end, `ldm_jax.xla_cpu`)."""
  tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
  loss_fn = unet_loss(unet, make_schedule())
  z, y = _random_batch(latent, batch, num_classes)
  opt_state = tx.init(params)
  rng = jax.random.key(0)
  if num_devices == 1:
    f = jax.jit(make_step(loss_fn, tx), donate_argnums=(0, 1), compiler_options=options)
    state = [jax.tree.map(jnp.array, params), opt_state]
    args = (jnp.asarray(z), None if y is None else jnp.asarray(y))
    keys = [rng]
  else:
    devs = jax.devices()[:num_devices]
    f = parallel.compiled_with(jax.pmap(make_step(loss_fn, tx, "data"), axis_name="data",
                                        devices=devs, donate_argnums=(0, 1)), options)
    rep = lambda tree: jax.tree.map(
        lambda x: _on_devices(np.broadcast_to(np.asarray(x), (num_devices,) + np.shape(x)), devs), tree)
    shard = lambda x: None if x is None else _on_devices(x.reshape((num_devices, -1) + x.shape[1:]), devs)
    state = [rep(params), rep(opt_state)]
    args = (shard(z), shard(y))
    keys = [_on_devices(jax.random.split(rng, num_devices), devs)]

  def call():
    state[0], state[1], loss = f(state[0], state[1], *args, keys[0])
    return loss
  return _time_loop(call, call, steps)


def time_torch_unet(unet, latent, num_classes, batch, steps, threads, compile_mode=None):
  """Times the same step in PyTorch diffusers' UNet2DModel (NCHW) with torch.optim.AdamW, eager
  (compile_mode None) or torch.compile'd; returns (first call s, median step s, params)."""
  import torch  # pylint: disable=import-outside-toplevel
  from experiments.benchmarks import torch_peers  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  z, y = _random_batch(latent, batch, num_classes)
  call, n_params = torch_peers.unet_step(
      unet_config_from_module(unet), z, y, np.asarray(make_schedule().alphas_cumprod), lr=LR,
      weight_decay=WEIGHT_DECAY, compile_mode=compile_mode)
  first, med = _time_loop(call, call, steps)
  return first, med, n_params


def _stage_setup(batch):
  """(LDM config, autoencoder config, KL autoencoder module, uint8 images [B, 32, 32, 1], labels [B])
  of the MNIST stage rows, the same for JAX and torch."""
  ldm, ae_cfg = mnist_ldm.get_config(), mnist_autoencoder.get_config()
  size = ldm.data.image_size
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, ldm.data.channels), np.uint8)
  labels = np.arange(batch, dtype=np.int32) % ldm.diffusion.num_classes
  return ldm, ae_cfg, builders.autoencoder(ae_cfg.model), images, labels


def time_stage_step(unet, batch, num_devices, steps):
  """Times the project's full MNIST LDM train step (encoder + stage loss + train_step + EMA)."""
  ldm, ae_cfg, ae, images, labels = _stage_setup(batch)
  size = ldm.data.image_size
  # Plain arrays in the state, as a training run holds them (`ldm_jax.stages.run`).
  ae_params = nn.meta.unbox(ae.init(jax.random.key(1), jnp.zeros((1, size, size, ldm.data.channels)))["params"])
  loss_fn = ldm_stage.make_loss_fn(unet, ae, make_schedule(), ldm.diffusion, scale_factor=1.0)
  tx, lr = builders.optimizer(ldm)
  mesh = parallel.make_mesh(1, devices=jax.devices()[:num_devices])
  dp = parallel.data_parallel(loss_fn, tx, mode="mesh", mesh=mesh, ema_decay=ldm.train.ema_decay,
                              lr_schedule=lr)
  latent = (size // 4, size // 4, ae_cfg.model.z_channels)
  init = lambda r: nn.meta.unbox(unet.init(r, jnp.zeros((1,) + latent), jnp.zeros((1,)),
                                           y=jnp.zeros((1,), jnp.int32))["params"])
  state = [dp.create_state(init, jax.random.key(0), extra={"frozen": ae_params})]
  device_batch = dp.put_batch({"image": images, "label": labels})

  def call():
    state[0], metrics = dp.step(state[0], device_batch)
    return metrics["loss"]
  return _time_loop(call, call, steps)


def time_torch_stage(unet, batch, steps, threads, compile_mode=None):
  """Times the torch peer of `time_stage_step` (`torch_peers.stage_step`) on the same images;
  returns (first call s, median step s, UNet + autoencoder params)."""
  import torch  # pylint: disable=import-outside-toplevel
  from experiments.benchmarks import torch_peers  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  ldm, _, ae, images, labels = _stage_setup(batch)
  _, lr = builders.optimizer(ldm)
  lr_table = np.asarray(jax.vmap(lr)(jnp.arange(steps + 3)))  # the updates this timing takes
  call, n_params = torch_peers.stage_step(
      unet_config_from_module(unet), diffusers_vae.vae_config_from_module(ae), images, labels,
      np.asarray(make_schedule().alphas_cumprod), lr_table,
      num_classes=ldm.diffusion.num_classes, p_uncond=ldm.diffusion.p_uncond, scale_factor=1.0,
      optim=ldm.optim, ema_decay=ldm.train.ema_decay, compile_mode=compile_mode)
  first, med = _time_loop(call, call, steps)
  return first, med, n_params


# ----------------------------------------------------------------------------------------------
# Table.

TARGET_EAGER, TARGET_COMPILE = 1.2, 1.0  # issue 14: JAX images/s over torch eager and torch.compile


def columns(threads):
  """Table columns; the ratio columns name the torch thread count they compare with."""
  return ("model", "implementation", "batch", "params (M)", "compile (s)", "step (ms, median)",
          "images/s", "model GFLOP/step", "GFLOP/s", "MFU (%)", f"JAX/torch eager ({threads} threads)",
          f"JAX/torch.compile ({threads} threads)", "JAX/best torch")


def _row(model, impl, batch, n_params, first, med, gflop, peak, peers=(None, None, None)):
  """One table row; peers: images/s of torch eager and torch.compile at the first thread count and
  of the fastest torch row (None: not measured, or a torch row: the ratio cells stay empty)."""
  ips = batch / med
  ratios = ["" if p is None else f"{ips / p:.2f}" for p in peers]
  return (model, impl, str(batch), f"{n_params / 1e6:.2f}", f"{max(first - med, 0.0):.1f}",
          f"{med * 1e3:.5g}", f"{ips:.4g}", f"{gflop:.3g}", f"{gflop / med:.3g}",
          f"{100.0 * gflop / med / peak:.3g}", *ratios)


def markdown_table(columns_, rows):
  lines = ["| " + " | ".join(columns_) + " |", "|" + "|".join("---" for _ in columns_) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def _torch_runs(args, time_fn, names):
  """Measures the torch rows of one work: eager, then compiled, per thread count of --torch_threads.
  time_fn(threads, compile_mode) -> (first, median, params); names: (eager, compiled) prefixes.
  Returns dicts (impl, kind, threads, first, med, params)."""
  if args.skip_torch:
    return []
  modes = [None] + ([] if args.skip_torch_compile else [args.torch_compile_mode])
  runs = []
  for threads in args.torch_threads:
    for mode in modes:
      first, med, n = time_fn(threads, mode)
      name = names[0] if mode is None else names[1] + ("" if mode == "default" else f" ({mode})")
      kind = "eager" if mode is None else "compile"
      runs.append(dict(impl=f"{name}, {threads} threads", kind=kind, threads=threads, first=first,
                       med=med, params=n))
  return runs


def _group(args, work, label, batch, n_params, gflop, peak, jax_runs, torch_runs):
  """Rows of one work (its JAX rows with their ratios, then its torch rows) and its target line."""
  ips = lambda r: batch / r["med"]
  first_threads = args.torch_threads[0]
  pick = lambda kind: next((ips(r) for r in torch_runs
                            if (r["kind"], r["threads"]) == (kind, first_threads)), None)
  peers = (pick("eager"), pick("compile"), max((ips(r) for r in torch_runs), default=None))
  row = lambda r, p: _row(label, r["impl"], batch, n_params, r["first"], r["med"], gflop, peak, p)
  rows = [row(r, peers) for r in jax_runs] + [row(r, (None, None, None)) for r in torch_runs]
  best = max(jax_runs, key=ips)
  checks = []
  for peer, target, what in ((peers[0], TARGET_EAGER, f"torch eager ({first_threads} threads)"),
                             (peers[1], TARGET_COMPILE, f"torch.compile ({first_threads} threads)")):
    if peer is not None:
      ratio = ips(best) / peer
      verdict = "met" if ratio >= target else f"missed, JAX needs {target / ratio:.2f}x more"
      relation = ">=" if target > 1 else ">"
      checks.append(f"{ratio:.2f}x {what} (target {relation} {target:g}x: {verdict})")
  line = f"  {label}, {work}: fastest JAX row \"{best['impl']}\": " + ("; ".join(checks) or "no torch rows")
  return rows, line


def _progress(args, label, batch, n_params, gflop, peak, runs):
  """Prints each measured row as it lands (without ratios; the final table has them)."""
  for r in runs:
    row = _row(label, r["impl"], batch, n_params, r["first"], r["med"], gflop, peak)
    print(markdown_table(columns(args.torch_threads[0]), [row]).splitlines()[-1], flush=True)


def measure_peaks(args):
  """[(name, GFLOP/s)] of the matmul peaks: jnp.dot on 1 and N devices, torch.matmul per thread count."""
  nd = args.cpu_devices
  peaks = [(f"jnp.dot {args.peak_n}^2 f32, jit, 1 device", peak_jax(args.peak_n, args.peak_iters, 1))]
  if nd > 1:
    peaks.append((f"jnp.dot {args.peak_n}^2 f32, pmap, {nd} devices",
                  peak_jax(args.peak_n, args.peak_iters, nd)))
  if not args.skip_torch:
    import torch  # pylint: disable=import-outside-toplevel
    for threads in args.torch_threads:
      torch.set_num_threads(threads)
      peaks.append((f"torch.matmul {args.peak_n}^2 f32, {threads} threads",
                    peak_torch(args.peak_n, args.peak_iters)))
  return peaks


def _check_params(what, n_torch, n_jax):
  if n_torch != n_jax:
    raise ValueError(f"{what}: torch has {n_torch} params, the Flax modules {n_jax}: configs differ.")


def unet_group(args, name, batch, peak):
  """(rows, target line, UNet, FLOPs) of one model's UNet step: torch rows, then JAX jit and pmap."""
  unet, latent, ncls = build_unet(name, args)
  y0 = None if ncls is None else jnp.zeros((1,), jnp.int32)
  params = unet.init(jax.random.key(0), jnp.zeros((1,) + latent), jnp.zeros((1,)), y=y0)["params"]
  n_params = sum(int(x.size) for x in jax.tree.leaves(params))
  gflop = 3.0 * forward_flops(unet, params, latent, batch, ncls) / 1e9
  common = (f"{name} {'x'.join(map(str, latent))}", batch, n_params, gflop, peak)
  timed = lambda threads, mode: time_torch_unet(unet, latent, ncls, batch, args.steps, threads, mode)
  torch_runs = _torch_runs(args, timed, ("torch eager", "torch.compile"))
  for r in torch_runs:
    _check_params(f"{common[0]} UNet", r["params"], n_params)
  jax_runs = []
  # The convolution back end the CLI's "auto" gives this UNet (XLA_FLAGS that set it win).
  options = xla_cpu.compiler_options("auto", "latent_diffusion", widest=xla_cpu.widest(unet))
  for n in sorted({1, args.cpu_devices}):
    first, med = time_jax_unet(unet, params, latent, ncls, batch, n, args.steps, options)
    impl = ("jax jit, 1 device" if n == 1 else f"jax pmap, {n} devices") + f" ({xla_cpu.name(options)})"
    jax_runs.append(dict(impl=impl, first=first, med=med))
  _progress(args, *common, torch_runs + jax_runs)
  return (*_group(args, "UNet step", *common, jax_runs, torch_runs), unet, common)


def stage_group(args, unet, common):
  """(rows, target line) of the full MNIST LDM stage step: JAX on meshes of 1 and N devices, then
  its torch peers; common: (label, batch, UNet params, UNet step GFLOP, peak) of the UNet group."""
  batch, n_params = common[1], common[2]
  jax_runs = []
  for n in sorted({1, args.cpu_devices}):
    first, med = time_stage_step(unet, batch, n, args.steps)
    jax_runs.append(dict(impl=f"jax full LDM stage step, mesh {n} dev", first=first, med=med))
  prefix = "torch full LDM stage step"
  timed = lambda threads, mode: time_torch_stage(unet, batch, args.steps, threads, mode)
  torch_runs = _torch_runs(args, timed, (f"{prefix}, eager", f"{prefix}, torch.compile"))
  ae = _stage_setup(1)[2]
  n_ae = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(diffusers_vae.abstract_params(ae)))
  for r in torch_runs:
    _check_params(f"{common[0]} stage (UNet + autoencoder)", r["params"], n_params + n_ae)
  _progress(args, *common, jax_runs + torch_runs)
  return _group(args, "full LDM stage step", *common, jax_runs, torch_runs)


def run(args):
  """Measures everything; returns (peak rows, throughput rows, peak GFLOP/s, target lines)."""
  peaks = measure_peaks(args)
  peak = max(g for _, g in peaks)
  print(markdown_table(("matmul peak", "GFLOP/s"), [(n, f"{g:.3g}") for n, g in peaks]), flush=True)
  rows, targets = [], []
  for name, batch in zip(args.model_names, args.batches):
    group_rows, line, unet, common = unet_group(args, name, batch, peak)
    rows, targets = rows + group_rows, targets + [line]
    if name == "mnist" and not args.skip_stage:
      group_rows, line = stage_group(args, unet, common)
      rows, targets = rows + group_rows, targets + [line]
  return peaks, rows, peak, targets


def main(argv=None):
  args = parse_args(argv)
  import torch  # pylint: disable=import-outside-toplevel
  load0 = os.getloadavg()
  t0 = time.perf_counter()
  peaks, rows, peak, targets = run(args)
  load1 = os.getloadavg()
  print()
  print(f"JAX {jax.__version__} ({jax.device_count()} x {jax.devices()[0].device_kind} devices), "
        f"torch {torch.__version__} with torch.set_num_threads({args.torch_threads}) "
        f"(JAX/torch against {args.torch_threads[0]}), torch.compile "
        f"{'off' if args.skip_torch or args.skip_torch_compile else repr(args.torch_compile_mode)}; "
        f"{os.cpu_count()} CPU cores; load average (1/5/15 min) {load0[0]:.1f}/{load0[1]:.1f}/"
        f"{load0[2]:.1f} at start, {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} at end; "
        f"{time.perf_counter() - t0:.0f} s in all.")
  print(f"Median of {args.steps} timed steps after one warm-up step; compile = first call - median "
        f"step. Model GFLOP/step = 3 x UNet forward (XLA cost_analysis). MFU against the best "
        f"measured matmul peak, {peak:.1f} GFLOP/s.")
  print()
  print(markdown_table(("matmul peak", "GFLOP/s"), [(n, f"{g:.3g}") for n, g in peaks]))
  print()
  print(markdown_table(columns(args.torch_threads[0]), rows))
  print()
  print(f"Targets (issue 14): train step >= {TARGET_EAGER:g}x torch eager ({args.torch_threads[0]} threads) "
        f"on both UNets and ahead of torch.compile (> {TARGET_COMPILE:g}x); images/s ratios:")
  print("\n".join(targets))
  return rows


if __name__ == "__main__":
  main()
