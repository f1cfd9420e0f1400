"""The pipeline's sampling loop: any sampler of `ldm_jax.samplers` from a *traced* start step.

`ldm_jax.samplers.sample` takes its start step as a Python int (one program per start step). The
pipeline needs img2img strength and restoration noise levels as traced values, so this driver
scans over all S grid steps and skips the steps before `start` with `lax.cond` (a skipped step
costs no model evaluation). It reuses the samplers' per-step tables and step functions, and adds:

  * per-sample noise: sample b draws from fold_in(key_b, purpose) so results do not depend on how a
    batch is split into chunks or sharded across devices;
  * inpainting: after every step the known region is replaced by q(x_t | x0_known) at the level of
    the next step (Rombach et al. 2022 sec. 4.5; the same rule as the samplers' `known=`), and
    RePaint resampling (Lugmayr et al. 2022, Alg. 1): each step is repeated `resample` times, going
    back by the forward transition q(x_before | x_after) in between;
  * the first executed step of DPM-Solver++(2M) is first order (no history), as in diffusers'
    img2img (`lower_order_nums` restarts at 0).
"""

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax import samplers
from ldm_jax.diffusion.parameterization import model_output_to_x0_eps

# fold_in purposes of the per-sample keys.
STEP_NOISE, KNOWN_NOISE, RESAMPLE_NOISE = 1, 2, 3


def per_sample_normal(keys, shape, *path):
  """[B] keys -> float32 [B, *shape], sample b from fold_in(fold_in(keys[b], path[0]), path[1])..."""
  def one(k):
    for p in path:
      k = jax.random.fold_in(k, p)
    return jax.random.normal(k, shape, jnp.float32)
  return jax.vmap(one)(keys)


def levels(tables):
  """Host float32 (alpha, sigma, scale) [S + 1]: the VP level of the state before step i, and at
  i = S the level of the returned sample (the sampler state is scale * (alpha x0 + sigma eps))."""
  xs = tables.xs
  alpha = np.append(np.asarray(xs["alpha"], np.float64), tables.final_alpha)
  sigma = np.append(np.asarray(xs["sigma"], np.float64), tables.final_sigma)
  scale = np.append(np.asarray(xs["scale"], np.float64), 1.0)
  return alpha.astype(np.float32), sigma.astype(np.float32), scale.astype(np.float32)


def initial_state(tables, z0, noise, start, noise_weight):
  """Sampler state at grid step `start` (traced int32 scalar).

  start = 0 with noise_weight > 0: pure noise init_scale * noise (img2img at strength 1 ignores z0);
  otherwise scale_s (alpha_s z0 + noise_weight sigma_s noise): img2img / SDEdit (weight 1), or an
  input that already carries its own noise (restoration, weight 0). start = S returns z0.
  """
  alpha, sigma, scale = (jnp.asarray(v)[start] for v in levels(tables))
  noised = scale * (alpha * z0 + noise_weight * sigma * noise)
  pure = jnp.logical_and(start == 0, noise_weight > 0)
  return jnp.where(pure, tables.init_scale * noise, noised)


def denoiser(model_fn, prediction_type):
  """denoise(x_t, t, alpha, sigma) -> (x0, eps) in float32 around model_fn(x_t, t [B])."""
  def denoise(x_t, t, alpha, sigma):
    out = model_fn(x_t, jnp.full((x_t.shape[0],), t, jnp.float32))
    return model_output_to_x0_eps(prediction_type, out.astype(jnp.float32), x_t, alpha, sigma)
  return denoise


def run(denoise, tables, method, x, keys, start, *, eta=0.0, known=None, resample=1,
        return_trajectory=False):
  """Runs grid steps start..S-1 of `method` on the state x [B, ...]; returns the final state.

  keys: [B] per-sample PRNG keys; start: traced int32 scalar in [0, S]; eta: DDIM only (traced);
  known: None or (z0_known [B, ...], known_mask [B, ..., 1]) with 1 = keep; resample: RePaint's
  U >= 1 (static). With return_trajectory also {"x_t", "x0_pred": [S, B, ...], "t": [S],
  "active": bool [S]} (skipped steps hold the current state and zeros).
  """
  m = samplers.METHODS[method]
  step_fn = (lambda d, c, xs, z: m.step(d, c, xs, z, eta=eta)) if method == "ddim" else m.step
  alpha, sigma, scale = levels(tables)
  xs = {k: np.asarray(v, np.float64).astype(np.float32) for k, v in tables.xs.items()}
  xs.update(index=np.arange(len(xs["t"]), dtype=np.int32), after_alpha=alpha[1:],
            after_sigma=sigma[1:], after_scale=scale[1:])
  shape = x.shape[1:]

  def impose_known(state, xs_i, i):
    if known is None:
      return state
    z0_known, mask = known
    z = per_sample_normal(keys, shape, KNOWN_NOISE, i)
    x_known = xs_i["after_scale"] * (xs_i["after_alpha"] * z0_known + xs_i["after_sigma"] * z)
    return dict(state, x=mask * x_known + (1.0 - mask) * state["x"])

  def one_pass(carry, xs_i, u):
    i = xs_i["index"]
    z = per_sample_normal(keys, shape, STEP_NOISE, i, u) if m.stochastic else None
    new, (x_t, x0) = step_fn(denoise, carry, xs_i, z)
    return impose_known(new, xs_i, i), (x_t, x0)

  def go_back(x_after, xs_i, u):
    """x_before ~ q(x_before | x_after) in VP terms: ratio x + sqrt(sigma_c^2 - ratio^2 sigma_n^2) z."""
    ratio = xs_i["alpha"] / xs_i["after_alpha"]
    std = jnp.sqrt(jnp.maximum(xs_i["sigma"] ** 2 - (ratio * xs_i["after_sigma"]) ** 2, 0.0))
    z = per_sample_normal(keys, shape, RESAMPLE_NOISE, xs_i["index"], u)
    return xs_i["scale"] * (ratio * x_after / xs_i["after_scale"] + std * z)

  def active(carry, xs_i):
    if "c_2" in xs_i:  # DPM-Solver++(2M): first executed step has no history -> first order
      xs_i = dict(xs_i, c_2=jnp.where(xs_i["index"] == start, 0.0, xs_i["c_2"]))
    new, out = one_pass(carry, xs_i, 0)
    if resample > 1:
      def again(u, new_out):
        back = go_back(new_out[0]["x"], xs_i, u)
        return one_pass(dict(carry, x=back), xs_i, u)
      new, out = jax.lax.fori_loop(1, resample, again, (new, out))
    return new, out

  def skipped(carry, xs_i):
    return carry, (carry["x"] / xs_i["scale"], jnp.zeros_like(carry["x"]))

  def body(carry, xs_i):
    carry, out = jax.lax.cond(xs_i["index"] >= start, active, skipped, carry, xs_i)
    return carry, (out if return_trajectory else None)

  carry, ys = jax.lax.scan(body, m.init_carry(x), xs)
  if not return_trajectory:
    return carry["x"]
  traj = {"x_t": ys[0], "x0_pred": ys[1], "t": jnp.asarray(xs["t"]),
          "active": jnp.arange(len(xs["t"])) >= start}
  return carry["x"], traj
