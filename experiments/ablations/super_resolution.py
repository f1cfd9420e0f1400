"""Ablation 8: x4 super-resolution (LDM sec. 4.4, Table 5): LDM-SR (the 8x8 low-resolution image
concatenated to z_t) against bicubic upsampling and a training-free SDEdit of the bicubic image
with the class-conditional main-job LDM, on held-out MNIST digits (8x8 -> 32x32).

  nice -n 19 python -m experiments.ablations.super_resolution --scale=cpu --seeds=0,1,2 \
      --ae=workdirs/mnist/autoencoder --ldm=workdirs/mnist/ldm \
      --classifier=workdirs/mnist/classifier.msgpack --workdir=workdirs/ablations

One LDM-SR per seed (`diffusion.conditioning="concat"`, `concat.degradation="bicubic_x4"`,
p_drop 0: no guidance) on a KL f = 4 autoencoder (8x8 latents: the low-res image has the latent's
size): --ae, best the --ldm run's own (then both diffusion rows share the first stage), else the
ablations' shared one (trained if missing). Run dirs <workdir>/super_resolution/<scale>/seed<s>/
ldm_sr, reused when finished.
The low-res inputs are made as training makes them: the degradation's own function on the [-1, 1]
originals. Rows: bicubic x4 (`concat.resize_bicubic`: jax.image.resize, Keys a = -0.5, clipped),
SDEdit from the bicubic image with the `--ldm` run (`img2img` at each `--strengths`; skipped when
--ldm is empty), LDM-SR (`pipe.upscale`), and two references: the SR autoencoder's reconstruction
of the originals (the LDM-SR's ceiling) and the originals themselves. Metrics per row: PSNR / SSIM
against the originals, FD / class accuracy / precision / recall of the upscaled digits from the
digit judge; with --seeds, mean ± sd over the seeds. Writes <out>/super_resolution.md and .png.
"""

import os

if __name__ == "__main__":
  from ldm_jax import host_devices  # pylint: disable=wrong-import-position
  host_devices.simulate_one_device_per_core()  # before JAX is imported

import time  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from experiments.ablations import cli  # pylint: disable=wrong-import-position
from experiments.ablations import digit_judge  # pylint: disable=wrong-import-position
from experiments.ablations import report  # pylint: disable=wrong-import-position
from experiments.ablations import sampling  # pylint: disable=wrong-import-position
from experiments.ablations import seeds as seeds_lib  # pylint: disable=wrong-import-position
from experiments.ablations import training  # pylint: disable=wrong-import-position
from ldm_jax import images as images_lib  # pylint: disable=wrong-import-position
from ldm_jax.data import to_float  # pylint: disable=wrong-import-position
from ldm_jax.diffusion import concat  # pylint: disable=wrong-import-position
from ldm_jax.metrics import image  # pylint: disable=wrong-import-position

NAME = "super_resolution"
DEGRADATION = "bicubic_x4"
# n: held-out digits upscaled; sr_steps: LDM-SR training steps; num_steps: sampler steps (the
# paper's Table 5: 100 DDIM steps); strengths: SDEdit strengths of the --ldm row.
SCALES = {"tiny": dict(n=10, sr_steps=2, num_steps=3, strengths=(0.5,)),
          "cpu": dict(n=1000, sr_steps=2000, num_steps=100, strengths=(0.3, 0.6))}
BICUBIC, LDM_SR = "bicubic x4", "LDM-SR"
RECON, ORIGINALS, FLOOR = "AE reconstruction (ceiling)", "originals", "real (floor)"
METRICS = ("psnr", "ssim", "fd", "acc", "precision", "recall")
CLAIM = ("LDM sec. 4.4 / Table 5 (ImageNet 64 -> 256): LDM-SR (the low-res image concatenated to "
         "z_t) reaches a better FID than regression-style upsampling (image regression: FID 15.2, "
         "PSNR 27.9, SSIM 0.801; LDM-4: FID 2.8, PSNR 24.4 ± 3.8, SSIM 0.69 ± 0.14) at a lower "
         "PSNR / SSIM, which 'favor blurriness over imperfectly aligned high frequency details'. "
         "Here bicubic x4 stands in for the regression baseline: expected LDM-SR FD < bicubic FD, "
         "and LDM-SR PSNR and SSIM < bicubic's.")


