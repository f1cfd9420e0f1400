"""Ablation 1: downsampling factor f in {1, 2, 4, 8} at equal training wall-clock (LDM sec. 4.1,
Figs. 6/7, Table 6): sample quality per training second and sampling throughput.

  nice -n 19 python -m experiments.ablations.downsampling --scale=cpu [--budget_s=180]

Latents 32x32x1, 16x16x2, 8x8x3, 4x4x4 (the channel counts of the paper's LDM-f; h w c shrinks with
f). For each f: an autoencoder (shared with autoencoders.py); then, back to back so that the load
is the same for every f, a short calibration run per f measures the LDM's training steps/s; then
for each f a fresh LDM is trained for budget_s x steps/s steps (same UNet family, seed and batch),
sampled, and timed.

f = 1 deviation: the stage code has no identity first stage, so "pixel space" is a one-level
(no downsampling) KL autoencoder with c = 1: the denoiser runs on 32x32x1 maps like a pixel-space
model, but through a learned per-pixel conv encoder/decoder.

With --seeds=0,1,2 every LDM is trained and scored once per seed (`seed_cells`: runs in
<root>/seed<s>/ldm_f<f>, scores and throughput cached beside them); the autoencoders and the
calibration runs (hence each f's step count) are --seed's for every seed. Mean ± sd cells, verdicts
only beyond the spread. Writes <out>/downsampling.md and <out>/downsampling.png.
"""

import os

if __name__ == "__main__":
  from ldm_jax import host_devices  # pylint: disable=wrong-import-position
  host_devices.simulate_one_device_per_core()  # before JAX is imported

import time  # pylint: disable=wrong-import-position

from experiments.ablations import cli  # pylint: disable=wrong-import-position
from experiments.ablations import digit_judge  # pylint: disable=wrong-import-position
from experiments.ablations import evaluation  # pylint: disable=wrong-import-position
from experiments.ablations import report  # pylint: disable=wrong-import-position
from experiments.ablations import sampling  # pylint: disable=wrong-import-position
from experiments.ablations import seed_cells  # pylint: disable=wrong-import-position
from experiments.ablations import seeds as seeds_lib  # pylint: disable=wrong-import-position
from experiments.ablations import training  # pylint: disable=wrong-import-position

NAME = "downsampling"
FACTORS = {1: 1, 2: 2, 4: 3, 8: 4}  # f -> latent channels c: the paper's LDM-f z-shapes (tab. 13), c = 1 at f = 1 (gray)
BUDGETS = {"tiny": 0.0, "cpu": 180.0}  # seconds of LDM training per f (0: the scale's ldm_steps)
CALIBRATION_STEPS = {"tiny": 3, "cpu": 90}  # steps/s measured over the last third
BASELINE_F = 4  # the LDM recipe's factor: the budget check's baseline
CLAIM = ("LDM sec. 4.1: small f (LDM-1, -2) trains slowly, too large f stagnates at the "
         "autoencoder's fidelity, LDM-4..16 strike the balance (FID gap of 38 between LDM-1 and LDM-8 "
         "after 2M steps); latent models sample >= 2.7x faster (Table 6).")


