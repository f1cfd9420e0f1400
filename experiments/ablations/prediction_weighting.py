"""Ablation 5: prediction target (eps, x0, v) x loss weighting (simple, Min-SNR-5): sample quality vs
training steps, LDMs on one autoencoder's latents, evaluated at a few checkpoints.

  nice -n 19 python -m experiments.ablations.prediction_weighting --scale=cpu --seeds=0,1,2 [--ae=...]

Each run is trained to the first checkpoint, evaluated, resumed to the next (same cosine
learning-rate schedule over the final step count), and so on. With --seeds every variant is run
once per seed (`seed_cells`: runs in <root>/seed<s>/<tag>; each checkpoint's scores cached in the
run as scores_seed<s>_steps<k>_...json, since the run only keeps its latest step; the autoencoder is
--seed's for all): mean ± sd cells, verdicts only beyond the spread. eps + simple (variant 0, the
LDM recipe) always runs: it is the budget check's baseline. Writes <out>/prediction_weighting.md and
<out>/prediction_weighting.png.
"""

import json
import os

if __name__ == "__main__":
  from ldm_jax import host_devices  # pylint: disable=wrong-import-position
  host_devices.simulate_one_device_per_core()  # before JAX is imported

import time  # pylint: disable=wrong-import-position

from experiments.ablations import cli  # pylint: disable=wrong-import-position
from experiments.ablations import evaluation  # pylint: disable=wrong-import-position
from experiments.ablations import report  # pylint: disable=wrong-import-position
from experiments.ablations import seed_cells  # pylint: disable=wrong-import-position
from experiments.ablations import seeds as seeds_lib  # pylint: disable=wrong-import-position
from experiments.ablations import training  # pylint: disable=wrong-import-position

NAME = "prediction_weighting"
# (label, prediction_type, weighting)
VARIANTS = (("eps, simple", "epsilon", "simple"), ("eps, min-SNR-5", "epsilon", "min_snr"),
            ("x0, simple", "sample", "simple"), ("x0, min-SNR-5", "sample", "min_snr"),
            ("v, simple", "v_prediction", "simple"), ("v, min-SNR-5", "v_prediction", "min_snr"))
CHECKPOINTS = {"tiny": (1, 2), "cpu": (500, 1000, 2000)}
# The sampler check: the final eps and x0 models (L_simple) also sampled as DDPM does, ancestral
# with many steps (DDPM sec. 4 samples all T = 1000; 250 of them here), in case the few-step DDIM
# of the table favours one target.
ANCESTRAL = ("eps, simple", "x0, simple")
ANCESTRAL_STEPS = {"tiny": 4, "cpu": 250}
CLAIM = ("DDPM (Ho et al. 2020, sec. 3.2/4.2): eps + L_simple gives the best samples, x0 "
         "prediction 'worse sample quality'; v-prediction (Salimans & Ho 2022) ~ eps; Min-SNR-gamma "
         "weighting (Hang et al. 2023, gamma = 5) converges faster ('3.4x' on ImageNet).")


