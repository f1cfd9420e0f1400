"""Text-to-image at CPU scale: does per-token cross-attention compose "3 left of seven"?

  python -m experiments.mnist_text_to_image [--workdir=workdirs/mnist_text] [--ldm_steps=N]

Steps (embedded offline MNIST; every stage resumes from its checkpoints, so the job runs in
chunks: stop it any time and start the same command again):
  1. the digit classifier of the ablations (the judge), trained on mnist_embedded's train split;
  2. the MNIST autoencoder (experiments/configs/mnist_autoencoder.py), or --ae_workdir's: it is
     fully convolutional, so the 32 x 32 digit model encodes the 32 x 64 canvas (8 x 16 x 3);
  3. the text LDM (experiments/configs/mnist_text.py: a 2-layer transformer text encoder trained
     jointly with a cross-attention UNet) in <workdir>/ldm, and the pooled-embedding baseline
     (--config.text.pooled: one mean vector per caption, no per-token attention) in
     <workdir>/pooled, with the same UNet, steps and data; with --encoder_lr_scale=k, the text
     model again with its encoder at k x the learning rate (text.lr_scale) in
     <workdir>/encoder_lr<k>;
  3a. with --contrastive_steps=n, Stable Diffusion's route: the same encoder pretrained
     contrastively against images for n steps (a tiny CLIP, experiments/contrastive_text_encoder.py)
     into the diffusers folder <workdir>/contrastive_encoder, then frozen
     (text.pretrained + text.train_encoder=False) under the same UNet in
     <workdir>/frozen_contrastive;
  3b. with --class_tokens, the diagnostic "class_tokens" in <workdir>/class_tokens: captions "3 7"
     (data.caption_style="digits") and an encoder of 0 layers, so the context is two fixed class
     tokens (each digit's token embedding + its position), nothing mixed by attention and no
     syntax to parse. If it binds each digit to its half where the full model does not, the
     jointly trained encoder (or the grammar) is the bottleneck; if not, the UNet's
     cross-attention at this scale and training length is;
  4. for every ordered pair, samples_per_pair samples from captions cycling through the grammar's
     phrasings and numeral / word forms; the judge classifies the left (columns 0-31) and right
     (32-63) halves. Pair accuracy: both halves as asked, on the 90 seen pairs and on the 10
     HELD-OUT pairs (d, d + 3 mod 10) no caption in training ever named. Swap rate: samples that
     show (b, a) instead of (a, b), a != b. Right-first accuracy: pair accuracy of the phrasings
     that name the right digit first ("{b} right of {a}", "{b} after {a}", ...).
Results: <workdir>/results.json, a prompt grid, and the report (--report=experiments/results/
mnist_text_to_image.md refreshes the committed one).
"""

import json
import os
import time

from absl import app, flags, logging
import jax
import numpy as np
from PIL import Image

from experiments.ablations import config_overrides
from experiments.ablations import digit_judge
from experiments.ablations import report
from experiments.ablations import training
from experiments import contrastive_text_encoder
from experiments.configs import mnist_autoencoder, mnist_text
from ldm_jax import launch
from ldm_jax.data import mnist_pairs
from ldm_jax.pipeline import LatentDiffusionPipeline, image_grid

flags.DEFINE_enum("scale", "cpu", ["cpu", "tiny"], "cpu: the configs as they are; tiny: a tiny "
                  "autoencoder, UNet and text encoder and a 30-step judge (seconds per step; "
                  "for tests).")
flags.DEFINE_string("workdir", "workdirs/mnist_text", "Directory of the runs.")
flags.DEFINE_string("ae_workdir", "", "An MNIST autoencoder run to reuse ('': train "
                    "<workdir>/autoencoder).")
flags.DEFINE_integer("ae_steps", 0, "Autoencoder steps (0: the config's).")
flags.DEFINE_integer("ldm_steps", 6000, "Steps of the text LDM and of the pooled baseline.")
flags.DEFINE_integer("stop_at", 0, "Train each LDM only to this step of its ldm_steps schedule "
                     "and evaluate there (a chunk; 0: to the end). A later run continues.")