def main(argv=None):
  args = cli.parse_args(argv, __doc__, budget_s=(-1.0, "LDM training seconds per f (-1: scale's)."),
                        factors=("", "Comma-separated f values (default: 1,2,4,8)."))
  t_start = time.time()
  seeds = seeds_lib.parse_seeds(args.seeds, args.seed)
  sc = training.TRAIN_SCALES[args.scale]
  budget = BUDGETS[args.scale] if args.budget_s < 0 else args.budget_s
  factors = tuple(int(v) for v in args.factors.split(",")) if args.factors else tuple(FACTORS)
  root = os.path.join(args.workdir, NAME, args.scale)
  judge, clf_path = digit_judge.load_judge(args.classifier, args.workdir)

  # Every f's autoencoder, then every f's step count, before any LDM cell trains: the
  # calibrations run back to back under the same load, so the equal wall-clock budget holds
  # between the f's even when the machine's load changes later.
  ae_dirs, aes = {}, {}
  for f in factors:
    # shared with autoencoders.py (its --seed run)
    ae_dirs[f] = training.autoencoder_dir(args.workdir, args.scale, "KL", f, FACTORS[f], args.seed)
    aes[f] = training.autoencoder_run(ae_dirs[f], args.scale, f=f, z_channels=FACTORS[f],
                                      seed=args.seed)
  # equal wall-clock: each f's steps/s (once, for every seed); no budget: the scale's steps
  step_counts = {f: (_calibrated_steps(root, f, ae_dirs[f], args.scale, args.seed, budget)
                     if budget > 0 else sc["ldm_steps"]) for f in factors}

  results, cells, baseline = [], [], []
  for f in factors:
    c, ae_dir, ae, steps = FACTORS[f], ae_dirs[f], aes[f], step_counts[f]
    per_seed = []
    for seed in seeds:
      ldm_dir = seed_cells.seed_dir(root, seed, f"ldm_f{f}")
      run = training.ldm_run(ldm_dir, ae_dir, args.scale, seed=seed, steps=steps)
      ev = _scores(judge, ldm_dir, args.scale, seed, run["steps"])
      sps = float(run["final_metrics"]["steps_per_sec"])
      cells.append((run, ev))
      per_seed.append({**ev, "sps": sps, "train_s": run["seconds"]})
      if f == BASELINE_F:
        baseline.append((seed, ldm_dir, run["steps"]))
      print(f"seed {seed} f={f}: {steps} steps at {sps:.2f}/s, FD {ev['fd']:.3f} acc {ev['acc']:.3f}, "
            f"{ev['throughput']:.1f} img/s{' (reused)' if run['reused'] and ev['reused'] else ''}",
            flush=True)
    results.append(dict(f=f, c=c, psnr=ae["psnr"], reused_autoencoder=ae["reused"], steps=steps,
                        s=seeds_lib.summarize_scores(per_seed)))
  if baseline:
    _, _, budget_line = seed_cells.budget_check(judge, baseline, args.scale, f"LDM-{BASELINE_F}")
  else:
    budget_line = (f"Budget check: not run (LDM-{BASELINE_F}, its baseline, is not among "
                   "--factors).")

  n = 10 * sc["per_class"]
  floor = judge.floor(n, args.seed)
  metrics = ("sps", "train_s", "fd", "acc", "recall", "throughput")
  rows = [[f"LDM-{r['f']}", f"{32 // r['f']}x{32 // r['f']}x{r['c']}", r["psnr"], r["steps"],
           *(seeds_lib.cell(r["s"].get(k)) for k in metrics)] for r in results]
  rows.append(["real (floor)", "-", "-", "-", "-", "-", floor["fd"], floor["acc"], floor["recall"], "-"])
  wall = time.time() - t_start
  report.write_report(
      args.out, NAME, title="Ablation 1: downsampling factor at equal training wall-clock (MNIST)",
      claim=CLAIM,
      setup=[f"Training budget per f: {budget:.0f} s of LDM steps (0: no budget, fixed steps; else steps = budget x steps/s measured "
             f"by a {CALIBRATION_STEPS[args.scale]}-step calibration run with seed {args.seed}, "
             "over its last third, every f calibrated back to back before any LDM trains; "
             f"without a budget {sc['ldm_steps']}); batch {sc['batch']}, EMA decay "
             f"{sc['ema_decay']:g}, same UNet family (parameter count nearly equal: only in/out "
             "convs depend on c).",
             f"Autoencoders: {sc['ae_steps']} steps each at peak learning rate {sc['ae_lr']:g} (KL, "
             f"L1, no GAN), seed {args.seed} for "
             "every LDM seed: only the LDM cells vary by seed. f = 1 is a one-level learned "
             "autoencoder, not an identity (see the script docstring).",
             seed_cells.seeds_line(seeds, root), seed_cells.eval_line(args.scale, clf_path),
             "Train s = a cell's measured training wall time, compilation included; train "
             "steps/s = its last logging window's rate. Throughput = images/s of a second "
             "(compiled) sampling call incl. decoding.",
             budget_line, report.floor_line(floor, n), seed_cells.provenance_line(cells, wall)],
      header=["model", "latent", "AE PSNR", "train steps", "train steps/s", "train s", "FD",
              "class acc", "recall", "sampling img/s"],
      rows=rows, verdict=_verdict(results))
  _plot(args.out, results, floor)
  return results


