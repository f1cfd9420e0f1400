"""The exported model of a finished stage: `<workdir>/export/` with config, params and EMA params.

Orbax checkpoints (in `<workdir>/checkpoints`) hold everything needed to resume training; the
export holds what a user needs to *use* the model, in a form that needs neither the optimizer nor
the device layout: `config.json` (the run's full config), `params.msgpack` and
`ema_params.msgpack` (flax.serialization of the parameter trees), `metadata.json` (e.g. the
latent scale factor), and for text-conditioned runs `tokenizer.json` (a `tokenizers` file; the
params are then {"unet", "text_encoder"}). Files are written to a temporary name and renamed, so an export is either
complete or absent.
"""

import json
import os

import flax.serialization
import jax
import ml_collections
import jax.numpy as jnp
import numpy as np

from ldm_jax.stages import builders
from ldm_jax.train.checkpoint import host_value

EXPORT_DIR = "export"


def _atomic_write(path: str, data: bytes) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def save(workdir: str, config: ml_collections.ConfigDict, params, ema_params, metadata: dict,
         files: dict | None = None) -> str:
  """Writes the export of a stage; returns its directory. Every process must call it (parameters
  sharded across processes are gathered collectively); only process 0 writes.
  files: other {file name: bytes} of the model (a text run's `tokenizer.json`)."""
  out = os.path.join(workdir, EXPORT_DIR)
  params, ema_params = jax.tree.map(host_value, (params, ema_params))
  if jax.process_index() != 0:
    return out
  os.makedirs(out, exist_ok=True)
  to_host = lambda t: jax.tree.map(np.asarray, t)
  _atomic_write(os.path.join(out, "params.msgpack"), flax.serialization.to_bytes(to_host(params)))
  _atomic_write(os.path.join(out, "ema_params.msgpack"),
                flax.serialization.to_bytes(to_host(ema_params)))
  _atomic_write(os.path.join(out, "metadata.json"), json.dumps(metadata, indent=1).encode())
  for name, data in (files or {}).items():
    _atomic_write(os.path.join(out, name), data)
  _atomic_write(os.path.join(out, "config.json"), config.to_json_best_effort(indent=1).encode())
  return out


def load(workdir: str, *, use_ema: bool = True):
  """Reads an export -> (config ConfigDict, params, metadata dict)."""
  out = os.path.join(workdir, EXPORT_DIR)
  name = "ema_params.msgpack" if use_ema else "params.msgpack"
  path = os.path.join(out, name)
  if not os.path.exists(path):
    raise ValueError(f"No exported model at {out} (missing {name}); train the stage first "
                     f"(python -m ldm_jax.main --config=... --workdir={workdir}).")
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(os.path.join(out, "metadata.json"), encoding="utf-8") as f:
    metadata = json.load(f)
  with open(path, "rb") as f:
    params = _unbox(flax.serialization.msgpack_restore(f.read()))
  return config, params, metadata


def _unbox(tree):
  """Exports written before 2026-12 may hold logical-axis boxes (nn.LogicallyPartitioned) as
  {"value": x} dicts; the arrays x are the params."""
  if isinstance(tree, dict):
    if set(tree) == {"value"} and not isinstance(tree["value"], dict):
      return tree["value"]
    return {k: _unbox(v) for k, v in tree.items()}
  return tree


def load_first_stage(workdir: str, use_ema: bool = True):
  """(autoencoder module, params, its run config) from an autoencoder run's export."""
  config, params, metadata = load(workdir, use_ema=use_ema)
  if metadata.get("stage") != "autoencoder":
    raise ValueError(f"{workdir} holds a {metadata.get('stage')!r} export, not an autoencoder.")
  return builders.autoencoder(config.model), jax.tree.map(jnp.asarray, params["autoencoder"]), config
