"""UNet: timestep features, preset parameter counts, bfloat16, input checks, remat, dropout."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from diffusers.models.embeddings import get_timestep_embedding
from jax.sharding import PartitionSpec as P

from ldm_jax.convert import diffusers_unet
from ldm_jax.models import unet as unet_lib
from ldm_jax.models.embeddings import timestep_embedding

SD15_PARAMS = 859_520_964  # diffusers UNet2DConditionModel with the SD 1.5 config
# runwayml/stable-diffusion-v1-5 unet/config.json (options at their defaults left out).
SD15_CONFIG = dict(
    in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, attention_head_dim=8,
    cross_attention_dim=768, norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True,
    freq_shift=0, sample_size=64, act_fn="silu", downsample_padding=1, mid_block_scale_factor=1)


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("dim,flip,shift", [(32, True, 0), (33, False, 1), (8, True, 1)])
def test_timestep_embedding_matches_diffusers(dim, flip, shift):
  t = np.array([0.0, 1.0, 3.5, 250.25, 999.0], np.float32)
  ref = get_timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=flip,
                               downscale_freq_shift=shift).numpy()
  out = timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
  assert out.shape == (5, dim) and out.dtype == jnp.float32
  # t * w reaches ~1e3 rad: one float32 ulp of exp(.) (XLA vs torch) moves sin/cos by ~3e-5.
  np.testing.assert_allclose(out, ref, atol=1e-4)
  np.testing.assert_allclose(out[:3], ref[:3], atol=1e-6)


def test_sd1_preset_param_count_equals_diffusers():
  with torch.device("meta"):
    reference = UNet2DConditionModel(**SD15_CONFIG)
  assert sum(p.numel() for p in reference.parameters()) == SD15_PARAMS
  module = unet_lib.UNET_SD1()
  assert n_params(diffusers_unet.param_shapes(module)) == SD15_PARAMS  # eval_shape, no init
  config = diffusers_unet.unet_config_from_module(module)
  for key, value in SD15_CONFIG.items():
    if key != "sample_size":
      assert config[key] == value, key


@pytest.mark.parametrize("preset,cls,millions", [
    ("LDM_CELEBAHQ", UNet2DModel, 274),  # Rombach et al. 2022, tab. 14: CelebA-HQ LDM-4
    ("LDM_CIN_F8", UNet2DConditionModel, 395),  # tab. 13: ImageNet LDM-8 (+0.5M class table)
])
def test_ldm_preset_param_counts_equal_diffusers(preset, cls, millions):
  module = getattr(unet_lib, preset)()
  config = diffusers_unet.unet_config_from_module(module)
  assert config.pop("_class_name") == cls.__name__
  with torch.device("meta"):
    reference = cls(**config)
  count = n_params(diffusers_unet.param_shapes(module))
  assert count == sum(p.numel() for p in reference.parameters())
  assert round(count / 1e6) == millions


def random_params(shapes, seed):
  """numpy float32 params: kernels ~ N(0, 1/fan_in), norm scales 1 + 0.1 N, biases 0.1 N."""
  rng = np.random.default_rng(seed)

  def draw(path, s):
    r, leaf = rng.standard_normal(s.shape), path[-1].key
    r = {"bias": 0.1 * r, "scale": 1 + 0.1 * r}.get(leaf, r)
    return (r / np.sqrt(np.prod(s.shape[:-1])) if leaf == "kernel" else r).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def hybrid():
  """UNET_TINY_COND with a concatenated 2-channel map and context ("hybrid"), dropout 0.5.

  Returns (module, params, inputs, float32 eval-mode output).
  """
  module = unet_lib.UNET_TINY_COND(in_channels=6, dropout=0.5)
  params = random_params(diffusers_unet.param_shapes(module), seed=0)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 16, 16, 4)).astype(np.float32)
  c = rng.standard_normal((2, 16, 16, 2)).astype(np.float32)
  inputs = dict(x=unet_lib.concat_conditioning(x, c), t=np.array([10.0, 500.5], np.float32),
                context=rng.standard_normal((2, 5, 32)).astype(np.float32))
  return module, params, inputs, _run(module, params, inputs)


def _run(module, params, inputs, train=False, seed=0):
  f = lambda p, x, t, context, seed: module.apply(
      {"params": p}, x, t, context=context, train=train, rngs={"dropout": jax.random.key(seed)})
  return jax.jit(f)(params, **inputs, seed=seed)


def test_bfloat16_compute_close_to_float32(hybrid):
  module, params, inputs, ref = hybrid
  out = _run(module.clone(dtype=jnp.bfloat16), params, inputs)
  assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
  err = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
  assert 0 < err < 3e-2  # bfloat16 activations (8-bit mantissa), float32 params and softmax


def test_param_dtype_and_logical_axis_names():
  module = unet_lib.UNET_TINY_COND(param_dtype=jnp.bfloat16)
  x, t, c = jnp.zeros((1, 4, 4, 4)), jnp.zeros((1,)), jnp.zeros((1, 3, 32))
  boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), x, t, context=c))["params"]
  assert {v.dtype for v in jax.tree.leaves(nn.unbox(boxed))} == {jnp.dtype(jnp.bfloat16)}
  specs = nn.get_partition_spec(boxed)
  block = specs["down_blocks_1"]["attentions_0"]["transformer_blocks_0"]
  assert block["attn1"]["to_q"]["kernel"] == P("embed", "heads")
  assert block["attn2"]["to_k"]["kernel"] == P("kv", "heads")
  assert block["attn1"]["to_out_0"]["kernel"] == P("heads", "embed")
  assert block["ff"]["net_0"]["proj"]["kernel"] == P("embed", "mlp")
  assert block["ff"]["net_2"]["kernel"] == P("mlp", "embed")
  assert specs["time_embedding"]["linear_1"]["kernel"] == P("embed", "mlp")
  resnet = specs["down_blocks_1"]["resnets_0"]
  assert resnet["conv1"]["kernel"] == P(None, None, "conv_in", "conv_out")
  assert resnet["conv1"]["bias"] == P("conv_out")
  assert resnet["time_emb_proj"]["kernel"] == P("mlp", "conv_out")
  assert specs["down_blocks_1"]["attentions_0"]["proj_in"]["kernel"] == P(None, None, "conv_in", "conv_out")


def test_hybrid_remat_and_dropout(hybrid):
  """Concat + context runs; remat changes nothing; dropout draws from the "dropout" rng."""
  module, params, inputs, ref = hybrid
  assert ref.shape == (2, 16, 16, 4) and inputs["x"].shape == (2, 16, 16, 6)
  with pytest.raises(ValueError, match=r"\(2, 8, 8, 2\)"):
    unet_lib.concat_conditioning(inputs["x"], np.zeros((2, 8, 8, 2)))
  np.testing.assert_allclose(_run(module.clone(remat=True), params, inputs), ref, atol=1e-6)
  train = jax.jit(lambda p, seed: module.apply(
      {"params": p}, **inputs, train=True, rngs={"dropout": jax.random.key(seed)}))
  dropped = train(params, 0)
  assert float(jnp.abs(dropped - ref).max()) > 1e-3
  np.testing.assert_array_equal(train(params, 0), dropped)
  assert float(jnp.abs(train(params, 1) - dropped).max()) > 1e-3


@pytest.mark.parametrize("preset,x_shape,kw,match", [
    ("UNET_TINY", (2, 16, 16, 3), {}, r"\[B, H, W, 4\].*\(2, 16, 16, 3\)"),
    ("UNET_TINY", (2, 15, 16, 4), {}, r"divisible by 2\^\(levels-1\) = 2.*\(2, 15, 16, 4\)"),
    ("UNET_TINY", (2, 16, 16, 4), {"t": np.zeros(3)}, r"t: expected shape \[2\].*\(3,\)"),
    ("UNET_TINY_COND", (2, 16, 16, 4), {"context": np.zeros((2, 5, 16))},
     r"\(2, 'S', 32\).*\(2, 5, 16\)"),
    ("UNET_TINY_COND", (2, 16, 16, 4), {}, "context .* is required"),
    ("UNET_TINY", (2, 16, 16, 4), {"context": np.zeros((2, 5, 32))}, "no cross-attention"),
    ("UNET_TINY", (2, 16, 16, 4), {"y": np.zeros(2, np.int32)}, "not class-conditional"),
    ("UNET_TINY_CLASS", (2, 16, 16, 4), {}, r"int32 \[2\] required.*got None"),
    ("UNET_TINY_CLASS", (2, 16, 16, 4), {"y": np.zeros(3, np.int32)}, r"\[2\].*got \(3,\)"),
])
def test_bad_inputs_raise_before_running(preset, x_shape, kw, match):
  module = getattr(unet_lib, preset)()
  kw = dict(kw)
  t = kw.pop("t", np.zeros(x_shape[0], np.float32))
  with pytest.raises(ValueError, match=match):
    module.apply({"params": {}}, np.zeros(x_shape, np.float32), t, **kw)


def test_bad_config_raises():
  with pytest.raises(ValueError, match="UpBlock2D"):
    unet_lib.UNET_TINY(up_block_types=("AttnUpBlock2D",)).check_config()
  with pytest.raises(ValueError, match="valid"):
    unet_lib.UNET_TINY(down_block_types=("DownBlock2D", "Fancy")).check_config()
  with pytest.raises(ValueError, match="cross_attention_dim"):
    unet_lib.UNET_TINY_COND(cross_attention_dim=None).check_config()
  with pytest.raises(ValueError, match="cudnn"):
    unet_lib.UNET_TINY_COND(attention_impl="flash").check_config()


def test_class_context_embeds_labels_as_cross_attention_context():
  # LDM's ClassEmbedder (cin configs): y -> embed(y) [B, 1, D] is the context of every
  # cross-attention block; it equals passing that context to the same UNet without the table.
  module = unet_lib.UNET_TINY_COND(num_class_embeds=11, class_embed_type="context")
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 8, 8, 4)), jnp.float32)
  t, y = jnp.array([1.0, 10.0, 500.0]), jnp.array([0, 3, 10], jnp.int32)
  params = random_params(diffusers_unet.param_shapes(module), seed=0)
  table = params["class_context_embedding"]["embedding"]
  assert table.shape == (11, 32)
  run = jax.jit(lambda p, labels: module.apply({"params": p}, x, t, y=labels))
  out = run(params, y)
  plain = unet_lib.UNET_TINY_COND()
  rest = {k: v for k, v in params.items() if k != "class_context_embedding"}
  ref = jax.jit(lambda p, c: plain.apply({"params": p}, x, t, context=c))(rest, table[y][:, None, :])
  np.testing.assert_allclose(out, ref, atol=1e-6)
  other = run(params, jnp.array([1, 3, 10], jnp.int32))
  assert float(jnp.abs(other[0] - out[0]).max()) > 1e-4 and np.allclose(other[1:], out[1:], atol=1e-6)
  with pytest.raises(ValueError, match="builds its context from the class labels"):
    module.apply({"params": params}, x, t, y=y, context=jnp.zeros((3, 1, 32)))
  with pytest.raises(ValueError, match="needs cross-attention blocks"):
    unet_lib.UNET_TINY(num_class_embeds=11, class_embed_type="context").init(
        jax.random.key(0), x[..., :4], t, y=y)
  with pytest.raises(ValueError, match="'adm' not in .*'timestep', 'context'"):
    unet_lib.UNET_TINY_COND(num_class_embeds=11, class_embed_type="adm").init(
        jax.random.key(0), x, t, y=y, context=jnp.zeros((3, 1, 32)))
  with pytest.raises(ValueError, match="no diffusers UNet equivalent"):
    diffusers_unet.unet_config_from_module(module)


def test_attention_position_embedding_reaches_every_cross_attention_block():
  """"sincos_2d" changes the output of a cross-attention UNet (same params), is refused by the
  diffusers conversion, and an unknown value is named with the valid choices."""
  module = unet_lib.UNET_TINY_COND()
  placed = module.clone(attention_position_embedding="sincos_2d")
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, module.in_channels))
  t, ctx = jnp.array([10]), jax.random.normal(jax.random.key(1), (1, 3, module.cross_attention_dim))
  # jitted: one compile per network instead of one per operation (26 -> 11 s)
  params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(2), x, t, context=ctx)["params"])
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(3), a.shape), params)
  out = jax.jit(module.apply)({"params": params}, x, t, context=ctx)
  out_placed = jax.jit(placed.apply)({"params": params}, x, t, context=ctx)
  assert float(jnp.abs(out - out_placed).max()) > 1e-3
  with pytest.raises(ValueError, match="no diffusers UNet equivalent; valid for conversion: 'none'"):
    diffusers_unet.unet_config_from_module(placed)
  with pytest.raises(ValueError, match="valid choices: \\('none', 'sincos_2d'\\)"):
    module.clone(attention_position_embedding="learned").init(jax.random.key(2), x, t, context=ctx)
