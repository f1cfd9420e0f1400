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
  if not distributed.initialize(distributed_config):
    return False
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  if jax.process_count() > 1:
    # A first collective while all processes are idle: on CPU hosts the gloo communicator is set
    # up here, inside its 30 s connection window, rather than at a point where one process may
    # still be compiling.
    multihost_utils.sync_global_devices("ldm_jax.launch.start")
  return True
