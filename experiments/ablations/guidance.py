"""Ablation 6: classifier-free guidance scale sweep (Ho & Salimans 2022; LDM Tables 2 and 10) on one
trained class-conditional MNIST LDM; sampling only.

  nice -n 19 python -m experiments.ablations.guidance --scale=cpu --ldm=workdirs/mnist/ldm

For each guidance scale w (guided = uncond + w (cond - uncond); w = 0 the unconditional model, w = 1
the conditional one) draws per_class samples of every digit from the same seed and measures class
accuracy (fidelity), FD (quality) and diversity (within-class mean pairwise feature distance and
recall). Writes <out>/guidance.md and <out>/guidance.png.
"""

import os

if __name__ == "__main__":
  from ldm_jax import host_devices  # pylint: disable=wrong-import-position
  host_devices.simulate_one_device_per_core()  # before JAX is imported

import time  # pylint: disable=wrong-import-position

from experiments.ablations import cli  # pylint: disable=wrong-import-position
from experiments.ablations import digit_judge  # pylint: disable=wrong-import-position
from experiments.ablations import report  # pylint: disable=wrong-import-position
from experiments.ablations import sampling  # pylint: disable=wrong-import-position

NAME = "guidance"
SCALES = {"tiny": dict(per_class=2, num_steps=3, ws=(0.0, 1.0, 3.0)),
          "cpu": dict(per_class=100, num_steps=20, ws=(0.0, 1.0, 1.5, 2.0, 3.0, 5.0))}
CLAIM = ("Classifier-free guidance trades diversity for fidelity (Ho & Salimans 2022; LDM Table 10: "
         "s = 1 -> 1.25 -> 1.5 gives FID 10.56 -> 3.95 -> 3.60, recall 0.62 -> 0.55 -> 0.48): class "
         "accuracy (the IS analogue) rises with w, FD is U-shaped with its minimum at a moderate w > 1, "
         "and diversity / recall fall as w grows.")


def main(argv=None):
  args = cli.parse_args(argv, __doc__, ldm=("workdirs/mnist/ldm", "The LDM run's workdir."),
                        per_class=(0, "Samples per class (0: the scale's)."),
                        method=("dpmpp_2m", "Sampler."), num_steps=(0, "Steps (0: the scale's)."))
  t_start = time.time()
  scale = SCALES[args.scale]
  per_class = args.per_class or scale["per_class"]
  num_steps = args.num_steps or scale["num_steps"]
  clf = args.classifier or os.path.join(os.path.dirname(os.path.abspath(args.ldm)), "classifier.msgpack")
  judge, clf_path = digit_judge.load_judge(clf, args.workdir)
  pipe = sampling.load_pipeline(args.ldm, max_batch=500)
  n = 10 * per_class
  floor = judge.floor(n, args.seed)

  results = []
  for w in scale["ws"]:
    images, labels, secs = sampling.sample_classes(pipe, args.seed, per_class, method=args.method,
                                                   num_steps=num_steps, guidance_scale=w)
    s = judge.scores(images, labels)
    results.append((w, s, secs))
    print(f"w {w:4.1f}: acc {s['acc']:.3f} FD {s['fd']:.3f} recall {s['recall']:.3f} "
          f"diversity {s['diversity']:.3f} ({secs:.1f} s)", flush=True)

  rows = [[w, s["acc"], s["fd"], s["precision"], s["recall"], s["diversity"], secs]
          for w, s, secs in results]
  rows.append(["real (floor)", floor["acc"], floor["fd"], floor["precision"], floor["recall"],
               floor["diversity"], "-"])
  wall = time.time() - t_start
  report.write_report(
      args.out, NAME, title="Ablation 6: classifier-free guidance scale (MNIST LDM)", claim=CLAIM,
      setup=[f"Model: `{args.ldm}` (EMA weights; trained with label dropout for guidance), sampling "
             f"only; classifier `{clf_path}`.",
             f"{per_class} samples per digit (N = {n}), {args.method} with {num_steps} steps, seed "
             f"{args.seed} for every w (same initial noise).",
             "w: guided = uncond + w (cond - uncond); w = 0 unconditional, w = 1 conditional "
             "(the paper's s).",
             report.floor_line(floor, n),
             f"Scale `{args.scale}`; wall time {wall:.0f} s on {report.devices_line()}."],
      header=["w", "class acc", "FD", "precision", "recall", "diversity (within-class)",
              "sampling s"],
      rows=rows, verdict=_verdict(results),
      notes=["At w = 0 the class accuracy measures how often an unconditional sample happens to "
             "be the requested digit (about 0.1 for a good unconditional model).",
             "Diversity: mean pairwise distance of classifier features within each requested "
             "class; the real floor row gives the value for real digits."])
  _plot(args.out, results, floor)
  return results


def _verdict(results):
  ws = [w for w, _, _ in results]
  acc = {w: s["acc"] for w, s, _ in results}
  fd = {w: s["fd"] for w, s, _ in results}
  div = {w: s["diversity"] for w, s, _ in results}
  rec = {w: s["recall"] for w, s, _ in results}
  hi = max(ws)
  parts = []
  ok = acc[hi] > acc.get(1.0, acc[min(ws)])
  parts.append(f"Class accuracy w=1 -> w={hi:g}: {acc.get(1.0, float('nan')):.3f} -> {acc[hi]:.3f}: "
               f"{'agrees' if ok else 'DISAGREES'} (rises with w).")
  best = min(fd, key=fd.get)
  ok = 1.0 < best < hi
  parts.append(f"FD is minimal at w = {best:g}: {'agrees' if ok else 'DISAGREES'} "
               f"(minimum at a moderate w > 1).")
  ok = div[hi] < div.get(1.0, div[min(ws)]) and rec[hi] <= rec.get(1.0, rec[min(ws)])
  parts.append(f"Diversity / recall at w=1 vs w={hi:g}: {div.get(1.0, float('nan')):.3f} / "
               f"{rec.get(1.0, float('nan')):.3f} vs {div[hi]:.3f} / {rec[hi]:.3f}: "
               f"{'agrees' if ok else 'DISAGREES'} (both fall with w).")
  return " ".join(parts)


def _plot(out, results, floor):
  plt, fig, (ax1, ax2, ax3) = report.figure(3, width=4.2)
  ws = [w for w, _, _ in results]
  get = lambda key: [s[key] for _, s, _ in results]
  ax1.plot(ws, get("acc"), "o-")
  ax1.axhline(floor["acc"], color="gray", ls="--", label="real floor")
  ax1.set_ylabel("class accuracy")
  ax2.plot(ws, get("fd"), "o-")
  ax2.axhline(floor["fd"], color="gray", ls="--", label="real floor")
  ax2.set_ylabel("FD (classifier features)")
  ax3.plot(ws, get("recall"), "o-", label="recall")
  ax3.plot(ws, get("precision"), "s-", label="precision")
  ax3b = ax3.twinx()
  ax3b.plot(ws, get("diversity"), "^:", color="C3", label="diversity")
  ax3b.set_ylabel("within-class diversity", color="C3")
  ax3.set_ylabel("precision / recall")
  ax3.legend(fontsize=7, loc="lower left")
  for ax in (ax1, ax2, ax3):
    ax.set_xlabel("guidance scale w")
  ax1.legend(fontsize=7)
  report.save_figure(plt, fig, out, NAME)


if __name__ == "__main__":
  main()