def sdedit_label(strength):
  return f"SDEdit of bicubic, --ldm (strength {strength:g})"


def main(argv=None):
  args = cli.parse_args(argv, __doc__, ae=cli.LATENT_ABLATION_FLAGS["ae"],
                        ldm=("workdirs/mnist/ldm", "The class-conditional LDM run of the SDEdit "
                             "row (empty: skip that row)."),
                        strengths=("", "Comma-separated SDEdit strengths in (0, 1] (default: "
                                   "the scale's)."),
                        **cli.SAMPLER_FLAGS)
  seeds = seeds_lib.parse_seeds(args.seeds, args.seed)
  scale = SCALES[args.scale]
  strengths = _strengths(args.strengths) if args.strengths else scale["strengths"]
  num_steps = args.num_steps or scale["num_steps"]
  t_start = time.time()
  x, y = (a[:scale["n"]] for a in digit_judge.split(digit_judge.HELD_OUT))
  ldm = _load_ldm(args.ldm, x.shape[1:]) if args.ldm else None  # its errors before any training
  _, root, judge, clf_path, ae_dir = training.latent_ablation_setup(args, NAME)
  low = low_res(x)
  kw = dict(method=args.method, num_steps=num_steps)

  per_row = {}  # label -> [scores per seed]
  t0 = time.time()
  bicubic = upsample_bicubic(low, x.shape[1:3])
  per_row[BICUBIC] = [score(judge, bicubic, x, y)] * len(seeds)
  secs = {BICUBIC: time.time() - t0}
  if ldm is not None:
    ldm_pipe, call, _ = ldm
    for s in strengths:
      per_row[sdedit_label(s)], secs[sdedit_label(s)] = _per_seed(
          seeds, lambda seed, s=s: ldm_pipe.img2img(jax.random.key(seed), bicubic, s, **call(y),
                                                    **kw), judge, x, y)
  runs, sr_pipes = [], {}
  for seed in seeds:  # one LDM-SR per seed
    workdir = os.path.join(root, f"seed{seed}", "ldm_sr")
    training.check_first_stage(workdir, ae_dir, "LDM-SR")
    runs.append(training.ldm_run(workdir, ae_dir, args.scale, seed=seed, steps=scale["sr_steps"],
                                 extra={"diffusion.conditioning": "concat",
                                        "concat.degradation": DEGRADATION, "concat.p_drop": 0.0}))
    sr_pipes[seed] = sampling.load_pipeline(workdir, use_ema=True, max_batch=500)
  per_row[LDM_SR], secs[LDM_SR] = _per_seed(
      seeds, lambda seed: sr_pipes[seed].upscale(jax.random.key(seed), low, **kw), judge, x, y)
  sr_pipe = sr_pipes[seeds[-1]]
  per_row[RECON] = [score(judge, sr_pipe.reconstruct(x), x, y)] * len(seeds)  # one AE for all
  exact = score(judge, x, x, y)
  del exact["psnr"]  # infinite: the table says so
  per_row[ORIGINALS] = [exact] * len(seeds)

  results = {label: seeds_lib.summarize_scores(v) for label, v in per_row.items()}
  for label, s in results.items():
    print(f"{label:45s} " + " ".join(f"{k} {seeds_lib.cell(s[k])}" for k in METRICS if k in s),
          flush=True)
  floor = judge.floor(scale["n"], args.seed)
  _write(args, scale, seeds, num_steps, results, secs, runs, sr_pipe, floor, ae_dir, clf_path,
         ldm and ldm[2], time.time() - t_start)
  return {"rows": results, "runs": runs, "floor": floor}


def low_res(x_uint8):
  """The 8x8 inputs float [N, 8, 8, C] in [-1, 1] of originals uint8 [N, 32, 32, C], made as the
  training loss makes c: the degradation's own function on the [-1, 1] images."""
  return np.asarray(concat.get_degradation(DEGRADATION).apply(None, to_float(x_uint8)))


