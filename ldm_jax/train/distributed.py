"""Multi-process start-up: `jax.distributed.initialize` from a config or the environment.

Keys (config section `distributed`, each overridable by its environment variable):
  coordinator_address  LDM_JAX_COORDINATOR  "host:port" of process 0's coordinator
  num_processes        LDM_JAX_NUM_PROCESSES
  process_id           LDM_JAX_PROCESS_ID
  local_device_ids     LDM_JAX_LOCAL_DEVICE_IDS  comma-separated, optional
With none set, nothing is initialised unless `auto=True` (JAX then detects TPU pods / SLURM).
"""

import os

import jax
import ml_collections

_ENV = {"coordinator_address": "LDM_JAX_COORDINATOR", "num_processes": "LDM_JAX_NUM_PROCESSES",
        "process_id": "LDM_JAX_PROCESS_ID", "local_device_ids": "LDM_JAX_LOCAL_DEVICE_IDS"}


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.coordinator_address = ""    # "host:port"; empty = single process (or auto-detect)
  c.num_processes = 0           # total processes; 0 = unset
  c.process_id = -1             # this process's index; -1 = unset
  c.local_device_ids = ""       # e.g. "0,1"; empty = all local devices
  c.auto = False                # call jax.distributed.initialize() with no arguments
  c.initialization_timeout = 300  # seconds to wait for all processes to connect
  c.lock()
  return c


def resolve(config=None, environ=None) -> dict:
  """The initialize() keyword arguments from config values overridden by the environment."""
  config = default_config() if config is None else config
  environ = os.environ if environ is None else environ
  values = {k: environ.get(v, config.get(k)) for k, v in _ENV.items()}
  kw = {}
  if values["coordinator_address"]:
    kw["coordinator_address"] = str(values["coordinator_address"])
  if int(values["num_processes"] or 0) > 0:
    kw["num_processes"] = int(values["num_processes"])
  if values["process_id"] not in (None, "") and int(values["process_id"]) >= 0:
    kw["process_id"] = int(values["process_id"])
  if values["local_device_ids"]:
    kw["local_device_ids"] = [int(i) for i in str(values["local_device_ids"]).split(",")]
  if kw and not {"coordinator_address", "num_processes", "process_id"} <= set(kw):
    raise ValueError(f"distributed settings {sorted(kw)} are incomplete; need "
                     "coordinator_address, num_processes and process_id together")
  return kw


def initialize(config=None, environ=None) -> bool:
  """Initialises jax.distributed when configured; returns whether it is (now) initialised."""
  if jax.distributed.is_initialized():
    return True
  kw = resolve(config, environ)
  auto = bool(config.get("auto", False)) if config is not None else False
  if not kw and not auto:
    return False
  timeout = int(config.get("initialization_timeout", 300)) if config is not None else 300
  jax.distributed.initialize(**kw, initialization_timeout=timeout)
  return True
