"""PatchGAN discriminator: architecture and numerics against a torch NLayerDiscriminator."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from ldm_jax.models.discriminator import PATCHGAN, PatchDiscriminator


def _torch_nlayer(input_nc, ndf, n_layers):
  """The taming-transformers NLayerDiscriminator layout, written out in torch."""
  layers = [tnn.Conv2d(input_nc, ndf, 4, 2, 1), tnn.LeakyReLU(0.2)]
  mult = 1
  for n in range(1, n_layers + 1):
    prev, mult = mult, min(2**n, 8)
    stride = 2 if n < n_layers else 1
    layers += [tnn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
               tnn.BatchNorm2d(ndf * mult), tnn.LeakyReLU(0.2)]
  layers += [tnn.Conv2d(ndf * mult, 1, 4, 1, 1)]
  return tnn.Sequential(*layers)


def test_param_count_matches_reference_70x70_patchgan():
  shapes = jax.eval_shape(PATCHGAN().init, jax.random.key(0), jnp.zeros((1, 256, 256, 3)))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert n == sum(p.numel() for p in _torch_nlayer(3, 64, 3).parameters())


@pytest.mark.parametrize("n_layers", [2, 3])
def test_outputs_match_torch_in_train_mode(n_layers):
  torch.manual_seed(0)
  ref = _torch_nlayer(3, 8, n_layers).train()
  module = PatchDiscriminator(base_channels=8, num_layers=n_layers)
  x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  params = nn.meta.unbox(module.init(jax.random.key(0), x)["params"])  # conv kernels are boxed
  convs = [m for m in ref if isinstance(m, tnn.Conv2d)]
  norms = [m for m in ref if isinstance(m, tnn.BatchNorm2d)]
  names = [f"conv_{i}" for i in range(n_layers + 1)] + ["conv_out"]
  new = {}
  for name, conv in zip(names, convs):
    new[name] = {"kernel": jnp.asarray(conv.weight.detach().numpy().transpose(2, 3, 1, 0))}
    if conv.bias is not None:
      new[name]["bias"] = jnp.asarray(conv.bias.detach().numpy())
  for i, bn in enumerate(norms, start=1):
    with torch.no_grad():
      bn.weight.normal_(1.0, 0.1)
      bn.bias.normal_(0.0, 0.1)
    new[f"norm_{i}"] = {"scale": jnp.asarray(bn.weight.detach().numpy()),
                        "bias": jnp.asarray(bn.bias.detach().numpy())}
  assert jax.tree.map(jnp.shape, new) == jax.tree.map(jnp.shape, params)
  ours = np.asarray(module.apply({"params": new}, x))
  with torch.no_grad():
    theirs = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_bad_norm_and_shape_raise():
  with pytest.raises(ValueError, match="valid choices"):
    PatchDiscriminator(norm="layer").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match=r"\(32, 32, 3\)"):
    PatchDiscriminator().init(jax.random.key(0), jnp.zeros((32, 32, 3)))
