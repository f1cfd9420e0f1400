"""Which XLA:CPU setup runs this project fastest here: device count, convolution back end, threads.

  python -m experiments.benchmarks.cpu_setup [--setups=all] [--programs=ae,ldm,sample] [--steps=5] [--quick]

Each setup is a fresh process (XLA reads its flags once, at start) that times the main job's own
three programs with random weights and random uint8 digits, exactly as `ldm_jax.main` builds them:
  * "autoencoder step": the MNIST KL-f4 stage step (`experiments/configs/mnist_autoencoder.py`,
    batch 32, L1 + KL + PatchGAN hinge, both optimizers, EMA) under `parallel.data_parallel`;
  * "LDM step": the MNIST class-conditional LDM stage step (`mnist_ldm.py`, batch 64, frozen
    encoder, label dropout, clipping, EMA);
  * "sampling": `LatentDiffusionPipeline.sample` of 100 digits, DPM-Solver++(2M) 25 steps, w = 2
    (the main job's evaluation call), decoding included;
  * "text LDM step" (--programs=text, not in the default list): the MNIST-pairs text LDM step
    (`mnist_text.py`: 32 x 64 canvas, a 2-layer text encoder trained jointly, cross-attention at
    both levels; batch 64 of random captions).
"compile" is the first call (trace + compile + one step / one batch); "step" / "sample" is the
median of --steps further calls after a warm-up. The setups:

  name          XLA_FLAGS (besides the device count)                      devices
  ynn_2dev      (none: jaxlib's defaults, YNNPACK convolutions)            2
  eigen_2dev    --xla_cpu_experimental_ynn_fusion_type=-individual_convolution   2
  eigen1t_2dev  the same + --xla_cpu_multi_thread_eigen=false              2
  eigen_1dev    --xla_cpu_experimental_ynn_fusion_type=-individual_convolution   1
  ynn_1dev      (none)                                                     1
  ynn_2dev_O0   --xla_backend_optimization_level=0                        2
  eigen_1dev_O0 eigen_1dev's flag + --xla_backend_optimization_level=0      1
  auto_2dev     (none; each step compiles with the CLI's per-stage choice,    2
                `ldm_jax.xla_cpu` with parallel.cpu_convolutions="auto")

The table gives each figure and its ratio to "ynn_2dev" (what the CLI used before this script
chose); the machine's load average is printed beside it. `ldm_jax.xla_cpu` holds the per-stage
choice these measurements support (auto_2dev is what the CLI runs).
"""

import argparse
import json
import os
import subprocess
import sys
import time

YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
SETUPS = {
    "ynn_2dev": ("", 2),
    "eigen_2dev": (YNN_OFF, 2),
    "eigen1t_2dev": (YNN_OFF + " --xla_cpu_multi_thread_eigen=false", 2),
    "eigen_1dev": (YNN_OFF, 1),
    "ynn_1dev": ("", 1),
    "ynn_2dev_O0": ("--xla_backend_optimization_level=0", 2),
    "eigen_1dev_O0": (YNN_OFF + " --xla_backend_optimization_level=0", 1),
    "auto_2dev": ("", 2),
}
# Setups whose steps compile with `ldm_jax.xla_cpu.compiler_options(choice, stage)`.
PER_STAGE = {"auto_2dev": "auto"}
PROGRAMS = {"ae": ("ae_compile", "ae_step"), "ldm": ("ldm_compile", "ldm_step"),
            "sample": ("sample_compile", "sample"), "text": ("text_compile", "text_step")}
BASELINE = "ynn_2dev"
FIGURES = ("ae_compile", "ae_step", "ldm_compile", "ldm_step", "sample_compile", "sample",
           "text_compile", "text_step")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--setups", default="all", help=f"comma list of {sorted(SETUPS)} or 'all'")
  p.add_argument("--programs", default="ae,ldm,sample",
                 help=f"comma list of the programs to time, of {sorted(PROGRAMS)}")
  p.add_argument("--steps", type=int, default=5, help="timed calls per program (median)")
  p.add_argument("--quick", action="store_true",
                 help="tiny batches and 2 sampling steps (a smoke run of this script)")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  names = sorted(SETUPS) if args.setups == "all" else args.setups.split(",")
  bad = [n for n in names if n not in SETUPS]
  if bad:
    p.error(f"unknown setup(s) {bad}; valid choices: {sorted(SETUPS)} or 'all'")
  if args.steps < 1:
    p.error(f"--steps={args.steps}; must be >= 1")
  args.program_list = args.programs.split(",")
  bad = [n for n in args.program_list if n not in PROGRAMS]
  if bad or not args.program_list:
    p.error(f"unknown program(s) {bad}; valid choices: {sorted(PROGRAMS)}")
  args.names = [n for n in SETUPS if n in names]
  return args


