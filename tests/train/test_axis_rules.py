"""Logical axis names drive the mesh layout: rule priority, divisibility and the size fallback;
the models' kernels carry names; on 8 devices the state lands where the rules say and trains
like one device."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from ldm_jax.models import autoencoder, bert_text, clip_text, discriminator, resnet, unet
from ldm_jax.models.embeddings import logical_dense
from ldm_jax.train import axis_rules, parallel

MESH = {"data": 2, "fsdp": 4}
CONV = resnet.CONV_AXES


def test_rules_apply_in_priority_order():
  names = ("embed", "mlp")
  assert axis_rules.mesh_spec((16, 32), names, (("embed", "fsdp"), ("mlp", "fsdp")), MESH) == P("fsdp", None)
  assert axis_rules.mesh_spec((16, 32), names, (("mlp", "fsdp"), ("embed", "fsdp")), MESH) == P(None, "fsdp")
  # Two mesh axes on one array, one per dimension; a repeated name takes the first free dimension.
  both = (("embed", "data"), ("mlp", "fsdp"))
  assert axis_rules.mesh_spec((16, 32), names, both, MESH) == P("data", "fsdp")
  twice = (("mlp", "fsdp"), ("mlp", "data"))
  assert axis_rules.mesh_spec((8, 8), ("mlp", "mlp"), twice, MESH) == P("fsdp", "data")
  # Each mesh axis at most once per array: the second "fsdp" rule finds it taken.
  assert axis_rules.mesh_spec((8, 8), ("mlp", "mlp"), (("mlp", "fsdp"),), MESH) == P("fsdp", None)
  assert axis_rules.mesh_spec((8, 8), names, (("embed", "fsdp"), ("mlp", "fsdp")), MESH) == P("fsdp", None)
  # A conv kernel: the rules, not the size rule (which would take the larger C_in = 16), decide.
  conv_rules = (("conv_out", "fsdp"), ("conv_in", "fsdp"))
  assert axis_rules.mesh_spec((3, 3, 16, 8), CONV, conv_rules, MESH) == P(None, None, None, "fsdp")
  assert axis_rules.fsdp_spec((3, 3, 16, 8), 4) == P(None, None, "fsdp", None)


def test_divisibility_and_the_size_fallback():
  rules = (("embed", "fsdp"), ("mlp", "fsdp"))
  # embed (6) does not divide by fsdp = 4: the next rule shards mlp.
  assert axis_rules.mesh_spec((6, 32), ("embed", "mlp"), rules, MESH) == P(None, "fsdp")
  # conv_out (6) does not divide, conv_in (8) does.
  conv_rules = (("conv_out", "fsdp"), ("conv_in", "fsdp"))
  assert axis_rules.mesh_spec((3, 3, 8, 6), CONV, conv_rules, MESH) == P(None, None, "fsdp", None)
  # No rule can shard a named dimension: the size rule takes the largest divisible one.
  assert axis_rules.mesh_spec((8, 6), (None, "embed"), rules, MESH) == P("fsdp", None)
  assert axis_rules.mesh_spec((16, 8), ("vocab", "heads"), rules, MESH) == P("fsdp", None)
  # Unnamed: the size rule; nothing divides: replicated.
  assert axis_rules.mesh_spec((3, 3, 4, 8), None, rules, MESH) == P(None, None, None, "fsdp")
  assert axis_rules.mesh_spec((3, 5), None, rules, MESH) == P()
  assert axis_rules.mesh_spec((), None, rules, MESH) == P()
  # Empty rules: the size rule for everything; axes of size 1 shard nothing.
  assert axis_rules.mesh_spec((16, 32), ("embed", "mlp"), (), MESH) == P(None, "fsdp")
  assert axis_rules.mesh_spec((16, 32), ("embed", "mlp"), rules, {"data": 8, "fsdp": 1}) == P()
  with pytest.raises(ValueError, match=r"names \('embed',\) do not match the array shape \(4, 4\)"):
    axis_rules.mesh_spec((4, 4), ("embed",), rules, MESH)


def test_fsdp_spec_rule():
  assert axis_rules.fsdp_spec((3, 3, 4, 8), 4) == P(None, None, None, "fsdp")
  assert axis_rules.fsdp_spec((16, 8), 8) == P("fsdp", None)
  assert axis_rules.fsdp_spec((8, 8), 4) == P("fsdp", None)  # a tie: the first
  assert axis_rules.fsdp_spec((3, 5), 2) == P()       # nothing divides: replicated
  assert axis_rules.fsdp_spec((), 2) == P()
  assert axis_rules.fsdp_spec((64, 64), 1) == P()
  assert parallel.fsdp_spec is axis_rules.fsdp_spec  # still importable from parallel


@pytest.mark.parametrize("rules,words", [
    ((("embed", "tensor"),), "entry 0 ('embed', 'tensor'): unknown mesh axis 'tensor'; valid mesh axes: data, fsdp."),
    ((("embed", "fsdp"), ("emb", "fsdp")), "entry 1 ('emb', 'fsdp'): unknown logical axis 'emb'; valid logical axes: conv_in, conv_out"),
    ((("embed", "fsdp", "data"),), "entry 0 ('embed', 'fsdp', 'data'): expected a (logical axis name, mesh axis) pair"),
    (("embed",), "entry 0 'embed': expected a (logical axis name, mesh axis) pair, e.g. (('embed', 'fsdp'), ('mlp', 'fsdp'))"),
    ((("embed", None),), "unknown mesh axis None"),
    ("embed", "axis_rules='embed': expected a sequence of (logical axis name, mesh axis) pairs"),
    (None, "axis_rules=None: expected a sequence"),
])
def test_check_rules_names_the_bad_entry_and_the_valid_choices(rules, words):
  with pytest.raises(ValueError) as err:
    axis_rules.check_rules(rules)
  assert words in str(err.value), str(err.value)


def test_check_rules_accepts_the_defaults_and_json_lists():
  assert axis_rules.check_rules(axis_rules.DEFAULT_RULES) == axis_rules.DEFAULT_RULES
  assert axis_rules.check_rules([["embed", "data"], ["mlp", "fsdp"]]) == (("embed", "data"), ("mlp", "fsdp"))
  assert axis_rules.check_rules(()) == ()
  assert {axis for _, axis in axis_rules.DEFAULT_RULES} == {"fsdp"}
  assert {name for name, _ in axis_rules.DEFAULT_RULES} == set(axis_rules.LOGICAL_AXES)


def _names(module, *args, **kwargs):
  boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))["params"]
  names = axis_rules.logical_names(boxed)
  shapes = nn.meta.unbox(boxed)
  return (axis_rules.names_by_path(names),
          {axis_rules.path_keys(p): x.shape for p, x in jax.tree_util.tree_flatten_with_path(shapes)[0]})


def _models():
  x4, t = jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,))
  img = jnp.zeros((1, 16, 16, 3))
  ids = jnp.zeros((1, 8), jnp.int32)
  return {
      "unet_cond": _names(unet.UNET_TINY_COND(), x4, t, context=jnp.zeros((1, 3, 32))),
      "unet_class": _names(unet.UNET_TINY_CLASS(), x4, t, y=jnp.zeros((1,), jnp.int32)),
      "unet_class_context": _names(unet.UNET_TINY_COND(num_class_embeds=10, class_embed_type="context"),
                                   x4, t, y=jnp.zeros((1,), jnp.int32)),
      "kl": _names(autoencoder.KL_TINY(), img), "vq": _names(autoencoder.VQ_TINY(), img),
      "disc": _names(discriminator.PATCHGAN_TINY(), jnp.zeros((1, 32, 32, 3))),
      "clip": _names(clip_text.CLIP_TEXT_TINY(), ids), "bert": _names(bert_text.BERT_TINY(), ids),
  }


@pytest.fixture(scope="module")
def models():
  return _models()


def test_unet_autoencoder_and_discriminator_kernels_carry_names(models):
  for model, (names, shapes) in models.items():
    kernels = [p for p in shapes if p[-1] in ("kernel", "embedding")]
    assert kernels, model
    for p in kernels:
      assert names[p] is not None and len(names[p]) == len(shapes[p]), (model, p)
      if len(shapes[p]) == 4:  # every conv kernel
        assert names[p] == CONV, (model, p)
        bias = p[:-1] + ("bias",)
        assert bias not in names or names[bias] == ("conv_out",), (model, bias)
  unet_names = models["unet_class"][0]
  assert unet_names[("conv_in", "kernel")] == CONV
  assert unet_names[("down_blocks_0", "resnets_0", "time_emb_proj", "kernel")] == ("mlp", "conv_out")
  assert unet_names[("down_blocks_0", "resnets_0", "norm1", "scale")] is None  # norms unnamed
  kl = models["kl"][0]
  assert kl[("decoder", "conv_out", "kernel")] == CONV and kl[("quant_conv", "bias")] == ("conv_out",)
  assert models["disc"][0][("conv_0", "kernel")] == CONV
  # Every name the models use has a rule (LOGICAL_AXES is the models' vocabulary, not stale).
  used = {n for names, _ in models.values() for v in names.values() if v for n in v if n}
  assert used == set(axis_rules.LOGICAL_AXES)


def test_default_rules_shard_the_tiny_unet_by_name(models):
  names, shapes = models["unet_cond"]
  fell_back = []
  for p, shape in shapes.items():
    spec = axis_rules.mesh_spec(shape, names[p], axis_rules.DEFAULT_RULES, {"data": 1, "fsdp": 8})
    if names[p] is not None:
      if not any(n is not None and s == "fsdp" for n, s in zip(names[p], spec)):
        fell_back.append((p, spec))
  # The tiny UNet's widths (32, 64, inner 32) divide by 8: every named array but the output
  # conv's bias (4 channels: replicated by the size fallback) shards a named dimension.
  assert fell_back == [(("conv_out", "bias"), P())], fell_back


# A tiny network of the models' own layers: named convs (resnet.conv, a ResnetBlock with its
# time_emb_proj) and a named dense head; GroupNorm scales stay unnamed.
class _Net(nn.Module):

  @nn.compact
  def __call__(self, x, temb):
    kw = dict(dtype=jnp.float32, param_dtype=jnp.float32)
    h = resnet.conv(8, 3, name="conv_in", **kw)(x)                                   # [3, 3, 1, 8]
    h = resnet.ResnetBlock(16, temb_channels=8, groups=4, name="block", **kw)(h, temb)  # 8 -> 16
    h = resnet.conv(8, 3, name="conv_out", **kw)(nn.silu(h))                          # [3, 3, 16, 8]
    return logical_dense(4, ("embed", "mlp"), name="head", **kw)(jnp.mean(h, axis=(1, 2)))


def _init(rng):
  return _Net().init(rng, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8)))["params"]


def _loss(params, batch, rng, extra):
  del rng, extra
  pred = _Net().apply({"params": params}, batch["x"], batch["temb"])
  loss = jnp.mean((pred - batch["y"]) ** 2)
  return loss, {}


def _batch(i, n=8):
  r = np.random.default_rng([7, i])
  return {"x": r.normal(size=(n, 8, 8, 1)).astype(np.float32),
          "temb": r.normal(size=(n, 8)).astype(np.float32),
          "y": r.normal(size=(n, 4)).astype(np.float32)}


def _data_parallel(tx, num_fsdp, devices, rules, extra_names=None):
  names = axis_rules.logical_names(jax.eval_shape(_init, jax.random.key(0)))
  return parallel.data_parallel(_loss, tx, mode="mesh", mesh=parallel.make_mesh(num_fsdp, devices),
                                ema_decay=0.9, param_names=names, extra_names=extra_names,
                                rules=rules)


def _create(dp, extra=None):
  return dp.create_state(lambda r: nn.meta.unbox(_init(r)), jax.random.key(0), extra=extra)


def _mirrors(tree, param_path):
  """The leaves of `tree` (an opt_state) whose key path ends with `param_path`."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [x for p, x in flat if axis_rules.path_keys(p)[-len(param_path):] == param_path]


