"""Ablation 9: inpainting (LDM sec. 4.5, Table 7): the trained concat inpainting LDM (SD-inpainting
style, LaMa-style large masks) with and without attention in its UNet, against the training-free
RePaint path of the class-conditional main-job LDM, on held-out MNIST digits.

  nice -n 19 python -m experiments.ablations.inpainting --scale=cpu --seeds=0,1,2 \
      --ae=workdirs/mnist/autoencoder --ldm=workdirs/mnist/ldm \
      --classifier=workdirs/mnist/classifier.msgpack --workdir=workdirs/ablations

Two inpainting LDMs per seed (`diffusion.conditioning="concat"`, `concat.degradation=
"inpaint_large_masks"`, `concat.p_drop` 0.1 as in the README example; the UNet reads [z_t, m,
s E(x * (m < 0.5))]) on --ae (best the --ldm run's own, so every diffusion row shares the first
stage; else the ablations' shared KL f4 c3 one, trained if missing): with attention (`unet_variant`:
self-attention at the lowest level and in the mid block) and without (the same blocks with every
attention removed). Run dirs <workdir>/inpainting/<scale>/seed<s>/<tag>, reused when finished.
Every row fills the same held-out digits under the same masks (`eval_masks`: the project's own
`masks.large_masks`, one fixed key per image index). Rows: RePaint (`pipe.inpaint(...,
resample=U)`, Lugmayr et al. 2022) with the `--ldm` run at each U of `--resamples` (skipped when
--ldm is empty), the two trained models (`pipe.inpaint` takes the trained path on them), and two
references: the autoencoder's reconstruction and the originals. Every output is composited with
the originals outside the mask (LaMa's protocol, which Table 7 follows). Metrics per row: FD / class
accuracy (true labels) / precision / recall from the digit judge, PSNR inside the mask; with
--seeds, mean ± sd over the seeds. Writes <out>/inpainting.md and .png (the metrics per row and
the first seed's fills of the first digits).
"""

import os

if __name__ == "__main__":
  from ldm_jax import host_devices  # pylint: disable=wrong-import-position
  host_devices.simulate_one_device_per_core()  # before JAX is imported

import time  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from experiments.ablations import cli  # pylint: disable=wrong-import-position
from experiments.ablations import config_overrides  # pylint: disable=wrong-import-position
from experiments.ablations import digit_judge  # pylint: disable=wrong-import-position
from experiments.ablations import report  # pylint: disable=wrong-import-position
from experiments.ablations import sampling  # pylint: disable=wrong-import-position
from experiments.ablations import seeds as seeds_lib  # pylint: disable=wrong-import-position
from experiments.ablations import training  # pylint: disable=wrong-import-position
from ldm_jax.diffusion import masks  # pylint: disable=wrong-import-position

NAME = "inpainting"
DEGRADATION, P_DROP = "inpaint_large_masks", 0.1
MASK_SEED = 1234  # eval mask i: masks.large_masks(fold_in(key(MASK_SEED), i)), whatever the seed
# n: held-out digits filled; inpaint_steps: training steps of each inpainting LDM; num_steps:
# sampler steps (CompVis' scripts/inpaint.py: 50 DDIM steps); resamples: RePaint's U values.
SCALES = {"tiny": dict(n=10, inpaint_steps=2, num_steps=3, resamples=(1, 2)),
          "cpu": dict(n=1000, inpaint_steps=2000, num_steps=50, resamples=(1, 5))}
ATTN, NO_ATTN = "trained inpainting LDM, attention", "trained inpainting LDM, no attention"
TAGS = {ATTN: "inpaint_attn", NO_ATTN: "inpaint_no_attn"}
RECON, ORIGINALS, FLOOR = "AE reconstruction (ceiling)", "originals", "real (floor)"
METRICS = ("fd", "acc", "precision", "recall", "psnr_mask")
EXAMPLES = 8  # digits shown per row in the figure (the first seed's fills)
CLAIM = ("LDM sec. 4.5 / Table 7 (Places, LaMa's protocol): an LDM trained for inpainting, "
         "[mask, masked image] concatenated to z_t, reaches state-of-the-art FID (LDM-4 big, "
         "w/ ft: 1.50 on all masks, 9.39 at 40-50% masked, vs LaMa's 2.21 / 12.0), and attention "
         "in its UNet helps (LDM-4 w/ attn FID 2.15 vs w/o attn 2.37 on all masks, 11.87 vs 12.60 "
         "at 40-50%). The paper has no training-free baseline; RePaint (Lugmayr et al. 2022) of "
         "the main-job LDM stands in for one (the case for training an inpainting model at all). "
         "Expected here: FD of the trained model (attention) < RePaint's, and FD with attention "
         "< FD without.")