flags.DEFINE_integer("batch", 64, "Global batch size of both LDMs.")
flags.DEFINE_integer("samples_per_pair", 10, "Samples per ordered pair (100 pairs).")
flags.DEFINE_list("guidance_scales", ["2", "4"], "Classifier-free guidance scales w at which every "
                  "model is evaluated (a table row each).")
flags.DEFINE_bool("pooled", True, "Also train and evaluate the pooled-embedding baseline.")
flags.DEFINE_bool("class_tokens", False, "Also train and evaluate the two-class-token diagnostic "
                  "(captions '{a} {b}', a 0-layer encoder).")
flags.DEFINE_float("encoder_lr_scale", 0.0, "Also train and evaluate the text model with its "
                   "encoder at this multiple of the learning rate (text.lr_scale), in "
                   "<workdir>/encoder_lr<scale> (0: not).")
flags.DEFINE_integer("contrastive_steps", 0, "Also pretrain the text encoder contrastively for "
                     "this many steps and train and evaluate the LDM with it frozen, in "
                     "<workdir>/frozen_contrastive (0: not).")
flags.DEFINE_integer("contrastive_batch", 256, "Batch of the contrastive pretraining.")
flags.DEFINE_string("report", "", "Markdown report ('': <workdir>/report.md).")
FLAGS = flags.FLAGS

_TINY_AE = {**config_overrides.tiny_autoencoder_overrides(f=4, z_channels=3), "train.num_steps": 2,
            "train.global_batch_size": 8, "train.image_every": 0, "train.save_every": 0}
_TINY_LDM = {"model.block_out_channels": (8,), "model.layers_per_block": 1,
             "model.down_block_types": ("CrossAttnDownBlock2D",),
             "model.up_block_types": ("CrossAttnUpBlock2D",), "model.mid_block_type": None,
             "model.norm_num_groups": 4, "model.attention_head_dim": 8,
             "text.encoder.width": 16, "text.encoder.layers": 1, "text.encoder.heads": 2,
             "text.encoder.head_dim": 8, "text.encoder.mlp_dim": 32, "diffusion.num_timesteps": 100,
             "sample.num_steps": 2, "sample.per_class": 1, "train.image_every": 0,
             "train.save_every": 0, "optim.warmup_steps": 1}


# Each model's config overrides beside the shared ones, and the caption style it is prompted in.
MODELS = {"cross_attention": ({}, "grammar"), "pooled": ({"text.pooled": True}, "grammar"),
          "class_tokens": ({"data.caption_style": "digits", "text.encoder.layers": 0}, "digits")}


def evaluate(pipe, judge, pairs, per_pair, seed, guidance_scale, caption_style="grammar"):
  captions, a, b, phrasing = mnist_pairs.pair_prompts(pairs, per_pair, caption_style)
  s = pipe.defaults
  images = np.concatenate([
      pipe.sample(jax.random.key(seed + i), len(captions[i:i + 100]), prompts=captions[i:i + 100],
                  method=s["method"], num_steps=s["num_steps"], guidance_scale=guidance_scale)
      for i in range(0, len(captions), 100)])
  left, right = judge.predict(images[:, :, :32]), judge.predict(images[:, :, 32:])
  ok = (left == a) & (right == b)
  distinct = a != b
  right_first = np.isin(phrasing, mnist_pairs.RIGHT_FIRST)
  return images, captions, {
      "num_samples": int(len(captions)),
      "pair_accuracy": float(ok.mean()),
      "left_accuracy": float((left == a).mean()), "right_accuracy": float((right == b).mean()),
      "swap_rate": float(((left == b) & (right == a))[distinct].mean()) if distinct.any() else 0.0,
      "right_first_accuracy": float(ok[right_first].mean()) if right_first.any() else None,
      "left_first_accuracy": float(ok[~right_first].mean()) if (~right_first).any() else None,
  }