# (param path, spec) under RULES on the 2 x 4 mesh (data x fsdp).
RULES = (("conv_in", "data"), ("conv_out", "fsdp"), ("mlp", "fsdp"), ("embed", "fsdp"))
WANT = {
    ("conv_in", "kernel"): P(None, None, None, "fsdp"),          # C_in = 1 does not divide by 2
    ("conv_out", "kernel"): P(None, None, "data", "fsdp"),       # [3, 3, 16, 8]
    ("block", "conv1", "kernel"): P(None, None, "data", "fsdp"),
    ("block", "time_emb_proj", "kernel"): P(None, "fsdp"),       # ("mlp", "conv_out"): [8, 16]
    ("head", "kernel"): P(None, "fsdp"),                         # ("embed", "mlp") [16, 4]: mlp first
    ("conv_out", "bias"): P("fsdp"),
    ("block", "norm1", "scale"): P("fsdp"),                      # unnamed [8]: the size rule
}


def _assert_layout(state, want):
  for path, spec in want.items():
    param = state.params
    for k in path:
      param = param[k]
    assert param.sharding.spec == spec, (path, param.sharding.spec, spec)
    ema = state.ema_params
    for k in path:
      ema = ema[k]
    assert ema.sharding.spec == spec, ("ema", path)
    moments = _mirrors(state.opt_state, path)
    assert moments, path
    for m in moments:
      assert m.sharding.spec == spec, ("opt_state", path, m.sharding.spec, spec)