def _calibrated_steps(root, f, ae_dir, scale, seed, budget):
  """LDM-f's steps in `budget` seconds: budget x the steps/s of a short calibration run's last
  logging window (a third of its steps; the first windows include compilation), at least the
  calibration's own steps. The run is kept in <root>/calib_f<f>, so a rerun reuses its count."""
  n = CALIBRATION_STEPS[scale]
  calib = training.ldm_run(os.path.join(root, f"calib_f{f}"), ae_dir, scale, seed=seed, steps=n,
                           extra={"train.log_every": max(1, n // 3)})
  return max(n, int(budget * float(calib["final_metrics"]["steps_per_sec"])))


def _scores(judge, ldm_dir, scale, seed, steps):
  """The judge's scores of an LDM cell and its sampling throughput (images/s of a second, compiled,
  call), cached in the cell (`seed_cells.cached_scores`)."""
  sc = training.TRAIN_SCALES[scale]

  def compute():
    ev = evaluation.evaluate_ldm(judge, ldm_dir, scale, seed=seed, use_ema=sc["use_ema"])
    pipe = sampling.load_pipeline(ldm_dir, use_ema=sc["use_ema"], max_batch=500)
    sampling.sample_classes(pipe, seed, sc["per_class"], method="ddim",
                            num_steps=sc["sample_steps"])
    _, _, secs = sampling.sample_classes(pipe, seed + 1, sc["per_class"], method="ddim",
                                         num_steps=sc["sample_steps"])
    return {**ev, "throughput": ev["images"].shape[0] / secs}

  return seed_cells.cached_scores(ldm_dir, seed, seed_cells.eval_settings(scale, steps, w=1.0),
                                  compute)


def _verdict(results):
  """LDM-1 vs the best other f on FD, and the sampling speed-up over LDM-1 against the paper's
  2.7x, each resolved only beyond the seeds' spread."""
  if len(results) < 2:
    return "Too few factors run to compare."
  cell = seeds_lib.cell
  by = {r["f"]: r["s"] for r in results}
  best = min(results, key=lambda r: r["s"]["fd"]["mean"])
  parts = [f"Lowest mean FD at equal wall-clock: LDM-{best['f']} ({cell(best['s']['fd'])})."]
  if 1 in by:
    other = min((r for r in results if r["f"] != 1), key=lambda r: r["s"]["fd"]["mean"])
    word = seeds_lib.verdict(seeds_lib.compare(other["s"]["fd"], by[1]["fd"]), -1)
    parts.append(f"LDM-{other['f']} vs pixel-like LDM-1: FD {cell(other['s']['fd'])} vs "
                 f"{cell(by[1]['fd'])}: {word} (LDM-1 is not the best at equal compute).")
    fastest = max(results, key=lambda r: r["s"]["throughput"]["mean"])
    t1 = by[1]["throughput"]
    paper = {"mean": 2.7 * t1["mean"], "sd": None if t1["sd"] is None else 2.7 * t1["sd"]}
    word = seeds_lib.verdict(seeds_lib.compare(fastest["s"]["throughput"], paper), +1)
    parts.append(f"Sampling speed-up of LDM-{fastest['f']} over LDM-1: "
                 f"{fastest['s']['throughput']['mean'] / t1['mean']:.1f}x: {word} (>= 2.7x, the "
                 "paper's).")
  return " ".join(parts)


def _plot(out, results, floor):
  plt, fig, (ax1, ax2) = report.figure(2)
  fs = [r["f"] for r in results]
  get = lambda key: ([r["s"][key]["mean"] for r in results],
                     [r["s"][key]["sd"] or 0.0 for r in results])
  ax1.errorbar(fs, *get("fd"), fmt="o-", capsize=3, label="FD at equal wall-clock")
  ax1.axhline(floor["fd"], color="gray", ls="--", label="real floor")
  ax1.set_xscale("log", base=2)
  ax1.set_xlabel("downsampling factor f")
  ax1.set_ylabel("FD")
  ax1.legend(fontsize=7)
  report.bars(ax2, [str(f) for f in fs], [r["s"]["throughput"] for r in results],
              "sampling throughput (img/s)")
  ax2.set_xlabel("downsampling factor f")
  report.save_figure(plt, fig, out, NAME)


if __name__ == "__main__":
  main()
