"""ldm_jax.models.precision: config strings -> dtypes, remat policies, attention kernels; remat keeps
gradients; "cudnn" off a GPU is a clear error before anything reaches XLA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import mnist_autoencoder, mnist_ldm, paper_autoencoder, paper_ldm
from ldm_jax.models import autoencoder, precision, unet
from ldm_jax.stages import builders


def test_strings_resolve_and_bad_values_list_the_choices():
  assert precision.dtype("bfloat16") is jnp.bfloat16 and precision.dtype(jnp.float16) is jnp.float16
  assert precision.remat_name(True) == "full" and precision.remat_name(False) == "none"
  for call, bad, choices in [(precision.dtype, "float64", "float32, bfloat16, float16"),
                             (precision.remat_name, "some", "none, full, dots, dots_no_batch"),
                             (precision.attention_impl, "flash", "xla, cudnn")]:
    with pytest.raises(ValueError, match=f"'{bad}'; valid choices: {choices}"):
      call(bad)


def test_every_model_section_of_every_config_carries_the_precision_keys():
  configs = [mnist_autoencoder.get_config(), mnist_ldm.get_config()]
  configs += [paper_ldm.get_config(v) for v in paper_ldm.VARIANTS]
  configs += [paper_autoencoder.get_config(v) for v in paper_autoencoder.VARIANTS]
  for c in configs:
    sections = [c.model] + ([c.disc] if c.stage == "autoencoder" else [])
    for s in sections:
      assert {k: s[k] for k in precision.PRECISION_KEYS} == precision.DEFAULTS


def test_builders_apply_the_config_strings():
  c = mnist_ldm.get_config()
  c.model.dtype, c.model.remat = "bfloat16", "dots"
  net = builders.unet(c.model, in_channels=3, num_class_embeds=11)
  assert net.dtype is jnp.bfloat16 and net.param_dtype is jnp.float32 and net.remat == "dots"
  a = mnist_autoencoder.get_config()
  a.model.param_dtype, a.disc.dtype = "bfloat16", "float16"
  assert builders.autoencoder(a.model).param_dtype is jnp.bfloat16
  assert builders.discriminator(a.disc).dtype is jnp.float16
  a.model.dtype = "half"
  with pytest.raises(ValueError, match="dtype='half'; valid choices"):
    builders.autoencoder(a.model)


def _grads(module, params, *args, **kw):
  def loss(p):
    out = module.apply({"params": p}, *args, **kw)
    return jnp.sum(jnp.square(out[0] if isinstance(out, tuple) else out))
  return jax.jit(jax.grad(loss))(params)


def _assert_same(got, ref):
  # Recomputation only reorders float32 sums: equal to 1e-6 of the gradient's scale (leaves whose
  # true gradient is 0, e.g. a bias before a norm, hold rounding noise ~1e-7 and no signal).
  scale = max(float(np.max(np.abs(r))) for r in jax.tree.leaves(ref))
  for r, g in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    assert float(np.max(np.abs(g - r))) <= 1e-6 * scale


def test_remat_gives_the_same_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  t, y = jnp.array([10.0, 500.0]), jnp.array([1, 7])
  net = unet.UNET_TINY_CLASS(in_channels=3, out_channels=3)
  params = jax.jit(lambda r: net.init(r, x, t, y=y))(jax.random.key(1))["params"]  # eager init: slow
  ref = _grads(net, params, x, t, y=y)
  _assert_same(_grads(net.clone(remat="dots"), params, x, t, y=y), ref)
  ae = autoencoder.AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, z_channels=2, norm_groups=4)
  ae_params = jax.jit(ae.init)(jax.random.key(2), x)["params"]
  _assert_same(_grads(ae.clone(remat="full"), ae_params, x), _grads(ae, ae_params, x))


def test_cudnn_attention_on_a_cpu_host_is_a_clear_error_naming_the_backend():
  x = jnp.zeros((1, 16, 16, 3))
  with pytest.raises(ValueError, match="needs an NVIDIA GPU; this process's JAX backend is 'cpu'"):
    unet.UNET_TINY(in_channels=3, out_channels=3, attention_impl="cudnn").init(jax.random.key(0), x, jnp.zeros((1,)))
  with pytest.raises(ValueError, match="backend is 'cpu'"):
    autoencoder.KL_TINY(in_channels=3, out_channels=3, attention_impl="cudnn").init(jax.random.key(0), x)
  c = mnist_ldm.get_config()
  c.model.attention_impl = "cudnn"
  with pytest.raises(ValueError, match="backend is 'cpu'"):
    builders.unet(c.model, in_channels=3, num_class_embeds=None)
