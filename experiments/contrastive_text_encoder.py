"""Pretrains the MNIST-pairs text encoder contrastively (a tiny CLIP) for a frozen-encoder LDM.

  python -m experiments.contrastive_text_encoder --out=workdirs/mnist_text/contrastive_encoder \
      [--steps=1000] [--batch=256]

Stable Diffusion's route at CPU scale: the encoder of experiments/configs/mnist_text.py (the same
BERTEmbedder and word-level tokenizer the jointly trained LDM uses) is trained with CLIP's
symmetric contrastive loss against a small image tower (ldm_jax.models.text_image_contrast) on
mnist_pairs' train split, which never shows the 10 held-out pairs. A batch of 256 draws from 90
ordered pairs holds most pairs' swaps ("3 left of 7" beside an image of 7 | 3), so the loss can
only fall if the caption's vector says which digit is on which side. The encoder is then written
as a diffusers folder (tokenizer/ + bert/, ldm_jax.text.save_prompt_encoder), which the LDM loads
frozen: --config.text.pretrained=<out> --config.text.train_encoder=False.

AdamW (weight decay 0.01), linear warm-up then cosine decay to 5% of the peak. The folder also
holds contrastive.json: steps, seconds, the last loss, and retrieval accuracies (each image of
mnist_pairs' "test" and "heldout" splits against the 100 ordered pairs' captions in the first
phrasing, numerals: the caption with the highest logit must be its own pair's). The folder is
written whole or not at all; an existing one trained for the same steps is reused.
"""

import json
import os
import shutil
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.configs import mnist_text
from ldm_jax import text as text_lib
from ldm_jax.data import mnist_pairs
from ldm_jax.models.text_image_contrast import (TextImageContrast, contrastive_loss,
                                                images_to_unit_range)
from ldm_jax.stages import builders

SUMMARY_FILE = "contrastive.json"


def pair_captions(caption_style: str) -> list:
  """The caption of every ordered pair (a, b) at index 10 a + b (the label's order)."""
  if caption_style == "digits":
    return [mnist_pairs.DIGITS_CAPTION.format(a=a, b=b) for a in range(10) for b in range(10)]
  return [mnist_pairs.caption(a, b, 0, False, False) for a in range(10) for b in range(10)]


def retrieval_accuracy(model, params, tokenizer, split, caption_style, n=500):
  """Fraction of the first n images of mnist_pairs `split` whose highest-logit caption among the
  100 ordered pairs' is their own pair's."""
  images, labels = mnist_pairs.MnistPairs(split, caption_style).read(np.arange(n))
  ids = jnp.asarray(text_lib.tokenize(tokenizer, pair_captions(caption_style)))
  logits = model.apply({"params": params}, ids, images_to_unit_range(images))  # [100, n]
  return float((np.asarray(logits).argmax(0) == labels).mean())


def _batch(source, tokenizer, step, batch, seed):
  idx = np.random.default_rng([seed, step]).integers(source.num_examples, size=batch)
  images, _ = source.read(idx)
  return text_lib.tokenize(tokenizer, source.captions(idx)), images


def train(text_config: ml_collections.ConfigDict, out: str, *, steps=1000, batch=256,
          learning_rate=1e-3, warmup_steps=100, seed=0, caption_style="grammar",
          embed_dim=64, log_every=100) -> dict:
  """Trains text_config's tokenizer + encoder contrastively on mnist_pairs/train and writes them
  to `out` (module docstring); returns the summary (also out/contrastive.json)."""
  if text_config.pretrained:
    raise ValueError(f"text.pretrained={text_config.pretrained!r}: contrastive pretraining starts "
                     "from a new encoder (text.encoder); leave text.pretrained empty.")
  if steps < 1 or batch < 2:
    raise ValueError(f"steps={steps}, batch={batch}: need steps >= 1 and batch >= 2 (the "
                     "contrastive loss needs negatives).")
  summary_path = os.path.join(out, SUMMARY_FILE)
  if os.path.exists(summary_path):
    with open(summary_path, encoding="utf-8") as f:
      done = json.load(f)
    if done.get("steps") == steps:
      return done
  t0 = time.time()
  tokenizer, encoder, _ = builders.text_conditioner(text_config)
  model = TextImageContrast(text_encoder=encoder, embed_dim=embed_dim)
  source = mnist_pairs.MnistPairs("train", caption_style)
  ids, images = _batch(source, tokenizer, 0, 2, seed)
  params = model.init(jax.random.key(seed), ids, images_to_unit_range(images))["params"]
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(
      0.0, learning_rate, min(warmup_steps, steps - 1), steps, 0.05 * learning_rate),
      weight_decay=0.01)
  opt_state = tx.init(params)

  @jax.jit
  def step_fn(params, opt_state, ids, images):
    loss, grads = jax.value_and_grad(lambda p: contrastive_loss(
        model.apply({"params": p}, ids, images_to_unit_range(images))))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  loss = None
  for step in range(1, steps + 1):
    params, opt_state, loss = step_fn(params, opt_state, *_batch(source, tokenizer, step, batch, seed))
    if log_every and step % log_every == 0:
      print(f"contrastive step {step}: loss {float(loss):.4f}", flush=True)
  summary = {"steps": steps, "batch": batch, "learning_rate": learning_rate,
             "final_loss": float(loss), "caption_style": caption_style,
             "retrieval_test": retrieval_accuracy(model, params, tokenizer, "test", caption_style),
             "retrieval_heldout": retrieval_accuracy(model, params, tokenizer, "heldout",
                                                     caption_style)}
  summary["seconds"] = round(time.time() - t0, 1)
  partial = out.rstrip("/") + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  text_lib.save_prompt_encoder(text_lib.PromptEncoder(tokenizer, encoder, params["text_encoder"]),
                               partial)
  with open(os.path.join(partial, SUMMARY_FILE), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  shutil.rmtree(out, ignore_errors=True)
  os.replace(partial, out)
  return summary


def _define_flags():
  """The command line's flags (defined only when run as a script: mnist_text_to_image imports
  this module and has flags of its own)."""
  flags.DEFINE_string("out", "workdirs/mnist_text/contrastive_encoder", "The folder to write.")
  flags.DEFINE_integer("steps", 1000, "Training steps.")
  flags.DEFINE_integer("batch", 256, "Captioned images per step.")
  flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.")


def main(_):
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  c = mnist_text.get_config()
  summary = train(c.text, FLAGS.out, steps=FLAGS.steps, batch=FLAGS.batch,
                  learning_rate=FLAGS.learning_rate, caption_style=c.data.caption_style)
  logging.info("contrastive encoder: %s", summary)
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
