"""The autoencoder-zoo ablation's own flag parser and verdict (experiments/ablations/autoencoders.py)."""

import pytest

from experiments.ablations import autoencoders


def test_parse_grid():
  assert autoencoders.parse_grid("KL:4:3,VQ:8:4") == [("KL", 4, 3), ("VQ", 8, 4)]
  with pytest.raises(ValueError, match="valid kinds: KL, VQ"):
    autoencoders.parse_grid("AE:4:3")
  with pytest.raises(ValueError, match="f = 3 is not one of"):
    autoencoders.parse_grid("KL:3:3")
  with pytest.raises(ValueError, match="not kind:f:c"):
    autoencoders.parse_grid("KL:4")
  with pytest.raises(ValueError, match="c must be at least 1"):
    autoencoders.parse_grid("KL:4:0")


def test_autoencoder_verdict_separates_direction_and_size():
  row = lambda kind, f, c, psnr: (kind, f, c, psnr, 0.9, 1.0, 0.9, 1.0, 1.0, 1.0)
  close = autoencoders._verdict([row("KL", 4, 3, 24.0), row("VQ", 4, 3, 23.5)])  # pylint: disable=protected-access
  assert "(gap 0.50 dB): agrees (KL slightly better)" in close
  far = autoencoders._verdict([row("KL", 4, 3, 24.0), row("VQ", 4, 3, 18.0)])  # pylint: disable=protected-access
  assert "agrees in direction (KL better), not in size" in far and "1.1 dB" in far
  worse = autoencoders._verdict([row("KL", 8, 4, 20.0), row("VQ", 8, 4, 21.0)])  # pylint: disable=protected-access
  assert "DISAGREES" in worse
