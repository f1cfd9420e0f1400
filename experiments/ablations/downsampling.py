"""Ablation 1: downsampling factor f in {1, 2, 4, 8} at equal training wall-clock (LDM sec. 4.1,
Figs. 6/7, Table 6): sample quality per training second and sampling throughput.

  nice -n 19 python -m experiments.ablations.downsampling --scale=cpu [--budget_s=180]

Latents 32x32x1, 16x16x2, 8x8x3, 4x4x4 (the channel counts of the paper's LDM-f; h w c shrinks with
f). For each f: an autoencoder (shared with autoencoders.py), then a
short calibration run measures the LDM's training steps/s, then a fresh LDM is trained for
budget_s x steps/s steps (same UNet family, seed and batch), sampled, and timed.

f = 1 deviation: the stage code has no identity first stage, so "pixel space" is a one-level
(no downsampling) KL autoencoder with c = 1: the denoiser runs on 32x32x1 maps like a pixel-space
model, but through a learned per-pixel conv encoder/decoder.
Writes <out>/downsampling.md and <out>/downsampling.png.
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
from experiments.ablations import training  # pylint: disable=wrong-import-position

NAME = "downsampling"
FACTORS = {1: 1, 2: 2, 4: 3, 8: 4}  # f -> latent channels c: the paper's LDM-f z-shapes (tab. 13), c = 1 at f = 1 (gray)
BUDGETS = {"tiny": 0.0, "cpu": 180.0}  # seconds of LDM training per f (0: the scale's ldm_steps)
CALIBRATION_STEPS = {"tiny": 3, "cpu": 30}
CLAIM = ("LDM sec. 4.1: small f (LDM-1, -2) trains slowly, too large f stagnates at the "
         "autoencoder's fidelity, LDM-4..16 strike the balance (FID gap of 38 between LDM-1 and LDM-8 "
         "after 2M steps); latent models sample >= 2.7x faster (Table 6).")


def main(argv=None):
  args = cli.parse_args(argv, __doc__, budget_s=(-1.0, "LDM training seconds per f (-1: scale's)."),
                        factors=("", "Comma-separated f values (default: 1,2,4,8)."))
  t_start = time.time()
  sc = training.TRAIN_SCALES[args.scale]
  budget = BUDGETS[args.scale] if args.budget_s < 0 else args.budget_s
  factors = tuple(int(v) for v in args.factors.split(",")) if args.factors else tuple(FACTORS)
  root = os.path.join(args.workdir, NAME, args.scale)
  judge, clf_path = digit_judge.load_judge(args.classifier, args.workdir)

  results = []
  for f in factors:
    c = FACTORS[f]
    ae_dir = training.autoencoder_dir(args.workdir, args.scale, "KL", f, c)  # shared with autoencoders.py
    ae = training.autoencoder_run(ae_dir, args.scale, f=f, z_channels=c, seed=args.seed)
    steps = sc["ldm_steps"]
    if budget > 0:  # equal wall-clock: calibrate this f's steps/s first
      # steps/s of the last logging window: the first one includes compilation.
      calib = training.ldm_run(os.path.join(root, f"calib_f{f}"), ae_dir, args.scale,
                               seed=args.seed, steps=CALIBRATION_STEPS[args.scale],
                               extra={"train.log_every": CALIBRATION_STEPS[args.scale] // 3})
      steps = max(CALIBRATION_STEPS[args.scale], int(budget * float(calib["final_metrics"]["steps_per_sec"])))
    ldm_dir = os.path.join(root, f"ldm_f{f}")
    run = training.ldm_run(ldm_dir, ae_dir, args.scale, seed=args.seed, steps=steps)
    sps = float(run["final_metrics"]["steps_per_sec"])
    ev = evaluation.evaluate_ldm(judge, ldm_dir, args.scale, seed=args.seed)
    # Throughput: a second call of the now compiled sampler.
    pipe = sampling.load_pipeline(ldm_dir, use_ema=False, max_batch=500)
    n = ev["images"].shape[0]
    sampling.sample_classes(pipe, args.seed, sc["per_class"], method="ddim",
                            num_steps=sc["sample_steps"])
    _, _, secs = sampling.sample_classes(pipe, args.seed + 1, sc["per_class"], method="ddim",
                                         num_steps=sc["sample_steps"])
    train_s = steps / sps
    results.append(dict(f=f, c=c, psnr=ae["psnr"], reused_autoencoder=ae["reused"], sps=sps, steps=steps, train_s=train_s, ev=ev,
                        throughput=n / secs))
    print(f"f={f}: {steps} steps at {sps:.2f}/s, FD {ev['fd']:.3f} acc {ev['acc']:.3f}, "
          f"{n / secs:.1f} img/s", flush=True)

  n = 10 * sc["per_class"]
  floor = judge.floor(n, args.seed)
  rows = [[f"LDM-{r['f']}", f"{32 // r['f']}x{32 // r['f']}x{r['c']}", r["psnr"], r["sps"], r["steps"],
           r["train_s"], r["ev"]["fd"], r["ev"]["acc"], r["ev"]["recall"], r["throughput"]]
          for r in results]
  rows.append(["real (floor)", "-", "-", "-", "-", "-", floor["fd"], floor["acc"], floor["recall"], "-"])
  wall = time.time() - t_start
  report.write_report(
      args.out, NAME, title="Ablation 1: downsampling factor at equal training wall-clock (MNIST)",
      claim=CLAIM,
      setup=[f"Training budget per f: {budget:.0f} s of LDM steps (0: no budget, fixed steps; else steps = budget x steps/s measured "
             f"by a {CALIBRATION_STEPS[args.scale]}-step calibration run; without a budget "
             f"{sc['ldm_steps']}); batch {sc['batch']}, seed {args.seed}, same UNet family "
             "(parameter count nearly equal: only in/out convs depend on c).",
             f"Autoencoders: {sc['ae_steps']} steps each (KL, L1, no GAN). f = 1 is a one-level "
             "learned autoencoder, not an identity (see the script docstring).",
             f"Evaluation: raw weights, {sc['per_class']} samples per digit, DDIM {sc['sample_steps']} "
             f"steps, w = 1; throughput = images/s of a second (compiled) sampling call incl. "
             f"decoding; classifier `{clf_path}`.",
             report.floor_line(floor, n),
             f"Scale `{args.scale}`; wall time {wall:.0f} s on {report.devices_line()}."],
      header=["model", "latent", "AE PSNR", "train steps/s", "train steps", "train s", "FD",
              "class acc", "recall", "sampling img/s"],
      rows=rows, verdict=_verdict(results))
  _plot(args.out, results, floor)
  return results


def _verdict(results):
  if len(results) < 2:
    return "Too few factors run to compare."
  by = {r["f"]: r for r in results}
  best = min(results, key=lambda r: r["ev"]["fd"])
  parts = [f"Lowest FD at equal wall-clock: LDM-{best['f']}."]
  if 1 in by:
    ok = best["f"] in (2, 4, 8) and best["f"] != 1
    parts.append(f"{'Agrees' if ok else 'DISAGREES'}: pixel-like LDM-1 is "
                 f"{'not ' if ok else ''}the best at equal compute.")
    fastest = max(results, key=lambda r: r["throughput"])
    ratio = fastest["throughput"] / by[1]["throughput"]
    parts.append(f"Sampling speed-up of LDM-{fastest['f']} over LDM-1: {ratio:.1f}x "
                 f"({'agrees' if ratio >= 2.7 else 'smaller than'} the paper's >= 2.7x).")
  return " ".join(parts)


def _plot(out, results, floor):
  plt, fig, (ax1, ax2) = report.figure(2)
  fs = [r["f"] for r in results]
  ax1.plot(fs, [r["ev"]["fd"] for r in results], "o-", label="FD at equal wall-clock")
  ax1.axhline(floor["fd"], color="gray", ls="--", label="real floor")
  ax1.set_xscale("log", base=2)
  ax1.set_xlabel("downsampling factor f")
  ax1.set_ylabel("FD")
  ax1.legend(fontsize=7)
  ax2.bar([str(f) for f in fs], [r["throughput"] for r in results])
  ax2.set_xlabel("downsampling factor f")
  ax2.set_ylabel("sampling throughput (img/s)")
  report.save_figure(plt, fig, out, NAME)


if __name__ == "__main__":
  main()
