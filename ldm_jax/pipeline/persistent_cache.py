"""JAX's persistent compilation cache, so a new notebook kernel reuses programs compiled before."""

import os

import jax


def enable_persistent_cache(path: str, min_compile_time_secs: float = 0.0) -> str:
  """Stores every compiled program taking >= min_compile_time_secs under `path` (created).

  A process-wide JAX setting: call it before the first compilation of the programs to be cached.
  """
  if not isinstance(path, (str, os.PathLike)) or not str(path):
    raise ValueError(f"path must be a directory path, got {path!r}.")
  path = os.path.abspath(os.fspath(path))
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