def test_eight_devices_state_lands_where_the_rules_say():
  assert jax.device_count() == 8
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  frozen = {"frozen": _init(jax.random.key(1)), "table": jnp.zeros((16, 6))}  # boxed, and unnamed
  dp = _data_parallel(tx, 4, None, RULES, extra_names=axis_rules.logical_names(frozen))
  state = _create(dp, extra=nn.meta.unbox(frozen))
  _assert_layout(state, WANT)
  # Extra collections (a frozen network) shard by their own names; unnamed ones by size.
  assert state.extra["frozen"]["conv_out"]["kernel"].sharding.spec == P(None, None, "data", "fsdp")
  assert state.extra["frozen"]["head"]["kernel"].sharding.spec == P(None, "fsdp")
  assert state.extra["table"].sharding.spec == P("fsdp", None)
  assert len(_mirrors(state.opt_state, ("conv_out", "kernel"))) == 2  # Adam's mu and nu
  # The default rules: the head's "embed" dimension comes first.
  state = _create(_data_parallel(tx, 4, None, axis_rules.DEFAULT_RULES))
  assert state.params["head"]["kernel"].sharding.spec == P("fsdp", None)
  assert state.params["conv_out"]["kernel"].sharding.spec == P(None, None, None, "fsdp")
  assert state.opt_state[1][0].mu["conv_out"]["kernel"].sharding.spec == P(None, None, None, "fsdp")


