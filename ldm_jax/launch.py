"""Process start-up shared by the CLI and the scripts: the CPU device layout, then jax.distributed.

  start(distributed_config=None)   call before anything touches a device

A single process on a CPU host simulates one XLA device per core (`host_devices`); one process of a
multi-process run keeps JAX's one CPU device per process (unless XLA_FLAGS says otherwise), so that
N processes on one host are N devices, like N hosts with one device each. Then `jax.distributed` is
initialised from the config's `distributed` section, the environment or the cluster
(`ldm_jax.train.distributed`).
"""

from ldm_jax import host_devices
from ldm_jax.train import distributed


def start(distributed_config=None) -> bool:
  """Sets up devices and the distributed runtime; returns whether jax.distributed is initialised."""
  if not distributed.is_multiprocess(distributed_config):
    host_devices.simulate_one_device_per_core()
  return distributed.initialize(distributed_config)
