"""Training throughput (images/s and MFU) of the latent diffusion step, next to PyTorch diffusers.

  python -m experiments.benchmarks.train_throughput [--models=mnist,larger]
      [--batch=128,16] [--steps=3] [--cpu_devices=2] [--torch_threads=2] [--skip_torch]
      [--skip_stage] [--quick]

What one "step" is (the same on both sides): t ~ U{0..T-1}, eps ~ N(0, I), z_t = sqrt(abar_t) z +
sqrt(1 - abar_t) eps, the UNet's eps-prediction, the MSE to eps (Rombach et al. 2022 eq. 2), its
gradient and one AdamW update (lr 1e-4, weight decay 0.01), on random latents z [B, H, W, C].
  * "jax jit, 1 dev": `ldm_jax.diffusion.training_loss` + optax.adamw under `jax.jit` (donated).
  * "jax pmap, N dev": the same step under `jax.pmap` over N simulated XLA CPU devices, each on
    B / N examples, gradients averaged with `lax.pmean` (XLA runs a convolution on one core, so
    one device per core is how JAX data parallelism uses all cores of a CPU).
  * "torch": the same UNet config as diffusers `UNet2DModel` (built from the Flax module's config
    with `unet_config_from_module`), NCHW, torch.optim.AdamW, `torch.set_num_threads(T)`.
  * "jax stage, N dev" (MNIST only, unless --skip_stage): the project's full LDM train step,
    `ldm_jax.stages.latent_diffusion.make_loss_fn` (frozen MNIST KL encoder on 32x32 uint8
    images, label dropout) + `train_step` (clipping, AdamW schedule, guard, EMA) built by
    `ldm_jax.train.parallel.data_parallel(mode="mesh")` on a mesh of N devices.

Timing: the first call (trace + compile + 1 step) is reported separately as "compile"; then one
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
import os
import sys
import time

if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  _n = os.environ.get("BENCH_CPU_DEVICES", "2")  # main() checks this against --cpu_devices
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_n}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import optax  # pylint: disable=wrong-import-position

from experiments.configs import mnist_autoencoder, mnist_ldm  # pylint: disable=wrong-import-position
from ldm_jax import diffusion  # pylint: disable=wrong-import-position
from ldm_jax.convert.diffusers_unet import unet_config_from_module  # pylint: disable=wrong-import-position
from ldm_jax.models import unet as unet_lib  # pylint: disable=wrong-import-position
from ldm_jax.stages import builders  # pylint: disable=wrong-import-position
from ldm_jax.stages import latent_diffusion as ldm_stage  # pylint: disable=wrong-import-position
from ldm_jax.train import parallel  # pylint: disable=wrong-import-position

MODELS = ("mnist", "larger")
LR, WEIGHT_DECAY = 1e-4, 0.01  # same AdamW on both sides


# --quick: a tiny 1-level "larger" UNet on 4x4x4 latents, batch 4, no stage rows, small matmuls.
QUICK = dict(models="larger", steps=2, larger_size=4, larger_channels="8",
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
  p.add_argument("--skip_torch", action="store_true")
  p.add_argument("--skip_stage", action="store_true", help="skip the full LDM stage-step rows")
  p.add_argument("--quick", action="store_true",
                 help="smoke settings (< 1 min), where not given explicitly: " + str(QUICK))
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


def time_jax_unet(unet, params, latent, num_classes, batch, num_devices, steps):
  """Times the UNet step on `num_devices` devices (jit for 1, pmap otherwise)."""
  tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
  loss_fn = unet_loss(unet, make_schedule())
  z, y = _random_batch(latent, batch, num_classes)
  opt_state = tx.init(params)
  rng = jax.random.key(0)
  if num_devices == 1:
    f = jax.jit(make_step(loss_fn, tx), donate_argnums=(0, 1))
    state = [jax.tree.map(jnp.array, params), opt_state]
    args = (jnp.asarray(z), None if y is None else jnp.asarray(y))
    keys = [rng]
  else:
    devs = jax.devices()[:num_devices]
    f = jax.pmap(make_step(loss_fn, tx, "data"), axis_name="data", devices=devs, donate_argnums=(0, 1))
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


def time_torch_unet(unet, latent, num_classes, batch, steps, threads):
  """Times the same step in PyTorch diffusers' UNet2DModel (NCHW) with torch.optim.AdamW."""
  import torch  # pylint: disable=import-outside-toplevel
  from diffusers import UNet2DModel  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  cfg = {k: v for k, v in unet_config_from_module(unet).items() if k != "_class_name"}
  model = UNet2DModel.from_config(cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
  abar = torch.from_numpy(np.array(make_schedule().alphas_cumprod, np.float32))
  z, y = _random_batch(latent, batch, num_classes)
  z = torch.from_numpy(z).permute(0, 3, 1, 2).contiguous()
  y = None if y is None else torch.from_numpy(y).long()
  n_params = sum(p.numel() for p in model.parameters())

  def call():
    t = torch.randint(0, abar.shape[0], (batch,))
    eps = torch.randn_like(z)
    a = abar[t].view(-1, 1, 1, 1)
    z_t = a.sqrt() * z + (1.0 - a).sqrt() * eps
    loss = torch.nn.functional.mse_loss(model(z_t, t, class_labels=y).sample, eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()
  first, med = _time_loop(call, call, steps)
  return first, med, n_params


def time_stage_step(unet, batch, num_devices, steps):
  """Times the project's full MNIST LDM train step (encoder + stage loss + train_step + EMA)."""
  ldm, ae_cfg = mnist_ldm.get_config(), mnist_autoencoder.get_config()
  ae = builders.autoencoder(ae_cfg.model)
  size = ldm.data.image_size
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, ldm.data.channels), np.uint8)
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
  device_batch = dp.put_batch({"image": images, "label": np.arange(batch, dtype=np.int32) % 10})

  def call():
    state[0], metrics = dp.step(state[0], device_batch)
    return metrics["loss"]
  return _time_loop(call, call, steps)


