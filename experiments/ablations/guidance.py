"""Ablation 6: classifier-free guidance scale sweep (Ho & Salimans 2022; LDM Tables 2 and 10) on one
trained class-conditional MNIST LDM; sampling only.

  nice -n 19 python -m experiments.ablations.guidance --scale=cpu --ldm=workdirs/mnist/ldm

For each guidance scale w (guided = uncond + w (cond - uncond); w = 0 the unconditional model, w = 1
the conditional one) draws per_class samples of every digit from the same seed and measures class
accuracy (fidelity), FD (quality) and diversity (within-class mean pairwise feature distance and
recall). With --seeds=0,1,2 every w is sampled once per seed (the same seeds for every w): the
table gives mean ± sd and each verdict needs a difference beyond the spread (seeds.py). Writes
<out>/guidance.md and <out>/guidance.png.
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
from experiments.ablations import seeds as seeds_lib  # pylint: disable=wrong-import-position

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
  seeds = seeds_lib.parse_seeds(args.seeds, args.seed)
  t_start = time.time()
  scale = SCALES[args.scale]
  per_class = args.per_class or scale["per_class"]
  num_steps = args.num_steps or scale["num_steps"]
  clf = args.classifier or os.path.join(os.path.dirname(os.path.abspath(args.ldm)), "classifier.msgpack")
  judge, clf_path = digit_judge.load_judge(clf, args.workdir)
  pipe = sampling.load_pipeline(args.ldm, max_batch=500)
  n = 10 * per_class
  floor = judge.floor(n, args.seed)

  results = []  # (w, {metric: summary over seeds}, seconds per seed)
  for w in scale["ws"]:
    per_seed, secs = [], []
    for seed in seeds:
      images, labels, t = sampling.sample_classes(pipe, seed, per_class, method=args.method,
                                                  num_steps=num_steps, guidance_scale=w)
      per_seed.append(judge.scores(images, labels))
      secs.append(t)
    s = seeds_lib.summarize_scores(per_seed)
    results.append((w, s, sum(secs) / len(secs)))
    print(f"w {w:4.1f}: acc {seeds_lib.cell(s['acc'])} FD {seeds_lib.cell(s['fd'])} recall "
          f"{seeds_lib.cell(s['recall'])} diversity {seeds_lib.cell(s['diversity'])}", flush=True)

  metrics = ("acc", "fd", "precision", "recall", "diversity")
  rows = [[w, *(seeds_lib.cell(s[k]) for k in metrics), secs] for w, s, secs in results]
  rows.append(["real (floor)", floor["acc"], floor["fd"], floor["precision"], floor["recall"],
               floor["diversity"], "-"])
  wall = time.time() - t_start
  report.write_report(
      args.out, NAME, title="Ablation 6: classifier-free guidance scale (MNIST LDM)", claim=CLAIM,
      setup=[f"Model: `{args.ldm}` (EMA weights; trained with label dropout for guidance), sampling "
             f"only; classifier `{clf_path}`.",
             f"{per_class} samples per digit (N = {n}), {args.method} with {num_steps} steps; "
             f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} for every w (same "
             "initial noise per seed)" + ("; cells: mean ± sd over the seeds, verdicts only on "
                                          "differences beyond sd_a + sd_b." if len(seeds) > 1
                                          else "; one seed, so no verdict is resolved."),
             "w: guided = uncond + w (cond - uncond); w = 0 unconditional, w = 1 conditional "
             "(the paper's s).",
             report.floor_line(floor, n),
             f"Scale `{args.scale}`; wall time {wall:.0f} s on {report.devices_line()}."],
      header=["w", "class acc", "FD", "precision", "recall", "diversity (within-class)",
              "sampling s (per seed)"],
      rows=rows, verdict=_verdict(results),
      notes=["At w = 0 the class accuracy measures how often an unconditional sample happens to "
             "be the requested digit (about 0.1 for a good unconditional model).",
             "Diversity: mean pairwise distance of classifier features within each requested "
             "class; the real floor row gives the value for real digits."])
  _plot(args.out, results, floor)
  return results


def _verdict(results):
  """Each part of the claim, judged on differences beyond the seeds' spread (seeds.py)."""
  ws = [w for w, _, _ in results]
  by_w = {w: s for w, s, _ in results}
  hi, base = max(ws), (1.0 if 1.0 in by_w else min(ws))
  get = lambda w, k: by_w[w][k]
  parts = []
  acc = seeds_lib.verdict(seeds_lib.compare(get(hi, "acc"), get(base, "acc")), +1)
  parts.append(f"Class accuracy w={base:g} -> w={hi:g}: {seeds_lib.cell(get(base, 'acc'))} -> "
               f"{seeds_lib.cell(get(hi, 'acc'))}: {acc} (rises with w).")
  best = min(ws, key=lambda w: get(w, "fd")["mean"])
  if not base < best < hi:
    fd = "DISAGREES" if (seeds_lib.compare(get(best, "fd"), get(base, "fd")) == -1
                         or seeds_lib.compare(get(best, "fd"), get(hi, "fd")) == -1) else \
        seeds_lib.NOT_RESOLVED
  else:  # a moderate w is lowest: resolved only if it beats both ends beyond the spread
    below = [seeds_lib.compare(get(best, "fd"), get(w, "fd")) for w in (base, hi)]
    fd = "agrees" if below == [-1, -1] else seeds_lib.NOT_RESOLVED
  parts.append(f"FD is lowest at w = {best:g} ({seeds_lib.cell(get(best, 'fd'))}; w={base:g}: "
               f"{seeds_lib.cell(get(base, 'fd'))}, w={hi:g}: {seeds_lib.cell(get(hi, 'fd'))}): "
               f"{fd} (minimum at a moderate w > 1).")
  div = seeds_lib.verdict(seeds_lib.compare(get(hi, "diversity"), get(base, "diversity")), -1)
  rec = seeds_lib.verdict(seeds_lib.compare(get(hi, "recall"), get(base, "recall")), -1)
  parts.append(f"Diversity w={base:g} -> w={hi:g}: {seeds_lib.cell(get(base, 'diversity'))} -> "
               f"{seeds_lib.cell(get(hi, 'diversity'))}: {div}; recall "
               f"{seeds_lib.cell(get(base, 'recall'))} -> {seeds_lib.cell(get(hi, 'recall'))}: "
               f"{rec} (both fall with w).")
  return " ".join(parts)


