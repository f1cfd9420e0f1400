"""Fixtures shared by the pipeline tests."""

import pytest


@pytest.fixture(scope="module")
def torch_one_thread():
  """One torch thread: on a shared 2-core machine torch's thread pool spins and runs ~50x slower."""
  import torch  # pylint: disable=import-outside-toplevel
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)
