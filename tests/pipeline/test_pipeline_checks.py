"""The pipeline's input checks on array contents: NaN / inf / out-of-range values raise a
ValueError naming the argument, the bad values and the accepted range; fine values pass."""

import numpy as np
import pytest

from ldm_jax.pipeline import checks

SHAPE = (4, 4, 1)


def _images(value, n=2):
  x = np.zeros((n,) + SHAPE, np.float32)
  x[0, 0, 0, 0] = value
  return x


@pytest.mark.parametrize("value,words", [
    (np.nan, "images: 1 value is NaN"), (np.inf, "1 value is +inf"), (-np.inf, "-inf"),
    (1.3, "outside [-1.25, 1.25] (min 1.3, max 1.3)"), (-200.0, "min -200")])
def test_bad_float_images(value, words):
  with pytest.raises(ValueError) as err:
    checks.images(_images(value), SHAPE)
  assert words in str(err.value)
  assert "expected uint8 in [0, 255] or float in [-1, 1]" in str(err.value)


def test_image_overshoot_within_margin_passes_unchanged():
  x = _images(1.0 + checks.IMAGE_MARGIN)
  x[1] = -1.2
  np.testing.assert_array_equal(checks.images(x, SHAPE), x)
  assert checks.images(np.full((1,) + SHAPE, 255, np.uint8), SHAPE).dtype == np.uint8


def test_noisy_images_named():
  with pytest.raises(ValueError, match="noisy_images: 1 value is NaN"):
    checks.images(_images(np.nan), SHAPE, name="noisy_images")


@pytest.mark.parametrize("value,words", [(np.nan, "1 value is NaN"), (1.5, "outside [0, 1]"),
                                         (-0.1, "outside [0, 1]")])
def test_bad_mask_values(value, words):
  m = np.zeros((2, 4, 4), np.float32)
  m[1, 2, 3] = value
  with pytest.raises(ValueError) as err:
    checks.mask(m, 2, 4, 4)
  assert str(err.value).startswith("mask: ") and words in str(err.value)
  assert "expected values in [0, 1]" in str(err.value)


def test_mask_bool_and_wrong_dtype():
  assert checks.mask(np.ones((4, 4), bool), 2, 4, 4).dtype == np.float32
  with pytest.raises(ValueError, match="mask must be bool or numbers"):
    checks.mask(np.full((4, 4), "a"), 2, 4, 4)


def test_latents_and_contexts_must_be_finite():
  z = np.zeros((2, 2, 2, 3), np.float32)
  z[1, 1, 1, 2] = np.inf
  with pytest.raises(ValueError, match=r"latents: 1 value is \+inf; expected finite"):
    checks.latents(z, (2, 2, 3))
  c = np.zeros((5, 8), np.float32)
  c[0, 0] = np.nan
  with pytest.raises(ValueError, match="null_context: 1 value is NaN"):
    checks.context(c, 2, 8, name="null_context")
  with pytest.raises(TypeError, match="context must be an array of numbers"):
    checks.context([["a"]], 2, 8)


@pytest.mark.parametrize("value", [np.nan, [1.0, np.inf], "2", [[1.0, 2.0]], [1.0, 2.0, 3.0]])
def test_bad_guidance(value):
  with pytest.raises((ValueError, TypeError), match="guidance_scale"):
    checks.guidance(value, 2)


@pytest.mark.parametrize("fn,value", [(checks.strength, np.nan), (checks.strength, "0.5"),
                                      (checks.strength, None), (checks.noise_level, np.inf),
                                      (checks.noise_level, "a"), (lambda v: checks.eta(v, "ddim"), np.nan),
                                      (lambda v: checks.eta(v, "ddim"), [0.1])])
def test_bad_scalars_name_the_argument(fn, value):
  with pytest.raises(ValueError, match="strength|noise_level|eta"):
    fn(value)
