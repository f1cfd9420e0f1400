"""Multi-process start-up: `jax.distributed.initialize` from a config, the environment or the cluster.

Keys of the config section `distributed` (each overridable by its environment variable; JAX's own
variables are honoured where ldm_jax's are unset):
  coordinator_address  LDM_JAX_COORDINATOR      JAX_COORDINATOR_ADDRESS   "host:port" of process 0
  num_processes        LDM_JAX_NUM_PROCESSES    JAX_NUM_PROCESSES
  process_id           LDM_JAX_PROCESS_ID       JAX_PROCESS_ID
  local_device_ids     LDM_JAX_LOCAL_DEVICE_IDS JAX_LOCAL_DEVICE_IDS      comma-separated, optional
  auto                 "detect" | "always" | "never": with no explicit coordinator, "detect" calls
                       `jax.distributed.initialize()` (JAX then reads the cluster) when this process
                       runs under SLURM or Open MPI with more than one task, or on a Cloud TPU VM;
                       "always" calls it in any case; "never" leaves a coordinator-less run single.
  initialization_timeout  seconds to wait for all processes to connect
  heartbeat_timeout       seconds after which a silent process counts as dead: the others then
                          exit with JAX's error instead of waiting in a collective for ever
Everything here reads only the environment: nothing touches a device before `initialize`.
"""

import importlib.util
import os

import jax
import ml_collections

AUTO = ("detect", "always", "never")
_ENV = {"coordinator_address": ("LDM_JAX_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
        "num_processes": ("LDM_JAX_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
        "process_id": ("LDM_JAX_PROCESS_ID", "JAX_PROCESS_ID"),
        "local_device_ids": ("LDM_JAX_LOCAL_DEVICE_IDS", "JAX_LOCAL_DEVICE_IDS")}


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.coordinator_address = ""    # "host:port"; empty = single process (or auto-detect)
  c.num_processes = 0           # total processes; 0 = unset
  c.process_id = -1             # this process's index; -1 = unset
  c.local_device_ids = ""       # e.g. "0,1"; empty = all local devices
  c.auto = "detect"             # "detect" | "always" | "never" (module docstring)
  c.initialization_timeout = 300  # seconds to wait for all processes to connect
  c.heartbeat_timeout = 100     # seconds of silence after which a peer counts as dead
  c.lock()
  return c


def _int(value, name):
  try:
    return int(value)
  except (TypeError, ValueError):
    raise ValueError(f"distributed.{name} must be an integer, got {value!r}.") from None


def resolve(config=None, environ=None) -> dict:
  """The initialize() keyword arguments from config values overridden by the environment."""
  config = default_config() if config is None else config
  environ = os.environ if environ is None else environ
  values = {}
  for k, names in _ENV.items():
    found = [environ[n] for n in names if environ.get(n, "") != ""]
    values[k] = found[0] if found else config.get(k)
  kw = {}
  if values["coordinator_address"]:
    address = str(values["coordinator_address"])
    if ":" not in address or not address.rsplit(":", 1)[1].isdigit():
      raise ValueError(f"distributed.coordinator_address must be 'host:port', got {address!r}.")
    kw["coordinator_address"] = address
  if _int(values["num_processes"] or 0, "num_processes") > 0:
    kw["num_processes"] = _int(values["num_processes"], "num_processes")
  if values["process_id"] not in (None, "") and _int(values["process_id"], "process_id") >= 0:
    kw["process_id"] = _int(values["process_id"], "process_id")
  if values["local_device_ids"]:
    kw["local_device_ids"] = [_int(i, "local_device_ids") for i in str(values["local_device_ids"]).split(",")]
  if kw and not {"coordinator_address", "num_processes", "process_id"} <= set(kw):
    raise ValueError(f"distributed settings {sorted(kw)} are incomplete; need "
                     "coordinator_address, num_processes and process_id together")
  if "process_id" in kw and not 0 <= kw["process_id"] < kw["num_processes"]:
    raise ValueError(f"distributed.process_id={kw['process_id']} must be in "
                     f"[0, num_processes={kw['num_processes']}).")
  return kw


def cluster_detected(environ=None) -> str | None:
  """The cluster this process runs in with several processes ("slurm", "ompi", "tpu"), or None."""
  environ = os.environ if environ is None else environ
  count = lambda *names: max([_int(environ[n].split("(")[0], n) for n in names if environ.get(n)] or [0])
  if environ.get("SLURM_JOB_ID") and count("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") > 1:
    return "slurm"
  if count("OMPI_COMM_WORLD_SIZE") > 1:
    return "ompi"
  if len([h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "tpu"
  if (importlib.util.find_spec("libtpu") is not None and not environ.get("TPU_SKIP_MDS_QUERY")
      and environ.get("JAX_PLATFORMS", "") in ("", "tpu")):
    return "tpu"  # a Cloud TPU VM: JAX reads the pod's workers from the metadata server
  return None


def is_multiprocess(config=None, environ=None) -> bool:
  """Whether this process will be one of several (from the settings and environment alone)."""
  kw = resolve(config, environ)
  if kw:
    return kw["num_processes"] > 1
  auto = (config or default_config()).get("auto", "detect")
  return auto == "always" or (auto == "detect" and cluster_detected(environ) in ("slurm", "ompi"))


def initialize(config=None, environ=None) -> bool:
  """Initialises jax.distributed when configured; returns whether it is (now) initialised."""
  if jax.distributed.is_initialized():
    return True
  config = default_config() if config is None else config
  auto = config.get("auto", "detect")
  if auto is True or auto is False:  # the boolean of earlier configs
    auto = "always" if auto else "detect"
  if auto not in AUTO:
    raise ValueError(f"distributed.auto={auto!r}; valid choices: {', '.join(AUTO)}.")
  kw = resolve(config, environ)
  if not kw and not (auto == "always" or (auto == "detect" and cluster_detected(environ))):
    return False
  jax.distributed.initialize(**kw, initialization_timeout=int(config.get("initialization_timeout", 300)),
                             heartbeat_timeout_seconds=int(config.get("heartbeat_timeout", 100)))
  return True