def repaint_label(u, labels):
  return f"RePaint, --ldm, {labels} (U = {u})"


def unet_variant(scale, attention):
  """UNet overrides of an inpainting LDM: the ablations' UNet of the scale (`config_overrides.
  unet_overrides`) with a UNetMidBlock2D and, with attention, self-attention after every resnet of
  the lowest level (AttnDownBlock2D / AttnUpBlock2D, the main-job LDM's placement) and between the
  mid block's resnets; without, the same blocks (DownBlock2D / UpBlock2D, mid resnet-resnet) with
  no attention anywhere."""
  o = config_overrides.unet_overrides(scale)
  levels = len(o["model.block_out_channels"])
  down, up = ("AttnDownBlock2D", "AttnUpBlock2D") if attention else ("DownBlock2D", "UpBlock2D")
  o.update({"model.down_block_types": ("DownBlock2D",) * (levels - 1) + (down,),
            "model.up_block_types": (up,) + ("UpBlock2D",) * (levels - 1),
            "model.mid_block_type": "UNetMidBlock2D", "+model.mid_block_attention": attention})
  return o


def eval_masks(n, hw):
  """The evaluation masks float32 [n, H, W] in {0, 1} (1 = fill): mask i is
  `masks.large_masks(fold_in(key(MASK_SEED), i), (1, H, W))`, so it depends on i alone."""
  key = jax.random.key(MASK_SEED)
  one = lambda i: masks.large_masks(jax.random.fold_in(key, i), (1, *hw))[0, ..., 0]
  return np.asarray(jax.jit(jax.vmap(one))(jnp.arange(n)))


def composite(images, x_uint8, m):
  """uint8 [N, H, W, C]: images where m = 1, the originals elsewhere (LaMa's evaluation)."""
  return np.where(m[..., None] > 0.5, images, x_uint8).astype(np.uint8)


def psnr_in_mask(images, x_uint8, m):
  """Mean over images of the PSNR (dB, uint8 scale) of the masked pixels alone."""
  err = (images.astype(np.float64) - x_uint8.astype(np.float64)) ** 2
  w = np.broadcast_to(m[..., None], err.shape)
  mse = (err * w).sum(axis=(1, 2, 3)) / np.maximum(w.sum(axis=(1, 2, 3)), 1.0)
  with np.errstate(divide="ignore"):
    return float(np.mean(10.0 * np.log10(255.0 ** 2 / mse)))


def score(judge, images, x_uint8, labels, m):
  """The judge's scores (true labels) of the composited images, plus "psnr_mask"."""
  filled = composite(images, x_uint8, m)
  return {"psnr_mask": psnr_in_mask(filled, x_uint8, m), **judge.scores(filled, labels)}


