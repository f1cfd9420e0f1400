"""Latent rate: the KL rate against a float64 closed form and torch.distributions, and the VQ bound."""

import math

import numpy as np
import pytest
import torch

from ldm_jax.metrics import kl_rate_bits, vq_rate_bits


def test_kl_rate_matches_float64_and_torch():
  rs = np.random.RandomState(0)
  mean = rs.randn(3, 4, 4, 2).astype(np.float32)
  logvar = rs.uniform(-6, 1, size=(3, 4, 4, 2)).astype(np.float32)
  got = np.asarray(kl_rate_bits(mean, logvar))
  m, lv = mean.astype(np.float64), logvar.astype(np.float64)
  want = 0.5 * (m**2 + np.exp(lv) - 1 - lv).sum(axis=(1, 2, 3)) / math.log(2)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  q = torch.distributions.Normal(torch.tensor(m), torch.exp(0.5 * torch.tensor(lv)))
  p = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
  ref = torch.distributions.kl_divergence(q, p).sum(dim=(1, 2, 3)).numpy() / math.log(2)
  np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_kl_rate_is_zero_at_the_prior_and_grows_with_precision():
  z = np.zeros((2, 3, 3, 1), np.float32)
  np.testing.assert_allclose(np.asarray(kl_rate_bits(z, z)), 0.0, atol=1e-7)
  sharper = np.asarray(kl_rate_bits(z, z - 4.0))  # same mean, smaller variance: more bits
  assert np.all(sharper > 0)
  # each element: 0.5 (e^-4 - 1 + 4) nats
  np.testing.assert_allclose(sharper, 9 * 0.5 * (math.exp(-4) + 3) / math.log(2), rtol=1e-6)


def test_vq_rate_bound():
  assert vq_rate_bits(64, 256) == 64 * 8.0
  with pytest.raises(ValueError, match="num_codes >= 2"):
    vq_rate_bits(64, 1)
