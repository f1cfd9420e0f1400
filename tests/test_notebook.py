"""Executes experiments/notebooks/quickstart.ipynb end to end (nbclient); any cell error fails.

LDM_QUICKSTART_TINY=1 makes the notebook build its tiny untrained model even where the README's
MNIST run exists, so the test is fast and does not depend on local training runs.
"""

import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "experiments", "notebooks", "quickstart.ipynb")


def test_quickstart_notebook_runs(monkeypatch):
  monkeypatch.setenv("LDM_QUICKSTART_TINY", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute()  # raises CellExecutionError on any error
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
  assert "tiny untrained model" in text
  assert "second call" in text
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 8  # every plot cell drew its figure (the last: prompts)
  assert "refused:" in text and "above" in text  # a word outside the vocabulary, named