def main(argv=None):
  args = cli.parse_args(argv, __doc__, ae=cli.LATENT_ABLATION_FLAGS["ae"],
                        ldm=("workdirs/mnist/ldm", "The class-conditional LDM run of the RePaint "
                             "rows (empty: skip them)."),
                        resamples=("", "Comma-separated RePaint U values, increasing (default: "
                                   "the scale's)."),
                        **cli.SAMPLER_FLAGS)
  seeds = seeds_lib.parse_seeds(args.seeds, args.seed)
  scale = SCALES[args.scale]
  resamples = cli.int_list(args.resamples, "resamples") if args.resamples else scale["resamples"]
  num_steps = args.num_steps or scale["num_steps"]
  t_start = time.time()
  x, y = (a[:scale["n"]] for a in digit_judge.split(digit_judge.HELD_OUT))
  ldm = _load_ldm(args.ldm, x.shape[1:]) if args.ldm else None  # its errors before any training
  _, root, judge, clf_path, ae_dir = training.latent_ablation_setup(args, NAME)
  workdirs = {(label, seed): os.path.join(root, f"seed{seed}", tag)
              for seed in seeds for label, tag in TAGS.items()}
  for workdir in workdirs.values():  # every reused run before any sampling or training
    training.check_first_stage(workdir, ae_dir, "inpainting LDM")
  m = eval_masks(x.shape[0], x.shape[1:3])
  kw = dict(method=args.method, num_steps=num_steps)

  per_row, secs = {}, {}  # label -> [scores per seed]; label -> mean seconds per seed
  examples = {ORIGINALS: x[:EXAMPLES],  # label -> the first seed's composited fills
              "masked input": composite(np.full_like(x, 128), x, m)[:EXAMPLES]}
  if ldm is not None:
    ldm_pipe, conditionings = ldm
    for label, call in _repaint_rows(conditionings, resamples):
      per_row[label], secs[label], examples[label] = _per_seed(
          seeds, lambda seed, call=call: ldm_pipe.inpaint(jax.random.key(seed), x, m, **call(y),
                                                          **kw), judge, x, y, m)
  runs, pipes = {label: [] for label in TAGS}, {}
  for (label, seed), workdir in workdirs.items():  # both inpainting LDMs per seed
    extra = {"diffusion.conditioning": "concat", "concat.degradation": DEGRADATION,
             "concat.p_drop": P_DROP, **unet_variant(args.scale, label == ATTN)}
    runs[label].append(training.ldm_run(workdir, ae_dir, args.scale, seed=seed,
                                        steps=scale["inpaint_steps"], extra=extra))
    pipes[label, seed] = sampling.load_pipeline(workdir, use_ema=True, max_batch=500)
  for label in TAGS:
    per_row[label], secs[label], examples[label] = _per_seed(
        seeds, lambda seed, label=label: pipes[label, seed].inpaint(jax.random.key(seed), x, m,
                                                                    **kw), judge, x, y, m)
  last = {label: pipes[label, seeds[-1]] for label in TAGS}
  recon = last[ATTN].reconstruct(x)
  per_row[RECON] = [score(judge, recon, x, y, m)] * len(seeds)  # one AE for all
  examples[RECON] = composite(recon, x, m)[:EXAMPLES]
  exact = score(judge, x, x, y, m)
  del exact["psnr_mask"]  # infinite: the table says so
  per_row[ORIGINALS] = [exact] * len(seeds)

  results = {label: seeds_lib.summarize_scores(v) for label, v in per_row.items()}
  for label, s in results.items():
    print(f"{label:45s} " + " ".join(f"{k} {seeds_lib.cell(s[k])}" for k in METRICS if k in s),
          flush=True)
  floor = judge.floor(scale["n"], args.seed)
  models = {label: _unet_summary(p) for label, p in last.items()}
  if ldm is not None:
    models["ldm"] = _unet_summary(ldm[0])
  _write(args, scale, seeds, num_steps, results, secs, runs, models, last[ATTN], floor, ae_dir,
         clf_path, examples, ldm and ldm[1], float(np.mean(masks.masked_fraction(m[..., None]))),
         time.time() - t_start)
  return {"rows": results, "runs": runs, "floor": floor, "models": models}


def _repaint_rows(conditionings, resamples):
  """(label, call) of the RePaint rows: the fair conditioning (no class information, like the
  trained models) at every U, then the true labels at U = 1 when the fair one exists; only the
  true labels (at every U) when the run has no label-free model."""
  fair = [c for c in conditionings if c[2]]
  rows = []
  for name, call, _ in fair or conditionings:
    rows += [(repaint_label(u, name), lambda y, u=u, call=call: {**call(y), "resample": u})
             for u in resamples]
  if fair:
    rows += [(repaint_label(1, name), lambda y, call=call: call(y))
             for name, call, ok in conditionings if not ok]
  return rows


def _per_seed(seeds, draw, judge, x, y, m):
  """(scores per seed, mean seconds per seed, the first seed's first EXAMPLES composited fills)
  of draw(seed) -> images."""
  scores, secs, shown = [], [], None
  for seed in seeds:
    t0 = time.time()
    images = draw(seed)
    secs.append(time.time() - t0)
    scores.append(score(judge, images, x, y, m))
    if shown is None:
      shown = composite(images, x, m)[:EXAMPLES]
  return scores, sum(secs) / len(secs), shown


def _unet_summary(pipe):
  """{"params": the UNet's parameter count, "attention_blocks": its self-attention modules}."""
  leaves = jax.tree_util.tree_leaves_with_path(pipe.unet_params)
  attn = {jax.tree_util.keystr(path[:i + 1]) for path, _ in leaves
          for i, k in enumerate(path) if str(getattr(k, "key", "")).startswith("attentions_")}
  return {"params": int(sum(np.size(v) for _, v in leaves)), "attention_blocks": len(attn)}


