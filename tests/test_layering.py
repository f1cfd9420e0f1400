"""The package's layering: the pipeline (inference) does not import the training code, and the
stages do not import the pipeline, so neither drags the other in (nor can they form a cycle)."""

import subprocess
import sys

import pytest


def _imported(module):
  code = f"import sys, {module}; print(' '.join(sorted(m for m in sys.modules if m.startswith('ldm_jax'))))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
  return set(out.stdout.split())


@pytest.mark.parametrize("module, forbidden", [
    ("ldm_jax.pipeline", ("ldm_jax.stages.run", "ldm_jax.train.loop", "ldm_jax.stages.previews")),
    ("ldm_jax.stages.run", ("ldm_jax.pipeline",)),
    ("ldm_jax.samplers", ("ldm_jax.pipeline", "ldm_jax.stages")),
])
def test_layers_do_not_import_each_other(module, forbidden):
  loaded = _imported(module)
  assert module in loaded
  bad = sorted(m for m in loaded for f in forbidden if m == f or m.startswith(f + "."))
  assert not bad, f"importing {module} imports {bad}"