def test_training_on_the_rule_layout_equals_one_device():
  # SGD with momentum: Adam's normalisation would turn float32 reassociation noise in near-zero
  # gradients into learning-rate-sized differences.
  tx = optax.sgd(0.05, momentum=0.9)
  runs = {}
  for label, num_fsdp, devices in (("one", 1, jax.devices()[:1]), ("mesh", 4, None)):
    dp = _data_parallel(tx, num_fsdp, devices, RULES)
    state = _create(dp)
    for i in range(3):
      state, _ = dp.step(state, dp.put_batch(_batch(i)))
    runs[label] = state
  _assert_layout(runs["mesh"], WANT)  # the momentum (trace) mirrors each param's layout
  for field in ("params", "ema_params", "opt_state"):
    got, ref = jax.tree.leaves(getattr(runs["mesh"], field)), jax.tree.leaves(getattr(runs["one"], field))
    assert len(got) == len(ref) > 0
    for a, b in zip(got, ref):
      a, b = np.asarray(a), np.asarray(b)
      assert np.max(np.abs(a - b)) <= 1e-5 * max(np.max(np.abs(b)), 1e-12), field
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                       runs["one"].params, nn.meta.unbox(_init(jax.random.key(0)))))
  assert max(moved) > 1e-3  # three steps really trained
