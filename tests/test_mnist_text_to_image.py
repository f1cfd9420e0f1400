"""The MNIST-pairs text-to-image job (experiments/mnist_text_to_image.py), run as users run it: a
tiny-scale subprocess end to end (judge, autoencoder, cross-attention LDM, evaluation at two
guidance scales, report), then again to check that a finished job reuses its runs and evaluations
instead of training again. (--nopooled keeps it short: the pooled baseline is the same stage with
text.pooled=True, tested in tests/stages/test_latent_diffusion_stage.py. --class_tokens: the
two-token diagnostic trains and is evaluated on "{a} {b}" prompts; --encoder_lr_scale: the text
model again with its encoder at 10 x the learning rate; --contrastive_steps: the encoder pretrained
contrastively, written as a diffusers folder, and frozen under the LDM.)"""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from ldm_jax import text as text_lib
from ldm_jax.data import mnist_pairs
from ldm_jax.pipeline import LatentDiffusionPipeline


def _run(workdir, report):
  cmd = [sys.executable, "-m", "experiments.mnist_text_to_image", "--scale=tiny",
         f"--workdir={workdir}", "--ldm_steps=2", "--samples_per_pair=1", "--guidance_scales=1,3",
         "--nopooled", "--class_tokens", "--encoder_lr_scale=10", "--contrastive_steps=3",
         "--contrastive_batch=8",
         f"--report={report}"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def test_tiny_job_end_to_end_and_resume(tmp_path):
  workdir, report = tmp_path / "job", tmp_path / "report.md"
  _run(workdir, report)
  results = json.loads((workdir / "results.json").read_text())
  assert set(results["models"]) == {"cross_attention", "class_tokens", "encoder_lr10",
                                    "frozen_contrastive"}
  for name, m in results["models"].items():
    assert m["steps"] == 2
    assert set(m["by_guidance"]) == {"1", "3"}
    for w, g in m["by_guidance"].items():
      assert g["seen"]["num_samples"] == 90 and g["held_out"]["num_samples"] == 10
      for part in (g["seen"], g["held_out"]):
        assert 0 <= part["pair_accuracy"] <= min(part["left_accuracy"], part["right_accuracy"]) <= 1
      assert (workdir / f"samples_{name}_w{w}.png").exists()
      rows = (workdir / f"samples_{name}_w{w}_rows.txt").read_text().splitlines()
      assert [mnist_pairs.parse_caption(r) for r in rows[:10]] == list(mnist_pairs.HELD_OUT_PAIRS)
      assert all((len(r.split()) == 2) == (name == "class_tokens") for r in rows), rows
    probe = m["side_probe"]  # the linear side probe of the digit tokens (grammar captions only)
    assert probe is None if name == "class_tokens" else 0 <= probe["held_out"] <= 1, probe
    run = "ldm" if name == "cross_attention" else name
    export = json.loads((workdir / run / "export" / "config.json").read_text())
    assert export["text"]["pooled"] is False
    assert export["text"]["train_encoder"] == (name != "frozen_contrastive")
    assert export["text"]["lr_scale"] == (10.0 if name == "encoder_lr10" else 1.0)
    assert (export["text"]["encoder"]["layers"] == 0) == (name == "class_tokens")
    assert export["data"]["caption_style"] == ("digits" if name == "class_tokens" else "grammar")
  # The contrastive encoder: a diffusers folder (tokenizer/ + bert/) the LDM loaded and kept frozen
  folder = workdir / "contrastive_encoder"
  summary = json.loads((folder / "contrastive.json").read_text())
  assert summary["steps"] == 3 and summary["batch"] == 8
  assert 0 <= summary["retrieval_heldout"] <= 1 and np.isfinite(summary["final_loss"])
  assert results["contrastive_encoder"] == summary
  assert not (tmp_path / "job" / "contrastive_encoder.partial").exists()
  pretrained = text_lib.load_prompt_encoder(str(folder))
  pipe = LatentDiffusionPipeline.from_workdir(str(workdir / "frozen_contrastive"))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(pipe.prompt_encoder.params),
               jax.device_get(pretrained.params))
  np.testing.assert_array_equal(pipe.encode_prompt(["3 left of seven"]),
                                np.asarray(text_lib.encode_prompts(pretrained, ["3 left of seven"])))
  text = report.read_text()
  table = [line for line in text.splitlines() if line.startswith("| cross_attention") or
           line.startswith("| pooled") or line.startswith("| class_tokens") or
           line.startswith("| encoder_lr10") or line.startswith("| frozen_contrastive")]
  assert len(table) == 8, text
  assert "Not yet trained and evaluated: pooled" in text
  assert "caption -> image retrieval" in text

  # Again: every run is finished and evaluated, so nothing is trained or sampled again.
  before = {p: os.path.getmtime(p) for p in [workdir / "ldm" / "eval.json",
                                            workdir / "class_tokens" / "eval.json",
                                            workdir / "encoder_lr10" / "eval.json",
                                            workdir / "frozen_contrastive" / "eval.json",
                                            folder / "contrastive.json",
                                            workdir / "results.json"]}
  _run(workdir, report)
  assert before == {p: os.path.getmtime(p) for p in before}  # neither trained nor evaluated again
  assert report.read_text() == text
