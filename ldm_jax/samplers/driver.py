"""The one sampling driver: a `lax.scan` over the grid steps of any method in `ldm_jax.samplers`.

  x_0 = run(denoise, tables, method, x, noise, start=0, eta=0.0, after_step=None, resample=1)

`samplers.sample` (checked against the diffusers schedulers) and the pipeline's jitted programs
both call `run`; what differs between them is passed in:

  * start: the first grid step. A Python int drops the earlier steps from the scan (one program per
    start); a traced int32 scans all S steps and skips those before it with `lax.cond` (a skipped
    step costs no model evaluation), so img2img strengths and restoration levels share a program.
    The first executed step of DPM-Solver++(2M) is first order (no history), as in diffusers'
    img2img (`lower_order_nums` restarts at 0).
  * noise: `noise(purpose, i, u)` -> float32 [B, ...], the z of grid step i (`STEP`), of the known
    region after it (`KNOWN`) or of RePaint's way back (`RESAMPLE`), at repeat u. `batch_noise(rng,
    shape)` draws one array per step from fold_in(rng, i) (samplers.sample); `per_sample_noise(keys,
    shape)` draws sample b's from its own key (the pipeline: results independent of chunking).
  * after_step: fn(x, xs_i, noise) -> x applied to the state after every step; xs_i holds the
    step's table entries and "after_alpha", "after_sigma", "after_scale", the VP level the state is
    at after the step. `known_region(x0_known, mask)` is inpainting's (Rombach et al. 2022 sec. 4.5).
  * resample: RePaint's U (Lugmayr et al. 2022, Alg. 1): each step runs U times, going back by the
    forward transition q(x_before | x_after) in between.

The state of every method is scale * (alpha x0 + sigma eps) at its VP level (alpha, sigma) and
its input scale (1 for the VP methods, sqrt(1 + sigma_VE^2) for the sigma-space ones).
"""

import jax
import jax.numpy as jnp
import numpy as np

from ldm_jax.diffusion.parameterization import model_output_to_x0_eps
from ldm_jax.samplers.methods import METHODS

STEP, KNOWN, RESAMPLE = 1, 2, 3  # noise purposes


def denoiser(model_fn, prediction_type, clip_sample=False):
  """denoise(x_t, t, alpha, sigma) -> (x0, eps) in float32 around model_fn(x_t, t [B])."""
  def denoise(x_t, t, alpha, sigma):
    out = model_fn(x_t, jnp.full((x_t.shape[0],), t, jnp.float32))
    if getattr(out, "shape", None) != x_t.shape:
      raise ValueError(f"model_fn returned shape {getattr(out, 'shape', None)}, expected {x_t.shape} (like x_t).")
    x0, eps = model_output_to_x0_eps(prediction_type, out.astype(jnp.float32), x_t, alpha, sigma)
    if clip_sample:
      x0 = jnp.clip(x0, -1.0, 1.0)
    return x0, eps
  return denoise


def per_sample_normal(keys, shape, *path):
  """[B] keys -> float32 [B, *shape], sample b from fold_in(fold_in(keys[b], path[0]), path[1])..."""
  def one(k):
    for p in path:
      k = jax.random.fold_in(k, p)
    return jax.random.normal(k, shape, jnp.float32)
  return jax.vmap(one)(keys)


def batch_noise(rng, shape):
  """noise(purpose, i, u) for one key: step i's z from fold_in(rng, i); the known region's from
  fold_in(fold_in(rng, i), 1); RePaint's from fold_in(fold_in(fold_in(rng, i), purpose), u)."""
  def noise(purpose, i, u=0):
    key = jax.random.fold_in(rng, i)
    if purpose == KNOWN:
      key = jax.random.fold_in(key, 1)
    elif purpose != STEP or not (isinstance(u, int) and u == 0):
      key = jax.random.fold_in(jax.random.fold_in(key, purpose), u)
    return jax.random.normal(key, shape, jnp.float32)
  return noise


def per_sample_noise(keys, shape):
  """noise(purpose, i, u) for [B] per-sample keys: sample b's z from fold_in(keys[b], purpose, i[, u])
  (shape: one sample's)."""
  def noise(purpose, i, u=0):
    path = (purpose, i) if purpose == KNOWN else (purpose, i, u)
    return per_sample_normal(keys, tuple(shape), *path)
  return noise


def levels(tables):
  """Host float32 (alpha, sigma, scale) [S + 1]: the VP level of the state before step i, and at
  i = S the level of the returned sample."""
  xs = tables.xs
  alpha = np.append(np.asarray(xs["alpha"], np.float64), tables.final_alpha)
  sigma = np.append(np.asarray(xs["sigma"], np.float64), tables.final_sigma)
  scale = np.append(np.asarray(xs["scale"], np.float64), 1.0)
  return alpha.astype(np.float32), sigma.astype(np.float32), scale.astype(np.float32)


