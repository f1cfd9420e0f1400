"""pmap and mesh (data, data+fsdp) on 8 simulated devices match one device on the same batch."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import train_tiny
from ldm_jax import xla_cpu
from ldm_jax.train import parallel

NUM_STEPS, BATCH = 4, 16


def _train(mode, num_fsdp=1, num_devices=None, compiler_options=None):
  dp = train_tiny.data_parallel(mode, num_fsdp, num_devices, compiler_options=compiler_options)
  state = dp.create_state(train_tiny.init_params, jax.random.key(0))
  losses = []
  for i in range(NUM_STEPS):
    state, m = dp.step(state, dp.put_batch(train_tiny.make_batch(i, BATCH)))
    losses.append(dp.fetch_metrics(m)["loss"])
  return dp.to_global(state), losses


@pytest.fixture(scope="module")
def reference():
  return _train("mesh", num_devices=1)


@pytest.mark.parametrize("mode,num_fsdp", [("pmap", 1), ("mesh", 1), ("mesh", 2), ("mesh", 8)])
def test_eight_devices_match_one(reference, mode, num_fsdp):
  assert jax.device_count() == 8
  ref, ref_losses = reference
  got, losses = _train(mode, num_fsdp)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for name in ("params", "ema_params", "opt_state"):
    for a, b in zip(jax.tree.leaves(getattr(got, name)), jax.tree.leaves(getattr(ref, name))):
      a, b = np.asarray(a), np.asarray(b)
      assert np.max(np.abs(a - b)) <= 1e-5 * max(np.max(np.abs(b)), 1e-12), name
  assert int(got.step) == NUM_STEPS
  kernel = got.params["conv_down"]["kernel"]  # [3, 3, 4, 8]
  want = P(None, None, None, "fsdp") if num_fsdp > 1 and mode == "mesh" else P()
  assert kernel.sharding.spec == want
  if num_fsdp == 8:  # Adam moments are sharded like the params
    mu = got.opt_state[1][0].mu["conv_down"]["kernel"]
    assert mu.sharding.spec == want


@pytest.mark.parametrize("mode", parallel.MODES)
def test_compiler_options_reach_the_step_and_keep_its_numbers(reference, mode):
  """Single-threaded Eigen convolutions (the autoencoder stage's CPU choice) change the program,
  not the result; an option XLA rejects fails the step, so the options reach the compile."""
  ref, ref_losses = reference
  got, losses = _train(mode, compiler_options=tuple(xla_cpu.OPTIONS["eigen_1thread"].items()))
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(ref.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  bad = (("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_NONSENSE"),)
  with pytest.raises(Exception, match="xla_cpu_experimental_ynn_fusion_type"):
    _train(mode, compiler_options=bad)


def test_bad_inputs_raise_value_errors():
  with pytest.raises(ValueError, match="pmap"):
    parallel.data_parallel(train_tiny.make_loss(), None, mode="shard_map")
  with pytest.raises(ValueError, match=r"valid choices: \('pmap', 'mesh'\)"):
    parallel.data_parallel(train_tiny.make_loss(), None, mode="shard_map")
  with pytest.raises(ValueError, match="num_fsdp=3"):
    parallel.make_mesh(3)
  with pytest.raises(ValueError, match="multiple of the 8 local devices"):
    parallel.global_batch(train_tiny.make_batch(0, 12), parallel.make_mesh())
