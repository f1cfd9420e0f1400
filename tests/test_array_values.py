"""Array contents checks: messages name the argument, count NaN / inf / out-of-range values, and
tracers pass unchecked."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldm_jax import array_values


def test_message_counts_each_kind_of_bad_value():
  x = np.array([0.0, np.nan, np.nan, np.inf, -np.inf, 3.0, -7.0, 0.5])
  with pytest.raises(ValueError) as err:
    array_values.check_values(x, "images", lo=-1, hi=1, expected="float in [-1, 1]")
  assert str(err.value) == ("images: 2 values are NaN, 1 value is +inf, 1 value is -inf, 2 values "
                            "lie outside [-1, 1] (min -7, max 3); expected float in [-1, 1].")


def test_open_ends_and_good_values():
  array_values.check_values(np.array([0.5, 1.0]), "betas", lo=0, hi=1, lo_open=True, expected="x")
  with pytest.raises(ValueError, match=r"betas: 1 value lies outside \(0, 1\] \(min 0, max 0\)"):
    array_values.check_values(np.array([0.0, 1.0]), "betas", lo=0, hi=1, lo_open=True, expected="x")
  array_values.check_values(np.array(["a"]), "s", expected="x")  # non-numeric: the caller's job


def test_tracers_are_skipped():
  def f(x):
    array_values.check_values(x, "x", lo=0, hi=1, expected="x")
    return x
  assert jnp.isnan(jax.jit(f)(jnp.float32(np.nan)))
  with pytest.raises(ValueError, match="x: 1 value is NaN"):
    f(jnp.float32(np.nan))