def _load_ldm(workdir, image_shape):
  """(pipeline (EMA weights), [(name, call, fair)]) of the --ldm run: call(labels) gives the
  inpaint keywords of a conditioning; fair: it reads no class information (like the trained
  inpainting models): the null label (w = 0) or an unconditional model's."""
  pipe, diffusion = sampling.load_image_ldm(workdir, image_shape, rows="the RePaint rows",
                                            need="need")
  if diffusion["conditioning"] == "none":
    return pipe, [("unconditional", lambda y: {}, True)]
  true = ("true labels", lambda y: {"labels": y, "guidance_scale": 1.0}, False)
  if diffusion.get("p_uncond", 0.0) > 0:  # the null label was trained: w = 0 is the model of p(z)
    return pipe, [("null label", lambda y: {"labels": 0, "guidance_scale": 0.0}, True), true]
  return pipe, [true]


def _verdict(results):
  """FD of the trained model (attention) below each label-free RePaint row, and with attention
  below without, on differences beyond the seeds' spread (seeds.py)."""
  attn = results[ATTN]["fd"]
  parts = []
  repaint = [l for l in results if l.startswith("RePaint")]
  fair = [l for l in repaint if "true labels" not in l] or repaint
  for label in fair:
    v = seeds_lib.verdict(seeds_lib.compare(attn, results[label]["fd"]), -1)
    parts.append(f"FD, trained (attention) {seeds_lib.cell(attn)} vs {label} "
                 f"{seeds_lib.cell(results[label]['fd'])}: {v} (the claim: trained lower).")
  if not repaint:
    parts.append("Trained vs RePaint: not tested (--ldm was empty).")
  no_attn = results[NO_ATTN]["fd"]
  v = seeds_lib.verdict(seeds_lib.compare(attn, no_attn), -1)
  parts.append(f"FD, attention {seeds_lib.cell(attn)} vs no attention {seeds_lib.cell(no_attn)}: "
               f"{v} (the claim: attention lower).")
  return " ".join(parts)


