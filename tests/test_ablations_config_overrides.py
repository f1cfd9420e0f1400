"""Dotted-key config overrides of the ablations (experiments/ablations/config_overrides.py)."""

import pytest

from experiments.ablations import config_overrides
from experiments.configs import mnist_autoencoder


def test_apply_overrides_sets_keys_and_rejects_misspelt_ones():
  c = config_overrides.apply_overrides(mnist_autoencoder.get_config(),
                                       {"train.num_steps": 3, "+model.num_embeddings": 16})
  assert c.train.num_steps == 3 and c.model.num_embeddings == 16  # "+": a new key, added
  with pytest.raises(ValueError, match="Unknown config key 'train.num_step'"):
    config_overrides.apply_overrides(mnist_autoencoder.get_config(), {"train.num_step": 3})
