"""Tests for ldm_jax.convert.torch_layout: key naming and tensor layouts against torch modules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ldm_jax.convert import torch_layout


def test_key_rules():
  assert torch_layout.torch_module_to_flax("down_blocks.0.resnets.1.conv1") == (
      "down_blocks_0", "resnets_1", "conv1")
  assert torch_layout.torch_module_to_flax("ff.net.0.proj") == ("ff", "net_0", "proj")
  to_torch = torch_layout.flax_module_to_torch
  assert to_torch(("time_embedding", "linear_1")) == "time_embedding.linear_1"
  assert torch_layout.flax_module_to_torch(("attentions_0", "to_out_0")) == "attentions.0.to_out.0"
  assert torch_layout.flax_module_to_torch(("a_1",), keep={"a_1"}) == "a_1"


def _diffusers_models():
  from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel, VQModel
  torch.manual_seed(0)
  return [
      AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4),
      VQModel(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
              up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, num_vq_embeddings=8),
      UNet2DConditionModel(
          block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=8,
          attention_head_dim=4, norm_num_groups=4, class_embed_type="timestep",
          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
      UNet2DModel(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), num_class_embeds=3),
  ]


def test_every_diffusers_key_round_trips():
  """torch key -> Flax path -> torch key is the identity on real diffusers state dicts."""
  for model in _diffusers_models():
    for key in model.state_dict():
      module, _, leaf = key.rpartition(".")
      back = torch_layout.flax_module_to_torch(torch_layout.torch_module_to_flax(module))
      assert f"{back}.{leaf}" == key, (type(model).__name__, key)


class TorchNet(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.conv_in = torch.nn.Conv2d(3, 6, 3, padding=1)
    self.blocks = torch.nn.ModuleList([torch.nn.GroupNorm(2, 6, eps=1e-5),
                                       torch.nn.Conv2d(6, 4, 1)])
    self.linear_1 = torch.nn.Linear(4, 5)
    self.embed = torch.nn.Embedding(7, 5)

  def forward(self, x, labels):  # x NCHW
    h = self.blocks[1](self.blocks[0](self.conv_in(x)))
    return self.linear_1(h.permute(0, 2, 3, 1)) + self.embed(labels)[:, None, None, :]


class FlaxNet(nn.Module):
  @nn.compact
  def __call__(self, x, labels):  # x NHWC
    h = nn.Conv(6, (3, 3), padding=1, name="conv_in")(x)
    h = nn.GroupNorm(num_groups=2, epsilon=1e-5, use_fast_variance=False, name="blocks_0")(h)
    h = nn.Conv(4, (1, 1), name="blocks_1")(h)
    return nn.Dense(5, name="linear_1")(h) + nn.Embed(7, 5, name="embed")(labels)[:, None, None, :]


@pytest.fixture(scope="module")
def torch_net():
  torch.manual_seed(0)
  net = TorchNet()
  with torch.no_grad():
    net.blocks[0].weight.add_(torch.randn(6))
    net.blocks[0].bias.add_(torch.randn(6))
  return net, {k: v.numpy() for k, v in net.state_dict().items()}


def _target(x, labels):
  return jax.eval_shape(FlaxNet().init, jax.random.key(0), x, labels)["params"]


def test_layouts_match_torch_forward(torch_net):
  net, sd = torch_net
  x = np.random.RandomState(0).randn(2, 3, 5, 5).astype(np.float32)
  labels = np.array([1, 6])
  params = torch_layout.torch_to_flax(sd, _target(x.transpose(0, 2, 3, 1), labels))
  ours = FlaxNet().apply({"params": params}, x.transpose(0, 2, 3, 1), labels)
  with torch.no_grad():
    ref = net(torch.from_numpy(x), torch.from_numpy(labels)).numpy()
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  # and back: flax -> torch reproduces the state dict exactly
  back = torch_layout.flax_to_torch(params)
  assert back.keys() == sd.keys()
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k])


def test_torch_1x1_conv_loads_into_dense():
  conv = np.random.RandomState(0).randn(5, 4, 1, 1).astype(np.float32)
  target = {"proj": {"kernel": jax.ShapeDtypeStruct((4, 5), jnp.float32)}}
  out = torch_layout.torch_to_flax({"proj.weight": conv}, target)
  np.testing.assert_array_equal(out["proj"]["kernel"], conv[:, :, 0, 0].T)


def test_mismatch_error_lists_everything(torch_net):
  _, sd = torch_net
  bad = dict(sd)
  del bad["linear_1.bias"]
  bad["extra.weight"] = np.zeros(3, np.float32)
  bad["conv_in.weight"] = np.zeros((6, 3, 5, 5), np.float32)
  target = _target(jnp.zeros((1, 5, 5, 3)), jnp.zeros((1,), jnp.int32))
  with pytest.raises(ValueError) as info:
    torch_layout.torch_to_flax(bad, target)
  msg = str(info.value)
  assert "missing keys (1): linear_1.bias" in msg
  assert "unexpected keys (1): extra.weight" in msg
  assert "conv_in.weight: torch (6, 3, 5, 5)" in msg and "expected (3, 3, 3, 6)" in msg
  # ignored keys are allowed to stay unused
  ok = dict(sd, **{"extra.num_batches_tracked": np.zeros(())})
  torch_layout.torch_to_flax(ok, target, ignore=(r"num_batches_tracked$",))


def test_flax_to_torch_rejects_colliding_names():
  params = {"a_1": {"bias": np.zeros(2)}, "a": {"1": {"bias": np.zeros(2)}}}
  with pytest.raises(ValueError, match="both map to torch key 'a.1.bias'"):
    torch_layout.flax_to_torch(params)
