"""The autoencoder-zoo ablation's own flag parser and verdict (experiments/ablations/autoencoders.py)."""

import numpy as np
import pytest

from experiments.ablations import autoencoders
from experiments.ablations import seeds
from experiments.ablations import training
from ldm_jax import data as data_lib
from ldm_jax.stages import export


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
  def row(kind, f, c, psnr, sd=0.1):
    return (kind, f, c, {"psnr": seeds.summarize([psnr - sd, psnr + sd])})
  close = autoencoders._verdict([row("KL", 4, 3, 24.0), row("VQ", 4, 3, 23.5)])  # pylint: disable=protected-access
  assert ("(gap 0.50 dB): agrees (the paper's gap with 256 codes is 1.1 dB; up to 2x it counts "
          "as the same size) (KL slightly better)") in close, close
  edge = autoencoders._verdict([row("KL", 8, 4, 24.0), row("VQ", 8, 4, 20.4)])  # pylint: disable=protected-access
  assert "(gap 3.60 dB): agrees (the paper's gap with 256 codes is 1.8 dB; up to 2x" in edge, edge
  beyond = autoencoders._verdict([row("KL", 8, 4, 24.0), row("VQ", 8, 4, 20.2)])  # pylint: disable=protected-access
  assert "not in size: the paper's gap with 256 codes is 1.8 dB, and more than 2x" in beyond
  far = autoencoders._verdict([row("KL", 4, 3, 24.0), row("VQ", 4, 3, 18.0)])  # pylint: disable=protected-access
  assert "agrees in direction (KL better), not in size" in far and "1.1 dB" in far
  worse = autoencoders._verdict([row("KL", 8, 4, 20.0), row("VQ", 8, 4, 21.0)])  # pylint: disable=protected-access
  assert "DISAGREES" in worse
  noisy = autoencoders._verdict([row("KL", 4, 3, 24.0, 1.0), row("VQ", 4, 3, 23.5, 1.0)])  # pylint: disable=protected-access
  assert f"(gap 0.50 dB): {seeds.NOT_RESOLVED} (KL slightly better)" in noisy, noisy


def test_autoencoder_verdict_on_f_and_c_resolves_only_beyond_the_spread():
  def row(f, c, psnr, sd):
    return ("KL", f, c, {"psnr": seeds.summarize([psnr - sd, psnr + sd])})
  clear = autoencoders._verdict([row(2, 2, 30.0, 0.1), row(4, 3, 25.0, 0.1), row(4, 1, 20.0, 0.1),  # pylint: disable=protected-access
                                 row(8, 4, 25.1, 0.1)])
  assert "each step to the next f: agrees, not resolved at this scale (falls with f)" in clear, clear
  assert "f=4: c=1 -> c=3 PSNR 20.00 ± 0.14 -> 25.00 ± 0.14: agrees (more channels help)" in clear
  wrong = autoencoders._verdict([row(4, 1, 26.0, 0.1), row(4, 3, 20.0, 0.1)])  # pylint: disable=protected-access
  assert "DISAGREES (more channels help)" in wrong, wrong


def test_convergence_check_says_flattened_only_below_the_threshold():
  at = lambda *psnr: [{"psnr": p} for p in psnr]
  gain, word, line = autoencoders.convergence_check(at(24.0, 24.2, 24.1), [24.1, 24.3, 24.3], 600)
  assert word == "flattened" and abs(gain["mean"] - 0.1333333) < 1e-6, gain
  assert "trained for 1200 instead of 600 steps" in line and "**flattened**" in line, line
  assert "within the seeds' spread" in line, line
  gain, word, line = autoencoders.convergence_check(at(24.0, 24.2, 24.1), [25.0, 25.1, 25.2], 600)
  assert word == "not flattened" and "**not flattened**" in line, line
  assert "(beyond the seeds' spread)" in line, line
  # the gain is paired by seed: a steady 0.3 dB per seed is "not flattened" even though
  # the seeds spread more than that
  gain, word, _ = autoencoders.convergence_check(at(23.0, 24.0, 25.0), [23.3, 24.3, 25.3], 600)
  assert word == "not flattened" and abs(gain["sd"]) < 1e-9 and abs(gain["mean"] - 0.3) < 1e-9
  assert autoencoders.FLAT_DB == 0.25


def test_autoencoder_verdict_names_a_collapsed_codebook():
  def row(kind, psnr, **extra):
    s = {"psnr": seeds.summarize([psnr - 0.1, psnr + 0.1])}
    s.update({k: seeds.summarize([v, v]) for k, v in extra.items()})
    return (kind, 4, 3, s)
  collapsed = autoencoders._verdict([row("KL", 24.0), row("VQ", 18.0, perplexity=3.0, codebook_size=256)])  # pylint: disable=protected-access
  assert "codebook collapsed (code perplexity 3.0 ± 0.0 of 256 codes)" in collapsed, collapsed
  used = autoencoders._verdict([row("KL", 24.0), row("VQ", 18.0, perplexity=120.0, codebook_size=256)])  # pylint: disable=protected-access
  assert "collapsed" not in used and "not in size" in used, used
  # the threshold is a fraction of K: 3 of 16 codes is not collapsed
  small = autoencoders._verdict([row("KL", 24.0), row("VQ", 18.0, perplexity=3.0, codebook_size=16)])  # pylint: disable=protected-access
  assert "collapsed" not in small and autoencoders.COLLAPSED == 0.1


def test_reconstruct_counts_the_codes_a_vq_autoencoder_uses(tmp_path):
  """reconstruct's codebook use of a VQ first stage equals a count over its own encode indices."""
  run = training.autoencoder_run(str(tmp_path / "vq"), "tiny", f=2, z_channels=2, kind="VQ")
  images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 1), dtype=np.uint8)
  x_hat, stats = autoencoders.reconstruct(str(tmp_path / "vq"), images, batch=16)
  ae, params, _ = export.load_first_stage(str(tmp_path / "vq"))
  idx = np.asarray(ae.apply({"params": params}, data_lib.to_float(images), method="encode").indices)
  _, counts = np.unique(idx, return_counts=True)
  freq = counts / counts.sum()
  assert stats["codes_used"] == counts.size and stats["codebook_size"] == ae.num_embeddings == 16
  np.testing.assert_allclose(stats["perplexity"], np.exp(-np.sum(freq * np.log(freq))), rtol=1e-6)
  assert 1.0 <= stats["perplexity"] <= counts.size and x_hat.shape == images.shape
  assert np.isfinite(run["psnr"])