def _write(args, scale, seeds, num_steps, results, secs, runs, models, pipe, floor, ae_dir,
           clf_path, examples, conditionings, mask_fraction, wall):
  latent, in_channels = pipe.latent_shape, pipe.unet.in_channels
  n = scale["n"]
  many = len(seeds) > 1
  rows = []
  for label, s in results.items():
    cells = [seeds_lib.cell(s[k], 2 if k == "psnr_mask" else 3) if k in s else "inf"
             for k in METRICS]
    rows.append([label, *cells, secs.get(label, "-")])
  rows.append([FLOOR, *(floor[k] for k in ("fd", "acc", "precision", "recall")), "-", "-"])
  train_s = {label: ", ".join(report.fmt(r["seconds"], 0) if r["seconds"] is not None else "n/a"
                              for r in rs) for label, rs in runs.items()}
  reused = any(r["reused"] for rs in runs.values() for r in rs)
  setup = [
      f"{n} held-out digits (the first {n} of the test split), each with its own LaMa-style large "
      f"mask (`masks.large_masks`, key fold_in(key({MASK_SEED}), i) for image i: the same masks "
      f"for every row and seed); mean masked fraction {mask_fraction:.3f}.",
      f"Trained inpainting LDMs: per seed one with attention and one without, on autoencoder "
      f"`{ae_dir}` (latents {'x'.join(map(str, latent))}; UNet input [z_t, m, masked-image "
      f"latents], {in_channels} channels), concat.degradation `{DEGRADATION}`, concat.p_drop "
      f"{P_DROP} (sampled unguided, w = 1), {scale['inpaint_steps']} steps, batch "
      f"{training.TRAIN_SCALES[args.scale]['batch']}, EMA weights (decay "
      f"{training.TRAIN_SCALES[args.scale]['ema_decay']:g} with LDM's warm-up). "
      + " ".join(f"{label}: {models[label]['params']:,} UNet parameters, "
                 f"{models[label]['attention_blocks']} self-attention blocks; training s per seed "
                 f"{train_s[label]}." for label in TAGS)
      + (" (Reused runs: recorded times.)" if reused else ""),
      f"Every diffusion row: {args.method}, {num_steps} steps (eta 0), seed s for seed s's noise; "
      f"seed{'s' if many else ''} {', '.join(map(str, seeds))}"
      + ("; cells: mean ± sd over the seeds, verdicts only on differences beyond sd_a + sd_b."
         if many else "; one seed, so no verdict is resolved."),
      "Every output is composited with the originals outside the mask (LaMa's protocol) before "
      f"scoring: FD, class accuracy (true labels), precision / recall from the digit judge "
      f"`{clf_path}`; PSNR (dB, uint8 scale) over the masked pixels alone, averaged over images.",
      report.floor_line(floor, n),
      f"Scale `{args.scale}`; wall time {wall:.0f} s on {report.devices_line()}."]
  notes = [
      "Attention ablation (`unet_variant`): with attention, self-attention after every resnet of "
      "the lowest UNet level (AttnDownBlock2D / AttnUpBlock2D) and between the UNetMidBlock2D's "
      "resnets; without, DownBlock2D / UpBlock2D and a resnet-resnet mid block "
      "(mid_block_attention False): the same resnets, no attention anywhere. The paper's 'w/o "
      "attention' model is also smaller in other ways; here only the attention blocks differ.",
      f"{RECON}: decode(encode(x)) (posterior mean) by the trained models' autoencoder, "
      f"composited: the best a model in that latent space can do; {ORIGINALS}: the digits "
      "themselves (a perfect inpainter; PSNR infinite).",
      "The trained path samples the whole latent from [z_t, c] and replaces nothing; RePaint "
      "replaces the known latents by q(z_t | E(x)) after every step (and redoes each step U "
      "times); the compositing makes the kept pixels the originals for both.",
      "Spread: the RePaint rows' sd is sampling noise alone (one --ldm model, seed s's noise); "
      "the trained rows' also holds their training seed (one model per seed)."]
  if conditionings is None:
    notes.append("RePaint rows skipped: --ldm was empty.")
  else:
    fair = [name for name, _, ok in conditionings if ok]
    notes.append(
        f"RePaint rows (training-free, Lugmayr et al. 2022): `inpaint(..., resample=U)` of "
        f"`{args.ldm}` (EMA weights, its own autoencoder; UNet {models['ldm']['params']:,} "
        f"parameters, {models['ldm']['attention_blocks']} self-attention blocks). "
        + (f"Conditioning of the verdict rows: the {fair[0]} (no class information: the trained "
           "inpainting models see no labels, so this is the fair comparison)"
           + ("; the true-labels row (w = 1) reads class information the trained models do not "
              "and is not in the verdict." if len(conditionings) > 1 else ".")
           if fair else
           "This run trained no null label (p_uncond = 0): the rows read the TRUE labels, class "
           "information the trained inpainting models do not have (the comparison favours "
           "RePaint)."))
  report.write_report(
      args.out, NAME, title="Ablation 9: inpainting with LaMa-style large masks (MNIST)",
      claim=CLAIM, setup=setup,
      header=["method", "FD", "class acc", "precision", "recall", "PSNR in mask (dB)",
              "inpaint s (per seed)"],
      rows=rows, verdict=_verdict(results), notes=notes)
  _plot(args.out, results, floor, examples)


def _plot(out, results, floor, examples):
  """FD, class accuracy and PSNR in the mask per row; the first seed's fills of the first digits
  (masked pixels gray in the input row)."""
  plt, fig, axes = report.figure(4, width=3.8, height=3.8)
  labels = [l for l in results if l != ORIGINALS]
  for ax, (key, name) in zip(axes, (("fd", "FD"), ("acc", "class accuracy"),
                                    ("psnr_mask", "PSNR in mask (dB)"))):
    lines = key in ("fd", "acc")
    report.row_bars(ax, results, labels, key, name, floor=floor[key] if lines else None,
                    reference=(results[ORIGINALS][key]["mean"], "originals") if lines else None)
  ax = axes[3]
  k = min(len(v) for v in examples.values())
  grid = np.concatenate([np.concatenate(list(v[:k]), axis=1) for v in examples.values()], axis=0)
  ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
  side = grid.shape[0] // len(examples)
  ax.set_yticks([side * (i + 0.5) for i in range(len(examples))])
  ax.set_yticklabels(list(examples), fontsize=5)
  ax.set_xticks([])
  ax.set_title("the first seed's fills, composited", fontsize=7)
  report.save_figure(plt, fig, out, NAME)


if __name__ == "__main__":
  main()