def side_probe(pipe, ridge=1e-2):
  """Does the encoder's output at a digit's token say which side the digit is on?

  For every caption of distinct digits (all phrasings, numeral / word forms), the context vectors
  at the two digit tokens, labelled left / right; a linear probe (ridge regression on +-1, closed
  form) fitted on the seen pairs' captions is scored on the 10 held-out pairs' captions. Cross-
  attention keys are linear in these vectors, so a probe near 50% means the UNet cannot tell the
  sides apart from the context; 100% means the encoder binds each digit to its side. None for
  contexts without per-token vectors (the pooled baseline).
  """
  tok = pipe.prompt_encoder.tokenizer
  caps, where, held = [], [], []
  for a, b in mnist_pairs.SEEN_PAIRS + mnist_pairs.HELD_OUT_PAIRS:
    if a == b:
      continue
    for p in range(len(mnist_pairs.PHRASINGS)):
      for aw in (False, True):
        for bw in (False, True):
          c = mnist_pairs.caption(a, b, p, aw, bw)
          tokens = tok.encode(c).tokens
          where.append((tokens.index(mnist_pairs.digit_name(a, aw)),
                        tokens.index(mnist_pairs.digit_name(b, bw))))
          caps.append(c)
          held.append((a, b) in mnist_pairs.HELD_OUT_PAIRS)
  ctx = np.concatenate([pipe.encode_prompt(caps[i:i + 256]) for i in range(0, len(caps), 256)])
  if ctx.shape[1] <= max(max(w) for w in where):
    return None
  rows = np.arange(len(caps))
  x = np.concatenate([ctx[rows, [w[0] for w in where]], ctx[rows, [w[1] for w in where]]])
  x = np.concatenate([x, np.ones((len(x), 1))], 1).astype(np.float64)
  y = np.concatenate([np.ones(len(caps)), -np.ones(len(caps))])  # +1: the left digit's token
  held = np.concatenate([held, held])
  w = np.linalg.solve(x[~held].T @ x[~held] + ridge * np.eye(x.shape[1]), x[~held].T @ y[~held])
  acc = lambda m: float(((x[m] @ w > 0) == (y[m] > 0)).mean())
  return {"fit_seen": acc(~held), "held_out": acc(held)}