def upsample_bicubic(low, hw):
  """Bicubic x4 upsampling float [N, H, W, C] of low float [N, h, w, C] in [-1, 1]
  (`concat.resize_bicubic`: jax.image.resize "bicubic", Keys a = -0.5, clipped to [-1, 1])."""
  return np.asarray(concat.resize_bicubic(low, tuple(hw)))


def score(judge, images, x_uint8, labels):
  """{"psnr", "ssim"} (dB; mean over images, uint8 scale, data range 255) against the originals,
  plus the judge's scores with the true labels. images: uint8, or float in [-1, 1] (rounded to
  uint8 as the pipeline does)."""
  u8 = images if images.dtype == np.uint8 else images_lib.to_uint8(images)
  psnr = np.asarray(image.psnr(u8, x_uint8, data_range=255.0))  # inf where an image is exact
  ssim = np.asarray(image.ssim(u8, x_uint8, data_range=255.0))
  return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), **judge.scores(u8, labels)}


def _per_seed(seeds, draw, judge, x, y):
  """(scores per seed, mean seconds per seed) of draw(seed) -> images."""
  scores, secs = [], []
  for seed in seeds:
    t0 = time.time()
    images = draw(seed)
    secs.append(time.time() - t0)
    scores.append(score(judge, images, x, y))
  return scores, sum(secs) / len(secs)


def _strengths(spec):
  try:
    values = tuple(float(v) for v in spec.split(","))
  except ValueError:
    raise ValueError(f"--strengths={spec!r} is not a comma-separated list of numbers.") from None
  if not all(0.0 < v <= 1.0 for v in values):
    raise ValueError(f"--strengths={spec!r}: each SDEdit strength must lie in (0, 1].")
  return values


def _load_ldm(workdir, image_shape):
  """(pipeline (EMA weights), call, what) of the --ldm run: call(labels) gives the img2img
  keywords that make it unconditional where it can be (the null label, w = 0), `what` says in
  words what was used."""
  pipe, diffusion = sampling.load_image_ldm(workdir, image_shape, rows="the SDEdit row")
  if diffusion["conditioning"] == "none":
    return pipe, lambda y: {}, "the unconditional model"
  if diffusion.get("p_uncond", 0.0) > 0:  # the null label was trained: w = 0 is the model of p(z)
    return (pipe, lambda y: {"labels": 0, "guidance_scale": 0.0},
            "the null label alone (guidance w = 0; the label passed is unused): no class "
            "information, like the LDM-SR")
  return (pipe, lambda y: {"labels": y, "guidance_scale": 1.0},
          "the TRUE labels (w = 1; this run trained no null label, p_uncond = 0): the row reads "
          "class information the LDM-SR does not")


def _verdict(results):
  """Each part of the claim (LDM-SR lower than bicubic on FD, PSNR and SSIM) on differences beyond
  the seeds' spread (seeds.py)."""
  sr, bic = results[LDM_SR], results[BICUBIC]
  parts = []
  for key, name, digits, unit in (("fd", "FD", 3, ""), ("psnr", "PSNR", 2, " dB"),
                                  ("ssim", "SSIM", 3, "")):
    v = seeds_lib.verdict(seeds_lib.compare(sr[key], bic[key]), -1)
    parts.append(f"{name}: LDM-SR {seeds_lib.cell(sr[key], digits)}{unit} vs bicubic "
                 f"{seeds_lib.cell(bic[key], digits)}{unit}: {v} (the claim: LDM-SR lower).")
  return " ".join(parts)