# ----------------------------------------------------------------------------------------------
# Table.

COLUMNS = ("model", "implementation", "batch", "params (M)", "compile (s)", "step (ms, median)",
           "images/s", "model GFLOP/step", "GFLOP/s", "MFU (%)", "JAX/torch", "JAX/best torch")


def _row(model, impl, batch, n_params, first, med, gflop, peak, torch_ips=None, best_ips=None):
  """One table row; the ratios are images/s over torch's (first thread count, and fastest)."""
  ips = batch / med
  ratio = "" if torch_ips is None else f"{ips / torch_ips:.2f}"
  best = "" if best_ips is None else f"{ips / best_ips:.2f}"
  return (model, impl, str(batch), f"{n_params / 1e6:.2f}", f"{max(first - med, 0.0):.1f}",
          f"{med * 1e3:.5g}", f"{ips:.4g}", f"{gflop:.3g}", f"{gflop / med:.3g}",
          f"{100.0 * gflop / med / peak:.3g}", ratio, best)


def markdown_table(columns, rows):
  lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def run(args):
  """Measures everything; returns (peak rows, throughput rows, peak GFLOP/s)."""
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
  peak = max(g for _, g in peaks)
  print(markdown_table(("matmul peak", "GFLOP/s"), [(n, f"{g:.3g}") for n, g in peaks]), flush=True)

  rows = []
  for name, batch in zip(args.model_names, args.batches):
    unet, latent, ncls = build_unet(name, args)
    y0 = None if ncls is None else jnp.zeros((1,), jnp.int32)
    params = unet.init(jax.random.key(0), jnp.zeros((1,) + latent), jnp.zeros((1,)), y=y0)["params"]
    n_params = sum(int(x.size) for x in jax.tree.leaves(params))
    gflop = 3.0 * forward_flops(unet, params, latent, batch, ncls) / 1e9
    label = f"{name} {'x'.join(map(str, latent))}"
    torch_ips, best_ips, torch_rows = None, None, []
    for threads in ([] if args.skip_torch else args.torch_threads):
      first, med, n_torch = time_torch_unet(unet, latent, ncls, batch, args.steps, threads)
      if n_torch != n_params:
        raise ValueError(f"torch UNet has {n_torch} params, the Flax UNet {n_params}: configs differ.")
      torch_ips = torch_ips or batch / med
      best_ips = max(best_ips or 0.0, batch / med)
      torch_rows.append(_row(label, f"torch diffusers, {threads} threads", batch, n_params, first,
                             med, gflop, peak))
      print(markdown_table(COLUMNS, [torch_rows[-1]]).splitlines()[-1], flush=True)
    jax_rows = []
    for n in sorted({1, nd}):
      first, med = time_jax_unet(unet, params, latent, ncls, batch, n, args.steps)
      impl = "jax jit, 1 device" if n == 1 else f"jax pmap, {n} devices"
      jax_rows.append(_row(label, impl, batch, n_params, first, med, gflop, peak, torch_ips, best_ips))
      print(markdown_table(COLUMNS, [jax_rows[-1]]).splitlines()[-1], flush=True)
    rows += jax_rows + torch_rows
    if name == "mnist" and not args.skip_stage:
      for n in sorted({1, nd}):
        first, med = time_stage_step(unet, batch, n, args.steps)
        rows.append(_row(label, f"jax full LDM stage step, mesh {n} dev", batch, n_params, first,
                         med, gflop, peak, torch_ips, best_ips))
  return peaks, rows, peak


def main(argv=None):
  args = parse_args(argv)
  import torch  # pylint: disable=import-outside-toplevel
  load0 = os.getloadavg()
  t0 = time.perf_counter()
  peaks, rows, peak = run(args)
  load1 = os.getloadavg()
  print()
  print(f"JAX {jax.__version__} ({jax.device_count()} x {jax.devices()[0].device_kind} devices), "
        f"torch {torch.__version__} with torch.set_num_threads({args.torch_threads}) "
        f"(JAX/torch against {args.torch_threads[0]}); "
        f"{os.cpu_count()} CPU cores; load average (1/5/15 min) {load0[0]:.1f}/{load0[1]:.1f}/"
        f"{load0[2]:.1f} at start, {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} at end; "
        f"{time.perf_counter() - t0:.0f} s in all.")
  print(f"Median of {args.steps} timed steps after one warm-up step; compile = first call - median "
        f"step. Model GFLOP/step = 3 x UNet forward (XLA cost_analysis). MFU against the best "
        f"measured matmul peak, {peak:.1f} GFLOP/s.")
  print()
  print(markdown_table(("matmul peak", "GFLOP/s"), [(n, f"{g:.3g}") for n, g in peaks]))
  print()
  print(markdown_table(COLUMNS, rows))
  return rows


if __name__ == "__main__":
  main()
