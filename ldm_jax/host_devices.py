"""One simulated XLA CPU device per core, for entry points that run data-parallel on a CPU host.

XLA:CPU runs a convolution on one core, so data parallelism over one device per core is how a CPU
host uses all its cores. Must be called before JAX is imported (this module does not import it);
an XLA_FLAGS that already sets the device count is left alone. Harmless on accelerator hosts.
"""

import os

# XLA:CPU's LLVM back end at -O0. Convolutions and matmuls still run in their library kernels
# (YNNPACK / Eigen), only XLA's own fused loops are compiled without LLVM's optimisations. Measured
# on this project's test modules (2-core CPU, 2026-12-02, CPU seconds): the LDM stage tests 135 ->
# 75, the UNet tests 56 -> 44, the tiny MNIST-pairs study job (trains and samples) 346 -> 215. For
# short runs, where compiling costs more than running: the test suite and smoke runs.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"
# XLA's default level (3), for one program under FAST_COMPILE_FLAGS: `jax.jit(f,
# compiler_options=OPTIMIZED_PROGRAM)`. For the few programs that run far longer than they compile:
# the closed-form Gaussian sampler checks (1,000 steps over 20,000 draws) take 38 s at -O0, 1.4 s
# here.
OPTIMIZED_PROGRAM = {"xla_backend_optimization_level": 3}


def simulate_one_device_per_core() -> None:
  """Adds --xla_force_host_platform_device_count=<cores> to XLA_FLAGS unless already set, or unless
  this process is one of several started together (LDM_JAX_NUM_PROCESSES / JAX_NUM_PROCESSES > 1):
  each of those keeps one CPU device (`ldm_jax.launch`)."""
  flags = os.environ.get("XLA_FLAGS", "")
  several = any(os.environ.get(v, "").strip().isdigit() and int(os.environ[v]) > 1
                for v in ("LDM_JAX_NUM_PROCESSES", "JAX_NUM_PROCESSES"))
  if "xla_force_host_platform_device_count" not in flags and not several:
    os.environ["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={os.cpu_count() or 1}").strip()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