def _timed(call, steps):
  """(first-call seconds, median of `steps` calls after one warm-up): train_throughput's timer."""
  from experiments.benchmarks.train_throughput import _time_loop  # pylint: disable=import-outside-toplevel,protected-access
  return _time_loop(call, call, steps)


def _stage_step(config, loss_fn, init_fn, batch, steps, extra=None, compiler_options=None):
  """The stage's step as `stages.run._fit` builds it, timed on one fixed batch."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from ldm_jax.stages import builders  # pylint: disable=import-outside-toplevel
  from ldm_jax.train import parallel  # pylint: disable=import-outside-toplevel
  devices = builders.devices(config)
  tx, lr = builders.optimizer(config)
  dp = parallel.data_parallel(loss_fn, tx, mode=config.parallel.mode,
                              mesh=parallel.make_mesh(1, devices),
                              ema_decay=config.train.ema_decay, lr_schedule=lr,
                              compiler_options=compiler_options)
  state = [dp.create_state(lambda r: nn.meta.unbox(init_fn(r)), jax.random.key(0), extra=extra)]
  device_batch = dp.put_batch(batch)

  def call():
    state[0], metrics = dp.step(state[0], device_batch)
    return metrics["loss"]
  return _timed(call, steps)


def worker(args) -> dict:
  """Runs in the setup's own process: times the three programs, returns FIGURES."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from experiments.configs import mnist_autoencoder, mnist_ldm  # pylint: disable=import-outside-toplevel
  from ldm_jax.pipeline import LatentDiffusionPipeline  # pylint: disable=import-outside-toplevel
  from ldm_jax.pipeline.random_init import random_params  # pylint: disable=import-outside-toplevel
  from ldm_jax.stages import autoencoder as ae_stage  # pylint: disable=import-outside-toplevel
  from ldm_jax.stages import builders  # pylint: disable=import-outside-toplevel
  from ldm_jax.stages import latent_diffusion as ldm_stage  # pylint: disable=import-outside-toplevel
  from ldm_jax import xla_cpu  # pylint: disable=import-outside-toplevel

  choice = PER_STAGE.get(args.worker)
  options = lambda stage: xla_cpu.compiler_options(choice, stage) if choice else None
  out = {"devices": jax.device_count()}
  rng = np.random.default_rng(0)
  ae_cfg, ldm_cfg = mnist_autoencoder.get_config(), mnist_ldm.get_config()
  if args.quick:
    ae_cfg.train.global_batch_size, ldm_cfg.train.global_batch_size = 4, 4
  size, ch = ae_cfg.data.image_size, ae_cfg.data.channels
  ae, disc = builders.autoencoder(ae_cfg.model), builders.discriminator(ae_cfg.disc)

  b = ae_cfg.train.global_batch_size
  loss_fn = ae_stage.make_loss_fn(ae, disc, ae_cfg.loss, ae_stage.perceptual_from_config(ae_cfg.loss))
  images = rng.integers(0, 256, (b, size, size, ch), np.uint8)
  if "ae" in args.program_list:
    out["ae_compile"], out["ae_step"] = _stage_step(
        ae_cfg, loss_fn, lambda r: ae_stage.init_params(ae, disc, r, (1, size, size, ch)),
        {"image": images}, args.steps, compiler_options=options("autoencoder"))

  b = ldm_cfg.train.global_batch_size
  d = ldm_cfg.diffusion
  ae_params = random_params(ae, jnp.zeros((1, size, size, ch)), seed=1)
  f = ae.downsampling_factor
  latent = (size // f, size // f, ae.latent_channels)
  unet = builders.unet(ldm_cfg.model, in_channels=latent[-1], num_class_embeds=d.num_classes + 1)
  schedule = builders.schedule(d)
  loss_fn = ldm_stage.make_loss_fn(unet, ae, schedule, d, 1.0)
  y0 = jnp.zeros((1,), jnp.int32)
  init_fn = lambda r: unet.init(r, jnp.zeros((1,) + latent), jnp.zeros((1,)), y=y0)["params"]
  batch = {"image": rng.integers(0, 256, (b, size, size, ch), np.uint8),
           "label": (np.arange(b) % d.num_classes).astype(np.int32)}
  if "ldm" in args.program_list:
    out["ldm_compile"], out["ldm_step"] = _stage_step(
        ldm_cfg, loss_fn, init_fn, batch, args.steps, extra={"frozen": ae_params},
        compiler_options=options("latent_diffusion"))
  if "text" in args.program_list:
    out["text_compile"], out["text_step"] = _text_step(args, options("latent_diffusion"))
  if "sample" not in args.program_list:
    return out

  unet_params = random_params(unet, jnp.zeros((1,) + latent), jnp.zeros((1,)), y=y0, seed=2)
  pipe = LatentDiffusionPipeline(unet, unet_params, ae, ae_params, schedule, scale_factor=1.0,
                                 latent_shape=latent, num_classes=d.num_classes,
                                 max_batch=100)
  s = ldm_cfg.sample
  n, num_steps = (4, 2) if args.quick else (100, s.num_steps)
  labels = np.arange(n) % d.num_classes
  call = lambda: pipe.sample(jax.random.key(0), n, labels=labels, method=s.method,
                             num_steps=num_steps, guidance_scale=s.guidance_scale)
  out["sample_compile"], out["sample"] = _timed(call, max(1, args.steps // 2))
  return out


def _text_step(args, compiler_options):
  """(compile, step) seconds of the MNIST-pairs text LDM stage step, built as `stages.run` does."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from experiments.configs import mnist_autoencoder, mnist_text  # pylint: disable=import-outside-toplevel
  from ldm_jax.data import mnist_pairs  # pylint: disable=import-outside-toplevel
  from ldm_jax.pipeline.random_init import random_params  # pylint: disable=import-outside-toplevel
  from ldm_jax.stages import builders  # pylint: disable=import-outside-toplevel
  from ldm_jax.stages import latent_diffusion as ldm_stage  # pylint: disable=import-outside-toplevel
  from ldm_jax.text import token_ids  # pylint: disable=import-outside-toplevel
  cfg = mnist_text.get_config()
  if args.quick:
    cfg.train.global_batch_size = 4
  ae = builders.autoencoder(mnist_autoencoder.get_config().model)
  h, w = mnist_pairs.HEIGHT, mnist_pairs.WIDTH
  ae_params = random_params(ae, jnp.zeros((1, h, w, 1)), seed=1)
  tokenizer, encoder, _ = builders.text_conditioner(cfg.text)
  null_ids = token_ids.tokenize(tokenizer, [""])[0]
  latent = (1, h // ae.downsampling_factor, w // ae.downsampling_factor, ae.latent_channels)
  unet = builders.unet(cfg.model, in_channels=latent[-1], num_class_embeds=None,
                       context_dim=encoder.width)
  loss_fn = ldm_stage.make_loss_fn(unet, ae, builders.schedule(cfg.diffusion), cfg.diffusion, 1.0,
                                   text_encoder=encoder, null_ids=null_ids)
  ids0 = jnp.zeros((1, null_ids.shape[0]), jnp.int32)

  def init_fn(r):
    context = jnp.zeros((1, ids0.shape[1], encoder.width))
    return {"unet": unet.init(r, jnp.zeros(latent), jnp.zeros((1,)), context=context)["params"],
            "text_encoder": encoder.init(r, ids0)["params"]}
  b = cfg.train.global_batch_size
  rng = np.random.default_rng(0)
  source = mnist_pairs.MnistPairs("train")
  batch = {"image": rng.integers(0, 256, (b, h, w, 1), np.uint8),
           "tokens": np.asarray(token_ids.tokenize(tokenizer, source.captions(range(b))))}
  return _stage_step(cfg, loss_fn, init_fn, batch, args.steps, extra={"frozen": ae_params},
                     compiler_options=compiler_options)


def run_setup(name, args) -> dict:
  flags, n = SETUPS[name]
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={n}".strip())
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # every setup compiles from scratch
  cmd = [sys.executable, "-m", "experiments.benchmarks.cpu_setup", "--worker", name,
         f"--steps={args.steps}", f"--programs={args.programs}"] + (["--quick"] if args.quick else [])
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"setup {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def table(results: dict) -> str:
  base = results.get(BASELINE)
  figures = [f for f in FIGURES if any(f in r for r in results.values())]
  head = ["setup", "devices", "XLA_FLAGS"] + [f"{f} (s)" for f in figures]
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in results.items():
    flags = SETUPS[name][0] or "(default)"
    if name in PER_STAGE:
      flags += f"; per-stage compiler options ({PER_STAGE[name]})"
    cells = [name, str(r["devices"]), flags]
    for f in figures:
      if f not in r:
        cells.append("-")
        continue
      ratio = f" ({r[f] / base[f]:.2f}x)" if base and f in base and name != BASELINE else ""
      cells.append(f"{r[f]:.3f}{ratio}")
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join(rows)


def main(argv=None):
  args = parse_args(argv)
  if args.worker:
    print("RESULT " + json.dumps(worker(args)), flush=True)
    return
  results = {}
  for name in args.names:
    t0 = time.time()
    results[name] = run_setup(name, args)
    print(f"# {name}: {time.time() - t0:.0f} s, load average {os.getloadavg()[0]:.1f}",
          flush=True)
  print(f"\nXLA:CPU setups, {os.cpu_count()} cores, load average {os.getloadavg()} "
        f"(ratio: setup / {BASELINE}; lower is faster)\n")
  print(table(results))


if __name__ == "__main__":
  main()