def main(argv=None):
  args = cli.parse_args(argv, __doc__, **{
      **cli.LATENT_ABLATION_FLAGS,
      "variants": ("", "Comma-separated variant indices (default: all; 0 always runs)."),
      "checkpoints": ("", "Comma-separated step counts (default: the scale's).")})
  t_start = time.time()
  seeds = seeds_lib.parse_seeds(args.seeds, args.seed)
  variants = cli.pick_variants(args.variants, VARIANTS, always=(0,))
  checkpoints = (cli.int_list(args.checkpoints, "checkpoints") if args.checkpoints
                 else CHECKPOINTS[args.scale])
  last = checkpoints[-1]
  sc, root, judge, clf_path, ae_dir = training.latent_ablation_setup(args, NAME)

  per_seed = {(label, step): [] for label, _, _ in variants for step in checkpoints}
  cells, baseline = [], []
  for seed in seeds:
    for label, pred, weighting in variants:
      workdir = seed_cells.seed_dir(root, seed, f"{pred}_{weighting}")
      earlier = 0.0  # cumulative training seconds at the previous checkpoint
      for step in checkpoints:
        ev = _checkpoint(judge, workdir, ae_dir, args.scale, seed, step, last,
                         {"diffusion.prediction_type": pred, "diffusion.weighting": weighting,
                          "diffusion.min_snr_gamma": 5.0})
        total = ev["train_seconds"]
        stretch = None if total is None or earlier is None else total - earlier
        earlier = total
        cells.append(({"commit": ev["train_commit"], "seconds": stretch,
                       "reused": ev["reused"]}, ev))
        per_seed[(label, step)].append({**ev, "train_s": total})
        print(f"seed {seed} {label:16s} step {step:5d}: FD {ev['fd']:.3f} acc {ev['acc']:.3f}"
              f"{' (reused)' if ev['reused'] else ''}", flush=True)
      if (pred, weighting) == VARIANTS[0][1:]:
        baseline.append((seed, workdir, last))
  _, _, budget = seed_cells.budget_check(judge, baseline, args.scale, VARIANTS[0][0])
  # the sampler check, on each seed's final models (the runs now hold step `last`)
  ancestral = {}
  for label, pred, weighting in variants:
    if label in ANCESTRAL:
      scores = [_ancestral_scores(judge, seed_cells.seed_dir(root, seed, f"{pred}_{weighting}"),
                                  args.scale, seed, last) for seed in seeds]
      cells.extend(({"commit": s["commit"], "seconds": 0.0, "reused": s["reused"]}, s)
                   for s in scores)
      ancestral[label] = seeds_lib.summarize_scores(scores)

  # (label, step, {metric: summary over the seeds}); bpd only at the final checkpoint
  results = [(label, step, seeds_lib.summarize_scores(v)) for (label, step), v in per_seed.items()]
  n = 10 * sc["per_class"]
  floor = judge.floor(n, args.seed)
  metrics = ("loss", "fd", "acc", "precision", "recall", "bpd", "bpd_se", "train_s")
  rows = [[label, step, *(seeds_lib.cell(s[k]) if k in s else "-" for k in metrics)]
          for label, step, s in results]
  many = ANCESTRAL_STEPS[args.scale]
  rows += [[f"{label}: DDPM {many} steps", last,
            *(seeds_lib.cell(s[k]) if k in s and k != "train_s" else "-" for k in metrics)]
           for label, s in ancestral.items()]
  rows.append(["real (floor)", "-", "-", floor["fd"], floor["acc"], floor["precision"],
               floor["recall"], "-", "-", "-"])
  wall = time.time() - t_start
  report.write_report(
      args.out, NAME, title="Ablation 5: prediction target and loss weighting (MNIST LDM)",
      claim=CLAIM,
      setup=[f"Autoencoder `{ae_dir}` (KL, f = 4, latents scaled to unit std; trained with seed "
             f"{args.seed}) shared by every cell: only the LDM cells vary by seed.",
             f"Checkpoints at {', '.join(map(str, checkpoints))} steps (cosine LR decay over "
             f"{last}), batch {sc['batch']}, EMA decay {sc['ema_decay']:g}, LDM's scaled-linear "
             "schedule; Min-SNR weight min(SNR, 5) expressed for each target by "
             "`ldm_jax.diffusion.losses`.",
             seed_cells.seeds_line(seeds, root), seed_cells.eval_line(args.scale, clf_path),
             f"Sampler check (rows \"...: DDPM {many} steps\"): the final {' and '.join(ANCESTRAL)} "
             f"models sampled ancestrally (DDPM, {many} of the T = 1,000 steps, same N, seeds and "
             "weights), as DDPM's comparison sampled, in case few-step DDIM favours one target.",
             f"Latent bits/dim (final checkpoint; its se: the standard error over images, mean over "
             f"the seeds): the variational bound on -log p(z | label) of the first "
             f"{sc['bpd_images']} held-out images' scaled latents, all T levels, one noise draw each "
             "(`LatentDiffusionPipeline.latent_bits_per_dim`, same weights as the samples). It is a "
             "bound on a density of the latents, not an image likelihood; lower is a better fit, "
             "comparable here because every run shares the autoencoder.",
             budget, report.floor_line(floor, n), seed_cells.provenance_line(cells, wall)],
      header=["target, weighting", "train steps", "train loss", "FD", "class acc", "precision",
              "recall", "latent bits/dim", "its se", "train s (cumulative)"],
      rows=rows, verdict=_verdict(results, checkpoints, ancestral, many),
      notes=["Train losses are on different targets/weights and are not comparable across rows."])
  _plot(args.out, results, floor)
  return results


def _ancestral_scores(judge, workdir, scale, seed, last):
  """Scores of the final model in workdir (trained to `last`) sampled by DDPM's ancestral sampler
  with ANCESTRAL_STEPS (the sampler check), cached in the run beside the DDIM scores."""
  sc = training.TRAIN_SCALES[scale]
  with open(os.path.join(workdir, "eval.json"), encoding="utf-8") as f:
    trained = json.load(f)["steps"]
  if trained != last:
    raise ValueError(f"{workdir} holds step {trained}, not the final checkpoint {last}: the "
                     "sampler check scores the final model only.")
  many = ANCESTRAL_STEPS[scale]
  settings = {"steps": last, "ema": int(sc["use_ema"]), "ddpm": many, "n": 10 * sc["per_class"],
              "w": 1.0, "decay": last}
  return seed_cells.cached_scores(
      workdir, seed, settings,
      lambda: evaluation.evaluate_ldm(judge, workdir, scale, seed=seed, method="ddpm",
                                      num_steps=many, use_ema=sc["use_ema"]))