def _plot(out, results, floor):
  plt, fig, (ax1, ax2, ax3) = report.figure(3, width=4.2)
  ws = [w for w, _, _ in results]
  get = lambda key: [s[key]["mean"] for _, s, _ in results]
  err = lambda key: [s[key]["sd"] or 0.0 for _, s, _ in results]
  ax1.errorbar(ws, get("acc"), yerr=err("acc"), fmt="o-", capsize=3)
  ax1.axhline(floor["acc"], color="gray", ls="--", label="real floor")
  ax1.set_ylabel("class accuracy")
  ax2.errorbar(ws, get("fd"), yerr=err("fd"), fmt="o-", capsize=3)
  ax2.axhline(floor["fd"], color="gray", ls="--", label="real floor")
  ax2.set_ylabel("FD (classifier features)")
  ax3.errorbar(ws, get("recall"), yerr=err("recall"), fmt="o-", capsize=3, label="recall")
  ax3.errorbar(ws, get("precision"), yerr=err("precision"), fmt="s-", capsize=3, label="precision")
  ax3b = ax3.twinx()
  ax3b.errorbar(ws, get("diversity"), yerr=err("diversity"), fmt="^:", capsize=3, color="C3",
                label="diversity")
  ax3b.set_ylabel("within-class diversity", color="C3")
  ax3.set_ylabel("precision / recall")
  ax3.legend(fontsize=7, loc="lower left")
  for ax in (ax1, ax2, ax3):
    ax.set_xlabel("guidance scale w")
  ax1.legend(fontsize=7)
  report.save_figure(plt, fig, out, NAME)


if __name__ == "__main__":
  main()