def main(_):
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  launch.start()
  t0 = time.time()
  os.makedirs(FLAGS.workdir, exist_ok=True)
  # tiny scale (tests): a 30-step judge, as tests/test_ablations.py trains (only the plumbing counts)
  judge, _ = digit_judge.load_judge("", FLAGS.workdir, steps=30 if FLAGS.scale == "tiny" else 600)
  ae_dir = FLAGS.ae_workdir or os.path.join(FLAGS.workdir, "autoencoder")
  ae = {"reused": True}
  if not FLAGS.ae_workdir:
    ae_overrides = _TINY_AE if FLAGS.scale == "tiny" else {}
    ae = training.train_run(mnist_autoencoder.get_config, ae_dir,
                            {**ae_overrides,
                             **({"train.num_steps": FLAGS.ae_steps} if FLAGS.ae_steps else {})})
  runs = {"cross_attention": os.path.join(FLAGS.workdir, "ldm")}
  if FLAGS.class_tokens:
    runs["class_tokens"] = os.path.join(FLAGS.workdir, "class_tokens")
  if FLAGS.pooled:
    runs["pooled"] = os.path.join(FLAGS.workdir, "pooled")
  if FLAGS.encoder_lr_scale:
    k = f"{FLAGS.encoder_lr_scale:g}"
    MODELS[f"encoder_lr{k}"] = ({"text.lr_scale": FLAGS.encoder_lr_scale}, "grammar")
    runs[f"encoder_lr{k}"] = os.path.join(FLAGS.workdir, f"encoder_lr{k}")
  results_path = os.path.join(FLAGS.workdir, "results.json")
  results = {"models": {}}
  if os.path.exists(results_path):  # models evaluated by an earlier chunk of this job
    with open(results_path, encoding="utf-8") as f:
      results = json.load(f)
  results.setdefault("seconds", {})["autoencoder"] = ae.get("seconds") or 0.0
  if FLAGS.contrastive_steps:
    encoder_dir = os.path.join(FLAGS.workdir, "contrastive_encoder")
    text_config = config_overrides.apply_overrides(
        mnist_text.get_config(), _TINY_LDM if FLAGS.scale == "tiny" else {}).text
    results["contrastive_encoder"] = contrastive_text_encoder.train(
        text_config, encoder_dir, steps=FLAGS.contrastive_steps, batch=FLAGS.contrastive_batch)
    print(f"contrastive encoder: {results['contrastive_encoder']}", flush=True)
    MODELS["frozen_contrastive"] = ({"text.pretrained": encoder_dir,
                                     "text.train_encoder": False}, "grammar")
    runs["frozen_contrastive"] = os.path.join(FLAGS.workdir, "frozen_contrastive")
  for name, workdir in runs.items():  # each model: train (or resume), then evaluate, then save
    steps = min(FLAGS.stop_at or FLAGS.ldm_steps, FLAGS.ldm_steps)
    overrides = {"first_stage.workdir": ae_dir, "train.num_steps": steps,
                 "optim.decay_steps": FLAGS.ldm_steps, "train.global_batch_size": FLAGS.batch,
                 **(_TINY_LDM if FLAGS.scale == "tiny" else {}), **MODELS[name][0]}
    summary = training.train_run(mnist_text.get_config, workdir, overrides)
    print(f"{name}: {summary['steps']} steps, {summary['seconds']} s", flush=True)
    done = results["models"].get(name, {})
    if (done.get("steps") == summary["steps"]
        and done.get("samples_per_pair") == FLAGS.samples_per_pair
        and sorted(done.get("by_guidance", {})) == sorted(_scales())):
      if "side_probe" not in done and jax.process_index() == 0:  # evaluated before the probe
        done["side_probe"] = (side_probe(LatentDiffusionPipeline.from_workdir(workdir))
                              if MODELS[name][1] == "grammar" else None)
        with open(results_path, "w", encoding="utf-8") as f:
          json.dump(results, f, indent=1, default=float)
      continue  # evaluated already
    if jax.process_index() == 0:
      results["models"][name] = _evaluate_run(name, workdir, judge, summary)
      results.update(devices=report.devices_line(), commit=_commit(),
                     load_average=[round(x, 2) for x in os.getloadavg()],
                     ldm_steps=FLAGS.ldm_steps, batch=FLAGS.batch)
      with open(results_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, default=float)
      # The report after each model, so a job stopped during the next model keeps this one's.
      _report(results, FLAGS.report or os.path.join(FLAGS.workdir, "report.md"))
  if jax.process_index() == 0:
    results["seconds"]["total_this_chunk"] = time.time() - t0
    _report(results, FLAGS.report or os.path.join(FLAGS.workdir, "report.md"))


def _scales():
  return [f"{float(w):g}" for w in FLAGS.guidance_scales]


def _evaluate_run(name, workdir, judge, summary):
  """Pair accuracies of one trained run at each guidance scale, and a prompt grid per scale
  (<workdir>/samples_<name>_w<w>.png)."""
  t0 = time.time()
  pipe = LatentDiffusionPipeline.from_workdir(workdir, shard=jax.process_count() == 1)
  n, style = FLAGS.samples_per_pair, MODELS[name][1]
  by_guidance = {}
  for w in _scales():  # the same seeds at every scale
    seen_imgs, seen_caps, seen = evaluate(pipe, judge, mnist_pairs.SEEN_PAIRS, n, 0, float(w), style)
    held_imgs, held_caps, held = evaluate(pipe, judge, mnist_pairs.HELD_OUT_PAIRS, n, 10_000,
                                          float(w), style)
    by_guidance[w] = {"seen": seen, "held_out": held}
    # Grid: one row per held-out pair, then five seen pairs (first 8 samples each).
    rows = [held_imgs[i * n:][:8] for i in range(10)] + [seen_imgs[i * n:][:8] for i in range(0, 90, 19)]
    grid = image_grid(np.concatenate(rows), rows=len(rows))
    path = os.path.join(FLAGS.workdir, f"samples_{name}_w{w}.png")
    Image.fromarray(grid[..., 0]).save(path)
    with open(path.replace(".png", "_rows.txt"), "w", encoding="utf-8") as f:
      f.write("\n".join([held_caps[i * n] for i in range(10)] + [seen_caps[i * n] for i in range(0, 90, 19)]))
  out = {"by_guidance": by_guidance, "side_probe": side_probe(pipe) if style == "grammar" else None,
         "train_seconds": summary["seconds"],
         "steps": summary["steps"], "samples_per_pair": n, "defaults": pipe.defaults,
         "eval_seconds": time.time() - t0, "commit": _commit()}
  print(name, json.dumps(out, indent=1), flush=True)
  return out


