"""The forward (noising) process q(x_t | x_0) and the validation of timestep indices."""

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.diffusion.parameterization import append_dims
from ldm_jax.schedules import Schedule


def check_timesteps(t, num_timesteps: int, batch_size: int | None = None) -> None:
  """Raises ValueError unless t is an integer array [B] with every value in [0, T-1].

  JAX clamps out-of-range gather indices silently (t = T would read alpha-bar_{T-1}), so the
  range is checked here whenever t is concrete. Under `jax.jit` t is a tracer whose values are
  unknown at trace time: then only dtype and shape are checked, and the caller is responsible
  for the range (t drawn with `jax.random.randint(key, shape, 0, T)` is always in range).
  """
  dtype = t.dtype if hasattr(t, "dtype") else np.asarray(t).dtype
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"Timesteps t must be an integer array (DDPM indices 0..T-1), got dtype {dtype}.")
  shape = tuple(np.shape(t))
  if len(shape) != 1 or (batch_size is not None and shape[0] != batch_size):
    expected = f"[{batch_size}]" if batch_size is not None else "[B]"
    raise ValueError(f"Timesteps t must have shape {expected}, got {list(shape)}.")
  try:
    t_host = np.asarray(t)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return  # Traced: values unknown at trace time (see docstring).
  bad = t_host[(t_host < 0) | (t_host >= num_timesteps)]
  if bad.size:
    raise ValueError(
        f"Timesteps must lie in [0, {num_timesteps - 1}] (T = {num_timesteps}), got {bad[:8].tolist()}.")


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Draws x_t ~ q(x_t | x_0): x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps (Ho et al. 2020, eq. 4).

  Args:
    schedule: the noise schedule (float32 tables [T]).
    x0: clean data [B, ...] (e.g. [B, H, W, C]).
    t: int32 [B], DDPM indices in [0, T-1] (checked when concrete, see `check_timesteps`).
    noise: eps ~ N(0, I), same shape as x0.
  Returns:
    x_t, shape of x0. Dtype policy: the arithmetic runs in float32 whatever the inputs' dtype (the
    schedule tables are never cast down); the result is cast to jnp.result_type(x0, noise), so
    bfloat16 data and noise give a bfloat16 x_t and float32 inputs give float32.
  """
  x0, noise = jnp.asarray(x0), jnp.asarray(noise)
  if x0.shape != noise.shape or x0.ndim < 1:
    raise ValueError(f"x0 and noise must have the same shape [B, ...], got {list(x0.shape)} and {list(noise.shape)}.")
  check_timesteps(t, schedule.num_timesteps, x0.shape[0])
  t = jnp.asarray(t)
  a = append_dims(schedule.alphas_cumprod.astype(jnp.float32)[t], x0.ndim)
  x_t = jnp.sqrt(a) * x0.astype(jnp.float32) + jnp.sqrt(1.0 - a) * noise.astype(jnp.float32)
  return x_t.astype(jnp.result_type(x0, noise))
