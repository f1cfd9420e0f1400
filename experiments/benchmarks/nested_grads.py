"""Gradients inside control flow on XLA:CPU: the same convolution or matmul gradient at the top level
of a jitted program, inside `lax.cond` and inside `lax.scan`, timed back to back.

  python -m experiments.benchmarks.nested_grads [--batch=8] [--repeats=3]

Why it exists: on jaxlib 0.10 a convolution's weight gradient inside a conditional or a loop body
runs one to two orders of magnitude slower than the same op at the top level (the input gradient a
few times slower; matmuls and forward convolutions are unaffected). The autoencoder stage computed
its adaptive weight lambda (a weight gradient of the last decoder layer) inside `lax.cond`, which
made its GAN-phase step ~20% slower than computing lambda at every step (ldm_jax/stages/
autoencoder.py). Keep differentiated convolutions out of `cond` / `scan` / `while` on CPU hosts.

Prints one row per op: median ms at top level, in cond, in scan (length 1) and the slowdowns.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def _conv(w, x):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def ops(batch: int) -> dict:
  """name -> (fn(*args) -> gradients, args): a 3x3 conv's weight gradient, its input gradient,
  its forward pass, and a matmul's gradients, at [batch, 32, 32, 64] / [128 * batch, 512]."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, 32, 32, 64)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 64, 64)) * 0.05, jnp.float32)
  a = jnp.asarray(rng.standard_normal((128 * batch, 512)), jnp.float32)
  b = jnp.asarray(rng.standard_normal((512, 512)) * 0.05, jnp.float32)
  conv_loss = lambda w, x: jnp.sum(_conv(w, x) ** 2)
  return {
      "conv 3x3, weight gradient": (jax.grad(conv_loss, argnums=0), (w, x)),
      "conv 3x3, input gradient": (jax.grad(conv_loss, argnums=1), (w, x)),
      "conv 3x3, forward": (conv_loss, (w, x)),
      "matmul, both gradients": (jax.grad(lambda a, b: jnp.sum((a @ b) ** 2), argnums=(0, 1)),
                                 (a, b)),
  }


def placements(fn):
  """The same computation at top level, inside lax.cond (the branch taken at run time) and inside
  a length-1 lax.scan."""
  zeros = lambda *args: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                     jax.eval_shape(fn, *args))

  def in_cond(*args):
    return jax.lax.cond(jnp.sum(args[0]) > -jnp.inf, fn, zeros, *args)

  def in_scan(*args):
    return jax.lax.scan(lambda c, _: (fn(*args), None), zeros(*args), None, length=1)[0]
  return {"top": fn, "cond": in_cond, "scan": in_scan}


def median_ms(fn, args, repeats: int) -> float:
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def measure(batch: int, repeats: int) -> dict:
  """{op: {"top": ms, "cond": ms, "scan": ms}}; each placement's result equals the top level's."""
  out = {}
  for name, (fn, args) in ops(batch).items():
    want = jax.jit(fn)(*args)
    row = {}
    for where, g in placements(fn).items():
      for got, ref in zip(jax.tree.leaves(jax.jit(g)(*args)), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)
      row[where] = median_ms(g, args, repeats)
    out[name] = row
  return out


def table(results: dict) -> str:
  lines = [f"{'op':28s} {'top ms':>9s} {'cond ms':>10s} {'scan ms':>10s} {'cond/top':>9s} "
           f"{'scan/top':>9s}"]
  for name, r in results.items():
    lines.append(f"{name:28s} {r['top']:9.1f} {r['cond']:10.1f} {r['scan']:10.1f} "
                 f"{r['cond'] / r['top']:8.1f}x {r['scan'] / r['top']:8.1f}x")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  if args.batch < 1 or args.repeats < 1:
    raise SystemExit(f"--batch={args.batch} and --repeats={args.repeats} must be >= 1.")
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, batch {args.batch}", flush=True)
  results = measure(args.batch, args.repeats)
  print(table(results))
  return results


if __name__ == "__main__":
  main()