def _commit():
  import subprocess  # pylint: disable=import-outside-toplevel
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _report(r, path):
  pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"
  lines = ["# MNIST pairs: text-to-image composition (issue 13)", "",
           "Steps reached per model are in the table; fewer than the schedule's means an "
           "intermediate chunk (learning rate not yet decayed).", "",
           f"Commit {r['commit']}, {r['devices']}, load average at the end "
           f"{'/'.join(f'{x:.2f}' for x in r['load_average'])}. Both LDMs: {r['ldm_steps']} steps "
           f"at batch {r['batch']}; {FLAGS.samples_per_pair} samples per ordered pair, judged by "
           "the project's digit classifier on each 32 x 32 half. Targets: >= 90% on seen pairs, "
           ">= 80% on the 10 held-out pairs.", "",
           "| model | guidance w | seen pairs | held-out pairs | swap rate (seen) | right-first phrasings "
           "(seen) | left / right digit (seen) | side probe (held-out captions) | steps | "
           "train time (s) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for name, m in r["models"].items():
    for w, g in m["by_guidance"].items():
      s, h = g["seen"], g["held_out"]
      lines.append(f"| {name} | {w} | {pct(s['pair_accuracy'])} | {pct(h['pair_accuracy'])} | "
                   f"{pct(s['swap_rate'])} | {pct(s['right_first_accuracy'])} | "
                   f"{pct(s['left_accuracy'])} / {pct(s['right_accuracy'])} | "
                   f"{pct((m.get('side_probe') or {}).get('held_out'))} | {m['steps']} | "
                   f"{m['train_seconds'] or 0:.0f} |")
  missing = [m for m in ("cross_attention", "pooled") if m not in r["models"]]
  if "class_tokens" in r["models"]:
    lines += ["", "class_tokens is the diagnostic: captions \"{a} {b}\" (\"3 7\") and a 0-layer "
              "encoder, so its context is two fixed class tokens; its right-first column is n/a "
              "(one phrasing)."]
  ce = r.get("contrastive_encoder")
  if ce and "frozen_contrastive" in r["models"]:
    lines += ["", f"frozen_contrastive: the cross_attention model's encoder, pretrained for "
              f"{ce['steps']} steps at batch {ce['batch']} with CLIP's contrastive loss against a "
              f"small image tower ({ce['seconds']:.0f} s; experiments/contrastive_text_encoder.py), "
              "then frozen. Its caption -> image retrieval among the 100 ordered pairs' captions: "
              f"{pct(ce['retrieval_test'])} on seen pairs (new images), "
              f"{pct(ce['retrieval_heldout'])} on the held-out pairs."]
  lines += ["", "Side probe: a linear probe of the context vector at each digit's token (left or "
            "right digit?), fitted on the seen pairs' captions and scored on the held-out pairs' "
            "(chance 50%; n/a: no per-token context). Cross-attention keys are linear in these "
            "vectors, so it measures whether the encoder binds each digit to its side."]
  if missing:
    lines += ["", f"Not yet trained and evaluated: {', '.join(missing)} (run the job again)."]
  lines += ["", f"Autoencoder: {r['seconds']['autoencoder']:.0f} s (0 when reused); evaluation "
            "time per model in results.json.", ""]
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