def initial_state(tables, z0, noise, start, noise_weight):
  """Sampler state at grid step `start` (int or traced int32 scalar).

  start = 0 with noise_weight > 0: pure noise init_scale * noise (img2img at strength 1 ignores z0);
  otherwise scale_s (alpha_s z0 + noise_weight sigma_s noise): img2img / SDEdit (weight 1), or an
  input that already carries its own noise (restoration, weight 0). start = S returns z0.
  """
  alpha, sigma, scale = (jnp.asarray(v)[start] for v in levels(tables))
  noised = scale * (alpha * z0 + noise_weight * sigma * noise)
  pure = jnp.logical_and(start == 0, noise_weight > 0)
  return jnp.where(pure, tables.init_scale * noise, noised)


def known_region(x0_known, mask):
  """after_step hook of inpainting: where mask = 1 (values in [0, 1], broadcastable to x), the
  state is replaced by q(x | x0_known) at the level after the step, with noise(KNOWN, i)."""
  def hook(x, xs_i, noise):
    z = noise(KNOWN, xs_i["index"])
    x_known = xs_i["after_scale"] * (xs_i["after_alpha"] * x0_known.astype(jnp.float32)
                                     + xs_i["after_sigma"] * z)
    m = jnp.asarray(mask, jnp.float32)
    return m * x_known + (1.0 - m) * x
  return hook


def run(denoise, tables, method, x, noise, *, start=0, eta=0.0, after_step=None, resample=1,
        stochastic=None, return_trajectory=False):
  """Runs grid steps start..S-1 of `method` on the state x [B, ...]; returns the final state.

  denoise: `denoiser(...)`; tables: `samplers.make_tables(...)` of `method`; noise: `batch_noise` or
  `per_sample_noise`; start: int in [0, S) or traced int32 in [0, S]; eta: DDIM only (may be traced);
  after_step: None or fn(x, xs_i, noise) -> x; resample: RePaint's U >= 1 (static); stochastic:
  whether steps draw z (None: the method's own flag). With return_trajectory also {"x_t",
  "x0_pred": [S', B, ...], "t": [S']} over the scanned steps (S' = S - start for an int start;
  S with "active": bool [S] for a traced one, skipped steps holding the state and zeros).
  """
  m = METHODS[method]
  stochastic = m.stochastic if stochastic is None else stochastic
  step_fn = (lambda d, c, xs, z: m.step(d, c, xs, z, eta=eta)) if method == "ddim" else m.step
  alpha, sigma, scale = levels(tables)
  S = len(tables.xs["t"])
  xs = {k: np.asarray(v, np.float64).astype(np.float32) for k, v in tables.xs.items()}
  xs.update(index=np.arange(S, dtype=np.int32), after_alpha=alpha[1:], after_sigma=sigma[1:],
            after_scale=scale[1:])
  static_start = isinstance(start, (int, np.integer))
  if static_start:  # the steps before `start` are not in the program at all
    xs = {k: v[int(start):] for k, v in xs.items()}
  shape = x.shape

  def one_pass(carry, xs_i, u):
    z = noise(STEP, xs_i["index"], u) if stochastic else jnp.zeros((), jnp.float32)
    new, (x_t, x0) = step_fn(denoise, carry, xs_i, z)
    if after_step is not None:
      new = dict(new, x=after_step(new["x"], xs_i, noise))
    return new, (x_t, x0)

  def go_back(x_after, xs_i, u):
    """x_before ~ q(x_before | x_after) in VP terms: ratio x + sqrt(sigma_c^2 - ratio^2 sigma_n^2) z."""
    ratio = xs_i["alpha"] / xs_i["after_alpha"]
    std = jnp.sqrt(jnp.maximum(xs_i["sigma"] ** 2 - (ratio * xs_i["after_sigma"]) ** 2, 0.0))
    z = noise(RESAMPLE, xs_i["index"], u)
    return xs_i["scale"] * (ratio * x_after / xs_i["after_scale"] + std * z)

  def active(carry, xs_i):
    if "c_2" in xs_i:  # DPM-Solver++(2M): the first executed step has no history -> first order
      xs_i = dict(xs_i, c_2=jnp.where(xs_i["index"] == start, 0.0, xs_i["c_2"]))
    new, out = one_pass(carry, xs_i, 0)
    if resample > 1:
      def again(u, new_out):
        return one_pass(dict(carry, x=go_back(new_out[0]["x"], xs_i, u)), xs_i, u)
      new, out = jax.lax.fori_loop(1, resample, again, (new, out))
    return new, out

  def skipped(carry, xs_i):
    return carry, (carry["x"] / xs_i["scale"], jnp.zeros(shape, jnp.float32))

  def body(carry, xs_i):
    if static_start:
      carry, out = active(carry, xs_i)
    else:
      carry, out = jax.lax.cond(xs_i["index"] >= start, active, skipped, carry, xs_i)
    return carry, (out if return_trajectory else None)

  carry, ys = jax.lax.scan(body, m.init_carry(jnp.asarray(x, jnp.float32)), xs)
  if not return_trajectory:
    return carry["x"]
  traj = {"x_t": ys[0], "x0_pred": ys[1], "t": jnp.asarray(xs["t"])}
  if not static_start:
    traj["active"] = jnp.arange(S) >= start
  return carry["x"], traj
