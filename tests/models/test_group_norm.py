"""ldm_jax.models.group_norm against a float64 reference, flax.linen.GroupNorm and torch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ldm_jax.models.group_norm import GroupNorm, group_normalize


def _reference(x, scale, bias, groups, eps):
  """Float64 GroupNorm of x [B, ..., C]: statistics over the positions and each group's channels."""
  x = np.asarray(x, np.float64)
  b, c = x.shape[0], x.shape[-1]
  xg = x.reshape(b, -1, groups, c // groups)
  mu = xg.mean(axis=(1, 3), keepdims=True)
  var = ((xg - mu) ** 2).mean(axis=(1, 3), keepdims=True)
  y = ((xg - mu) / np.sqrt(var + eps)).reshape(x.shape)
  return y * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)


@pytest.mark.parametrize("shape,groups", [((3, 5, 4, 12), 3), ((2, 7, 8), 4), ((4, 6), 2),
                                          ((2, 4, 4, 32), 32)])
def test_matches_float64_reference(shape, groups):
  rng = np.random.default_rng(0)
  # an offset mean: the two-pass variance must not lose it to cancellation
  x = (rng.standard_normal(shape) * 3.0 + 50.0).astype(np.float32)
  scale = rng.standard_normal(shape[-1]).astype(np.float32)
  bias = rng.standard_normal(shape[-1]).astype(np.float32)
  got = jax.jit(lambda x, s, b: group_normalize(x, s, b, groups=groups, epsilon=1e-5))(x, scale, bias)
  np.testing.assert_allclose(got, _reference(x, scale, bias, groups, 1e-5), atol=2e-5, rtol=1e-5)


def test_same_parameters_and_result_as_flax_and_torch():
  """Drop-in for flax.linen.GroupNorm(use_fast_variance=False): the same parameter tree, the same
  output for the same parameters, and torch.nn.GroupNorm's output and gradients."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((4, 6, 6, 16)).astype(np.float32)
  ours, theirs = GroupNorm(num_groups=4, epsilon=1e-6), nn.GroupNorm(
      num_groups=4, epsilon=1e-6, use_fast_variance=False)
  p = ours.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, p) == jax.tree.map(jnp.shape, theirs.init(jax.random.key(0), x))
  p = jax.tree.map(lambda v: v + jnp.asarray(rng.standard_normal(v.shape), v.dtype), p)
  np.testing.assert_allclose(ours.apply(p, x), theirs.apply(p, x), atol=1e-5)

  w = rng.standard_normal(x.shape).astype(np.float32)
  loss = lambda p, x: jnp.sum(jax.nn.silu(ours.apply(p, x)) * w)
  gp, gx = jax.grad(loss, argnums=(0, 1))(p, x)
  tnorm = torch.nn.GroupNorm(4, 16, eps=1e-6)
  with torch.no_grad():
    tnorm.weight.copy_(torch.from_numpy(np.asarray(p["params"]["scale"])))
    tnorm.bias.copy_(torch.from_numpy(np.asarray(p["params"]["bias"])))
  tx = torch.from_numpy(x).permute(0, 3, 1, 2).clone().requires_grad_()
  tw = torch.from_numpy(w).permute(0, 3, 1, 2)
  (torch.nn.functional.silu(tnorm(tx)) * tw).sum().backward()
  np.testing.assert_allclose(gx, tx.grad.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(gp["params"]["scale"], tnorm.weight.grad.numpy(), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(gp["params"]["bias"], tnorm.bias.grad.numpy(), atol=1e-4, rtol=1e-4)


def test_channels_not_divisible_names_the_values():
  with pytest.raises(ValueError, match="channels 10 not divisible by groups=4"):
    group_normalize(jnp.zeros((1, 2, 10)), jnp.ones(10), jnp.zeros(10), groups=4, epsilon=1e-5)