def _checkpoint(judge, workdir, ae_dir, scale, seed, step, last, extra):
  """Scores of the run in workdir trained (resumed) to `step` (cosine decay over `last`), with
  "train_seconds" (cumulative), "train_commit" and "loss"; cached in the run
  (`seed_cells.cached_scores`): a rerun reuses them without training (the run itself only holds
  its latest step, so retraining or re-scoring would report a later model)."""
  sc = training.TRAIN_SCALES[scale]
  settings = seed_cells.eval_settings(scale, step, w=1.0, decay=last)
  run = None
  if not os.path.exists(seed_cells.scores_path(workdir, seed, settings)):
    run = training.ldm_run(workdir, ae_dir, scale, seed=seed, steps=step, decay_steps=last,
                           extra=extra)

  def compute():
    ev = evaluation.evaluate_ldm(judge, workdir, scale, seed=seed, use_ema=sc["use_ema"])
    ev.update(train_seconds=run["seconds"], train_commit=run.get("commit"),
              loss=float(run["final_metrics"]["loss"]))
    if step == last:  # the likelihood costs T model calls per image: final checkpoint only
      ev["bpd"], ev["bpd_se"] = evaluation.latent_bits_per_dim(
          workdir, sc["bpd_images"], seed=seed, use_ema=sc["use_ema"])
    return ev

  return seed_cells.cached_scores(workdir, seed, settings, compute)


def _verdict(results, checkpoints, ancestral=None, many=None):
  """eps vs x0, v ~ eps and Min-SNR vs simple on FD, each resolved only beyond the seeds' spread;
  ancestral: {label: summaries} of the sampler check (DDPM with `many` steps), eps vs x0 again."""
  last = checkpoints[-1]
  fd = {(label, step): s["fd"] for label, step, s in results}
  cell = seeds_lib.cell
  final = {label: f for (label, step), f in fd.items() if step == last}
  parts = [f"Final FD ({last} steps): "
           + ", ".join(f"{k} {cell(v)}" for k, v in final.items()) + "."]
  if "eps, simple" in final and "x0, simple" in final:
    word = seeds_lib.verdict(seeds_lib.compare(final["eps, simple"], final["x0, simple"]), -1)
    parts.append(f"eps vs x0 (simple): {word} (eps better).")
  if ancestral and all(k in ancestral for k in ("eps, simple", "x0, simple")):
    eps, x0 = ancestral["eps, simple"]["fd"], ancestral["x0, simple"]["fd"]
    word = seeds_lib.verdict(seeds_lib.compare(eps, x0), -1)
    parts.append(f"Sampled as DDPM did (ancestral, {many} steps): eps {cell(eps)} vs x0 "
                 f"{cell(x0)}: {word} (eps better).")
  if "eps, simple" in final and "v, simple" in final:
    # an equality claim: only a difference can be resolved, and it contradicts "v ~ eps"
    differ = seeds_lib.compare(final["v, simple"], final["eps, simple"]) != 0
    ratio = final["v, simple"]["mean"] / final["eps, simple"]["mean"]
    parts.append(f"v vs eps (simple): FD ratio {ratio:.2f}, "
                 f"{'DISAGREES' if differ else seeds_lib.NOT_RESOLVED} (v ~ eps; a tie is never "
                 "resolved, only a difference beyond the spread).")
  for target in ("eps", "x0", "v"):
    steps = [k for k in checkpoints
             if (f"{target}, simple", k) in fd and (f"{target}, min-SNR-5", k) in fd]
    if steps:
      words = [seeds_lib.verdict(seeds_lib.compare(fd[(f"{target}, min-SNR-5", k)],
                                                   fd[(f"{target}, simple", k)]), -1) for k in steps]
      overall = _overall(words)
      parts.append(f"Min-SNR-5 vs simple ({target}), FD at steps "
                   f"{', '.join(f'{k}: {w}' for k, w in zip(steps, words))}; overall {overall} "
                   "(Min-SNR converges faster).")
  bpd = {label: s["bpd"] for label, step, s in results if step == last and "bpd" in s}
  if len(bpd) > 1:
    best = min(bpd, key=lambda k: bpd[k]["mean"])
    parts.append(f"Lowest latent bound: {best} ({cell(bpd[best])} bits/dim); not a claim the papers "
                 "make for these variants, reported for the record.")
  return " ".join(parts)


def _overall(words):
  """agrees / DISAGREES when the resolved checkpoints all say so, "mixed" when they split, else not
  resolved."""
  agree, disagree = "agrees" in words, "DISAGREES" in words
  if agree and disagree:
    return "mixed"
  return "agrees" if agree else ("DISAGREES" if disagree else seeds_lib.NOT_RESOLVED)


def _plot(out, results, floor):
  plt, fig, (ax1, ax2) = report.figure(2)
  for label in dict.fromkeys(r[0] for r in results):
    pts = [(step, s) for lab, step, s in results if lab == label]
    style = "--" if "min-SNR" in label else "-"
    for ax, key in ((ax1, "fd"), (ax2, "acc")):
      ax.errorbar([p[0] for p in pts], [p[1][key]["mean"] for p in pts],
                  yerr=[p[1][key]["sd"] or 0.0 for p in pts], fmt="o" + style, capsize=3,
                  label=label)
  ax1.axhline(floor["fd"], color="gray", ls=":", label="real floor")
  ax1.set_ylabel("FD")
  ax2.set_ylabel("class accuracy")
  for ax in (ax1, ax2):
    ax.set_xlabel("training steps")
  ax1.legend(fontsize=7)
  report.save_figure(plt, fig, out, NAME)


if __name__ == "__main__":
  main()
