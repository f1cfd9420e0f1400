"""Command-line flags of the ablation scripts: the common flags, the latent ablations' flags, the
sampler flags, and the parsers of comma-separated flag values (errors name the flag and the valid
values)."""

import argparse

SCALES = ("tiny", "cpu")

# The flags of the ablations that train LDMs on one autoencoder's latents (3, 5, 7).
LATENT_ABLATION_FLAGS = {
    "ae": ("", "Autoencoder workdir (default: the shared KL f4 c3 one, trained if missing)."),
    "variants": ("", "Comma-separated variant indices (default: all)."),
}

# The sampler flags of the concat-task ablations (8, 9, 10): every diffusion row samples alike.
SAMPLER_FLAGS = {
    "method": ("ddim", "Sampler of every diffusion row."),
    "num_steps": (0, "Sampler steps (0: the scale's)."),
}


def parse_args(argv, description, **extra):
  """Common flags (--scale, --out, --workdir, --seed, --seeds, --classifier) plus `extra`:
  name -> (default, help)."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--scale", default="cpu", choices=SCALES, help="tiny: seconds (tests); cpu: minutes.")
  p.add_argument("--out", default="experiments/results", help="Where <name>.md and <name>.png go.")
  p.add_argument("--workdir", default="workdirs/ablations", help="Scratch dir of trained runs.")
  p.add_argument("--seed", type=int, default=0, help="Seed of sampling and training.")
  p.add_argument("--seeds", default="", help="Comma-separated seeds (e.g. 0,1,2): scripts that "
                 "support it measure every cell once per seed and report mean ± sd (seeds.py); "
                 "default: --seed alone.")
  p.add_argument("--classifier", default="", help="Digit classifier msgpack (trained if missing).")
  for name, (default, help_) in extra.items():
    p.add_argument(f"--{name}", default=default, type=type(default), help=help_)
  return p.parse_args(argv)


def pick_variants(spec, variants, always=()):
  """The variants whose indices are listed in `spec` ("0,2"; all when empty) plus those in
  `always`, in index order. variants: tuples whose first item is the label."""
  if not spec:
    return list(variants)
  valid = "; ".join(f"{i}: {v[0]}" for i, v in enumerate(variants))
  try:
    chosen = {int(i) for i in spec.split(",")}
  except ValueError:
    raise ValueError(f"--variants={spec!r} is not a comma-separated list of indices; valid "
                     f"indices: {valid}.") from None
  bad = sorted(i for i in chosen if not 0 <= i < len(variants))
  if bad:
    raise ValueError(f"--variants={spec!r}: no variant {bad}; valid indices: {valid}.")
  return [variants[i] for i in sorted(chosen | set(always))]


def int_list(spec, flag):
  """Positive ints of a comma-separated flag value ("300,600"), increasing."""
  try:
    values = tuple(int(v) for v in spec.split(","))
  except ValueError:
    raise ValueError(f"--{flag}={spec!r} is not a comma-separated list of integers.") from None
  if any(v <= 0 for v in values) or list(values) != sorted(set(values)):
    raise ValueError(f"--{flag}={spec!r}: the values must be positive and increasing.")
  return values
