"""Per-program XLA:CPU convolution back end: which library runs a stage's convolutions on a CPU host.

  compiler_options(choice, stage, widest=None) -> {option: value} for jax.jit(compiler_options=)
                                                 or None

jaxlib 0.10 sends CPU convolutions to YNNPACK, which runs a convolution's weight gradient as a
direct convolution with a window the size of the whole activation. Eigen's convolutions (the
back end before YNNPACK) do it as a matrix product. Which is faster depends on the machine and
the program (`experiments/benchmarks/cpu_setup.py`, README "CPU setup"; 2 cores, 2 simulated
devices, step time over YNNPACK's): on the first 2-core machine the MNIST autoencoder stage step
was 0.50x with single-threaded Eigen convolutions under load and 0.95x idle; on the 2026-12-04
machine (AVX-512, 2.5x faster) it was 1.11x, and the LDM step and sampling were 1.06-1.24x
slower with Eigen on both. Wider networks turn it round (`train_throughput.py --models=larger`,
2026-12-04, idle, pmap on 2 devices, batch 16 at 32x32x4, UNets of block_out_channels (c, 2c,
2c)): Eigen's train step is 1.18x faster at c = 64 (widest 128, 6.8M params), 1.26x at c = 96
(15M), 1.44x at c = 128 (27M), and its guided sampling 1.26-1.28x at c = 128. So "auto" picks Eigen
for a network whose widest convolution has >= EIGEN_FROM_CHANNELS = 128 channels (`widest`), and
jaxlib's default below (the MNIST UNet and autoencoder: 64); autoencoders that wide were not timed,
the rule follows the UNets'. The other choices stay for machines that measure otherwise. They are compile-time options of one program
(`DebugOptions`), so a stage chooses its own without restarting the process:

  choice          convolutions                    compiler options
  "ynnpack"       YNNPACK (jaxlib's default)      none
  "eigen"         Eigen, multi-threaded           ynn fusions: dots and reductions, no convs
  "eigen_1thread" Eigen, one thread per device    the same + xla_cpu_multi_thread_eigen=False
  "auto"          "eigen" where widest >= 128, else "ynnpack" (the measured choice above)

Nothing changes on GPU/TPU backends, and an XLA_FLAGS that sets either option is the user's
choice: it is left to apply (XLA_FLAGS are the defaults that compiler options override).
"""

import os

import jax

CHOICES = ("auto", "ynnpack", "eigen", "eigen_1thread")
STAGES = ("autoencoder", "latent_diffusion", "sampling")
EIGEN_FROM_CHANNELS = 128
_YNN = "xla_cpu_experimental_ynn_fusion_type"
_THREADS = "xla_cpu_multi_thread_eigen"
# YNNPACK keeps what it fuses by default except convolutions: jaxlib 0.10's default set
# {REDUCE, INDIVIDUAL_DOT, INDIVIDUAL_CONVOLUTION} minus INDIVIDUAL_CONVOLUTION, the same compiled
# program as XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution (a compiler
# option takes no "-name" form; tests/test_xla_cpu.py compares the programs, reductions included:
# INDIVIDUAL_DOT alone also drops YNNPACK's reductions, a 27M UNet's step 1.2x slower).
_EIGEN = {_YNN: "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
OPTIONS = {"ynnpack": None, "eigen": _EIGEN, "eigen_1thread": {**_EIGEN, _THREADS: False}}


def name(options: dict | None) -> str:
  """What a step compiled with `options` runs its convolutions with, for the run's summary line."""
  if not options and user_flags():
    return "as XLA_FLAGS set (" + ", ".join(user_flags()) + ")"
  matches = [k for k, v in OPTIONS.items() if (v or {}) == (options or {})]
  return matches[0] if matches else f"compiler options {options}"


def check_choice(choice: str, key: str = "parallel.cpu_convolutions") -> str:
  if choice not in CHOICES:
    raise ValueError(f"{key}={choice!r}; valid choices: {', '.join(CHOICES)}")
  return choice


def resolve(choice: str, stage: str, local_devices: int, cores: int | None = None,  # pylint: disable=unused-argument
            widest: int | None = None) -> str:
  """The concrete back end of `choice` for `stage` on `local_devices` devices of `cores` cores, for
  a network whose widest convolution has `widest` channels (None: unknown, taken as narrow).
  "auto" is "eigen" from EIGEN_FROM_CHANNELS on, else "ynnpack" (module docstring); the device
  layout stays in the signature for a measured choice that depends on it."""
  check_choice(choice)
  if stage not in STAGES:
    raise ValueError(f"stage {stage!r}; valid choices: {', '.join(STAGES)}")
  if choice != "auto":
    return choice
  return "eigen" if widest is not None and widest >= EIGEN_FROM_CHANNELS else "ynnpack"


def widest(network) -> int | None:
  """The widest block of a UNet / autoencoder module (its block_out_channels), or None for one
  without them (a stand-in denoiser, no network): `resolve` takes that as narrow."""
  channels = getattr(network, "block_out_channels", None)
  return max(int(c) for c in channels) if channels else None


def user_flags(xla_flags: str | None = None) -> list[str]:
  """The convolution options XLA_FLAGS already sets (the user's choice, never overridden)."""
  flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
  return [o for o in (_YNN, _THREADS) if o in flags]


def compiler_options(choice: str, stage: str, widest: int | None = None) -> dict | None:
  """Compiler options for `stage`'s programs (a train step, the pipeline's sampling) on this
  process's backend, for a network whose widest convolution has `widest` channels, or None."""
  check_choice(choice)
  if jax.default_backend() != "cpu" or user_flags():
    return None
  return OPTIONS[resolve(choice, stage, jax.local_device_count(), widest=widest)]