def _write(args, scale, seeds, num_steps, results, secs, runs, sr_pipe, floor, ae_dir, clf_path,
           ldm_what, wall):
  latent, in_channels = sr_pipe.latent_shape, sr_pipe.unet.in_channels
  n = scale["n"]
  many = len(seeds) > 1
  rows = []
  for label, s in results.items():
    cells = [seeds_lib.cell(s[k], 2 if k == "psnr" else 3) if k in s else "inf" for k in METRICS]
    rows.append([label, *cells, secs.get(label, "-")])
  rows.append([FLOOR, "-", "-", *(floor[k] for k in ("fd", "acc", "precision", "recall")), "-"])
  train_s = [r["seconds"] for r in runs]
  setup = [
      f"{n} held-out digits (the first {n} of the test split, the same for every seed); inputs: "
      f"`concat.get_degradation('{DEGRADATION}')` (antialiased bicubic x4 shrink, the training "
      "loss's own c) of the [-1, 1] originals, 8x8, as floats.",
      f"LDM-SR: one run per seed on autoencoder `{ae_dir}` (latents {'x'.join(map(str, latent))}"
      f"; c the 8x8 image on the latent grid, concatenated: UNet input {in_channels} channels), "
      f"{scale['sr_steps']} steps, batch "
      f"{training.TRAIN_SCALES[args.scale]['batch']}, concat.p_drop 0 (no guidance), EMA weights "
      f"(decay {training.TRAIN_SCALES[args.scale]['ema_decay']:g} with LDM's warm-up); training s "
      "per seed: "
      + ", ".join(report.fmt(t, 0) if t is not None else "n/a" for t in train_s)
      + (" (reused runs: recorded times)" if any(r["reused"] for r in runs) else "") + ".",
      f"Every diffusion row: {args.method}, {num_steps} steps (eta 0), seed s for seed s's noise; "
      f"seed{'s' if many else ''} {', '.join(map(str, seeds))}"
      + ("; cells: mean ± sd over the seeds, verdicts only on differences beyond sd_a + sd_b."
         if many else "; one seed, so no verdict is resolved."),
      "PSNR (dB) and SSIM (Wang et al. 2004, 11x11 Gaussian window) per image on the uint8 "
      "scale against the 32x32 originals, averaged over images (`ldm_jax.metrics.image`); FD, "
      f"class accuracy (true labels), precision / recall from the digit judge `{clf_path}`.",
      report.floor_line(floor, n),
      f"Scale `{args.scale}`; wall time {wall:.0f} s on {report.devices_line()}."]
  notes = [
      "bicubic x4: `concat.resize_bicubic` (jax.image.resize 'bicubic', Keys a = -0.5, clipped "
      "to [-1, 1]); deterministic, so its cells and the two reference rows have sd 0.",
      f"{RECON}: decode(encode(x)) of the originals by the LDM-SR's autoencoder (posterior mean), "
      "about the best PSNR an LDM-SR sample in that latent space can reach (the originals' own "
      "latents, decoded); originals: the judge's scores of the held-out digits themselves (a "
      "perfect upscaler; PSNR infinite).",
      "The paper has no bicubic row in Table 5; its regression baseline ('Image Regression', "
      "SR3's) plays that part. There is no pixel-space diffusion baseline here: the claims against "
      "SR3 and Pixel-DM (Table 11) are not tested."]
  if ldm_what is None:
    notes.append("SDEdit row skipped: --ldm was empty.")
  else:
    notes.append(
        f"SDEdit rows (training-free): `img2img` (Meng et al. 2022) of `{args.ldm}` (EMA weights) "
        "from the bicubic image, noised to the grid step of each strength and denoised; "
        f"conditioning: {ldm_what}. `restore` was not used: it assumes white Gaussian "
        "noise of a known level, which a bicubic image's missing detail is not. Its autoencoder "
        "is the --ldm run's own, not the LDM-SR's.")
  report.write_report(
      args.out, NAME, title="Ablation 8: x4 super-resolution, 8x8 -> 32x32 (MNIST LDM-SR)",
      claim=CLAIM, setup=setup,
      header=["method", "PSNR (dB)", "SSIM", "FD", "class acc", "precision", "recall",
              "upscale s (per seed)"],
      rows=rows, verdict=_verdict(results), notes=notes)
  _plot(args.out, results, floor)


def _plot(out, results, floor):
  plt, fig, axes = report.figure(4, width=3.6, height=3.8)
  labels = [l for l in results if l != ORIGINALS]
  for ax, (key, name) in zip(axes, (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("fd", "FD"),
                                    ("acc", "class accuracy"))):
    lines = key in ("fd", "acc")
    report.row_bars(ax, results, labels, key, name, floor=floor[key] if lines else None,
                    reference=(results[ORIGINALS][key]["mean"], "originals") if lines else None)
  report.save_figure(plt, fig, out, NAME)


if __name__ == "__main__":
  main()
