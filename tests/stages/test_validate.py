"""Up-front config validation: every shipped config passes; each bad value raises a ValueError
naming the full key, the value and the valid range, before the workdir is created or anything runs
(also through the command line)."""

import functools
import glob
import importlib
import os
import subprocess
import sys

import pytest

from experiments.configs import mnist_autoencoder, mnist_ldm, mnist_semantic, mnist_text
from ldm_jax.stages import run, validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _shipped():
  """(name, get_config) of every config file in experiments/configs/ and tests/configs/, once per
  variant (a module's VARIANTS or STAGES tuple names the get_config arguments)."""
  out = []
  for folder in ("experiments/configs", "tests/configs"):
    for file in sorted(glob.glob(os.path.join(ROOT, folder, "*.py"))):
      name = os.path.splitext(os.path.basename(file))[0]
      if name == "__init__":
        continue
      module = importlib.import_module(f"{folder.replace('/', '.')}.{name}")
      variants = getattr(module, "VARIANTS", None) or getattr(module, "STAGES", None) or (None,)
      out += [(f"{name}:{v}", functools.partial(module.get_config, *([v] if v else [])))
              for v in variants]
  return out


SHIPPED = _shipped()


def _with_first_stage(c, folder):
  if c.stage == "latent_diffusion":
    c.first_stage.workdir = str(folder)  # given at launch (--config.first_stage.workdir=...)
  return c


def test_every_shipped_config_passes(tmp_path):
  assert len(SHIPPED) >= 9  # mnist x 2, paper autoencoders x 2, paper LDMs x 3, tiny x 2
  for name, get in SHIPPED:
    c = _with_first_stage(get(), tmp_path)
    try:
      validate.config(c)
    except ValueError as e:
      raise AssertionError(f"{name}: {e}") from e


AE_CASES = [
    ("train.num_steps", -5, "an integer >= 1"), ("train.num_steps", 2.5, "an integer >= 1"),
    ("train.global_batch_size", 0, "an integer >= 1"), ("train.global_batch_size", 7, "multiple of the"),
    ("train.log_every", 0, ">= 1"), ("train.save_every", -1, ">= 0"),
    ("train.ema_decay", 1.0, "[0.0, 1.0)"), ("train.ema_decay", float("nan"), "finite"),
    ("optim.learning_rate", 0.0, "(0.0, inf)"), ("optim.learning_rate", -1e-4, "(0.0, inf)"),
    ("optim.b2", 1.0, "[0.0, 1.0)"), ("optim.decay", "exp", "valid choices: cosine, linear, constant"),
    ("optim.decay_steps", 10, "more than optim.warmup_steps=50"),
    ("optim.grad_accum_steps", 0, ">= 1"), ("disc_learning_rate", 0.0, "(0.0, inf)"),
    ("data.image_size", 30, "multiple of the autoencoder's downsampling factor 4"),
    ("data.channels", 2, "(1, 3)"), ("model.in_channels", 3, "data.channels=1"),
    ("data.crop", "middle", "valid choices: center, random, none"), ("data.holdout_fraction", 1.0, "[0.0, 1.0)"),
    ("model.norm_groups", 5, "divisor of every model.block_out_channels"),
    ("model.dtype", "float64", "valid choices: float32, bfloat16, float16"),
    ("disc.remat", "sometimes", "valid choices: none, full, dots, dots_no_batch"),
    ("model.preset", "Nope", "valid choices: AutoencoderKL, VQModel"), ("loss.rec_loss", "l3", "valid choices: l1, l2"),
    ("loss.disc_loss", "wgan", "valid choices: hinge, vanilla"), ("loss.kl_weight", -1.0, "[0.0, inf)"),
    ("loss.perceptual_weight", -1.0, "[0.0, inf)"), ("disc.norm", "layer", "valid choices: batch, group, none"),
    ("parallel.mode", "tp", "valid choices: pmap, mesh"), ("parallel.num_devices", 99, "<= "),
    ("parallel.cpu_convolutions", "mkl", "valid choices: auto, ynnpack, eigen, eigen_1thread"),
    ("distributed.auto", "maybe", "valid choices: detect, always, never"), ("stage", "vae", "valid choices: autoencoder, latent_diffusion"),
]
LDM_CASES = [
    ("diffusion.beta_start", 0.0, "(0.0, 1.0)"), ("diffusion.beta_end", 0.001, ">= diffusion.beta_start"),
    ("diffusion.schedule", "quadratic", "valid choices: linear, scaled_linear, cosine, sigmoid"), ("diffusion.num_timesteps", 0, ">= 1"),
    ("diffusion.prediction_type", "x0", "valid choices: epsilon, sample, v_prediction"), ("diffusion.p_uncond", 1.5, "[0.0, 1.0]"),
    ("diffusion.conditioning", "caption", "valid choices: none, class, text, concat"), ("diffusion.num_classes", 0, ">= 1"),
    ("diffusion.min_snr_gamma", 0.0, "(0.0, inf)"), ("model.dropout", -0.1, "[0.0, 1.0)"),
    ("model.norm_num_groups", 3, "divisor"), ("sample.method", "plms", "valid choices: ddpm, ddim, dpmpp_2m"),
    ("sample.num_steps", 0, ">= 1"), ("sample.guidance_scale", float("inf"), "finite"),
    ("first_stage.workdir", "", "trained autoencoder run"),
    ("first_stage.scale_factor", -1.0, "[0.0, inf)"),
    ("train.cache_latents", "yes", "True or False"),
]


def _set(c, key, value):
  *path, last = key.split(".")
  section = c
  for p in path:
    section = section[p]
  with section.ignore_type():
    section[last] = value


TEXT_CASES = [
    ("text.tokenizer", "nope", "one of mnist_pairs, clip or an existing tokenizer"),
    ("text.encoder.preset", "GPT2", "valid choices: BERTEmbedder, BERT_TINY"),
    ("text.encoder.width", 0, ">= 1"), ("text.max_length", 1, ">= 2"),
    ("text.pretrained", "/no/such/folder", "a diffusers pipeline folder"),
    ("text.pooled", "yes", "True or False"), ("text.encoder.dtype", "float64", "valid choices"),
    ("data.crop", "center", "'none' for mnist_pairs"), ("data.image_size", (32, 0), "pair (H, W)"),
    ("data.split", "val", "valid choices: train, test, heldout"),
    ("data.caption_style", "words", "valid choices: grammar, digits"),
    ("text.encoder.layers", -1, ">= 0"), ("text.lr_scale", 0.0, "a finite number in (0.0, inf)"),
    ("text.lr_scale", "10", "a finite number"),
    ("model.attention_position_embedding", "learned", "valid choices: none, sincos_2d"),
]
SR_CASES = [  # mnist_ldm with diffusion.conditioning="concat"
    ("concat.degradation", "bicubic_x8", "valid choices: bicubic_x4"),
    ("concat.degradation", "inpaint_small_masks", "bicubic_x4, inpaint_large_masks"),
    ("concat.p_drop", 1.5, "[0.0, 1.0]"), ("concat.p_drop", -0.1, "[0.0, 1.0]"),
    ("concat.class_labels", "yes", "True or False"),
    ("data.image_size", 30, "a multiple of 4 for concat.degradation='bicubic_x4'"),
    ("data.image_size", (32, 18), "a multiple of 4 for concat.degradation='bicubic_x4'"),
    ("model.down_block_types", ("CrossAttnDownBlock2D", "AttnDownBlock2D"),
     "no cross-attention blocks (got CrossAttnDownBlock2D)"),
    ("concat.degradation", "segmentation_pairs",  # on mnist_embedded: no pair labels
     "needs data.name='mnist_pairs' (not a folder), as its map takes each half's digit from the "
     "labels 10 * left + right; got data.name='mnist_embedded' (see experiments/configs/mnist_semantic.py)"),
]


def _sr_config():
  c = mnist_ldm.get_config()
  c.diffusion.conditioning = "concat"
  return c


CONFIGS = {"ae": mnist_autoencoder, "ldm": mnist_ldm, "text": mnist_text,
           "sr": type("SR", (), {"get_config": staticmethod(_sr_config)})}


@pytest.mark.parametrize("key,value,words", [("ae:" + k, v, w) for k, v, w in AE_CASES] +
                         [("ldm:" + k, v, w) for k, v, w in LDM_CASES] +
                         [("text:" + k, v, w) for k, v, w in TEXT_CASES] +
                         [("sr:" + k, v, w) for k, v, w in SR_CASES])
def test_bad_values_name_key_value_and_range(key, value, words, tmp_path):
  kind, key = key.split(":")
  c = _with_first_stage(CONFIGS[kind].get_config(), tmp_path)
  _set(c, key, value)
  with pytest.raises(ValueError) as err:
    validate.config(c)
  message = str(err.value)
  assert message.startswith(f"{key}={value!r}"), message
  assert words in message, message


def test_a_frozen_encoder_takes_no_learning_rate_scale(tmp_path):
  c = _with_first_stage(mnist_text.get_config(), tmp_path)
  c.text.train_encoder, c.text.lr_scale = False, 10.0
  with pytest.raises(ValueError, match=r"text.lr_scale=10.0: expected 1.0 with text.train_encoder"):
    validate.config(c)
  c.text.lr_scale = 1.0
  validate.config(c)


def test_text_model_needs_cross_attention_blocks(tmp_path):
  c = _with_first_stage(mnist_text.get_config(), tmp_path)
  c.model.down_block_types = ("DownBlock2D", "AttnDownBlock2D")
  c.model.up_block_types = ("AttnUpBlock2D", "UpBlock2D")
  validate.config(c)  # the mid block still cross-attends
  c.model.mid_block_type = "UNetMidBlock2D"
  with pytest.raises(ValueError, match="model.down_block_types=.*cross-attention blocks"):
    validate.config(c)


def test_concat_in_channels_must_be_latent_plus_image_channels(tmp_path):
  """A config that sets model.in_channels (the shipped ones derive it) must give the first stage's
  latent + image channels: the tiny autoencoder has 2 latent channels on 1-channel images."""
  from tests import cli_runs  # pylint: disable=import-outside-toplevel
  ae_dir = cli_runs.tiny_autoencoder_export(str(tmp_path / "ae"))
  c = _with_first_stage(_sr_config(), ae_dir)
  validate.config(c)
  with c.model.unlocked():
    c.model.in_channels = 2
  with pytest.raises(ValueError, match=r"^model.in_channels=2: expected the latent \+ image "
                     r"channels = 2 \+ 1 = 3 .*diffusion.conditioning='concat'"):
    validate.config(c)
  c.model.in_channels = 3
  validate.config(c)
  c.concat.degradation = "inpaint_large_masks"  # SD-inpainting: [z_t, m, masked-image latents]
  with pytest.raises(ValueError, match=r"^model.in_channels=3: expected the latent \+ mask \+ "
                     r"masked-image latent channels = 2 \+ 1 \+ 2 = 5 .*concat.degradation="
                     r"'inpaint_large_masks'"):
    validate.config(c)
  c.model.in_channels = 5
  validate.config(c)


def test_segmentation_needs_mnist_pairs_and_the_class_channels(tmp_path):
  """mnist_semantic validates; its map needs the pair labels (not a folder of images), and a
  model.in_channels given must be the tiny autoencoder's 2 latent + 11 class channels."""
  from tests import cli_runs  # pylint: disable=import-outside-toplevel
  ae_dir = cli_runs.tiny_autoencoder_export(str(tmp_path / "ae"))
  c = _with_first_stage(mnist_semantic.get_config(), ae_dir)
  validate.config(c)
  c.concat.class_labels = True  # hybrid: the map and the pair's class (100 of them)
  c.diffusion.num_classes = 100
  validate.config(c)
  with c.model.unlocked():
    c.model.in_channels = 3
  with pytest.raises(ValueError, match=r"^model.in_channels=3: expected the latent \+ segmentation "
                     r"class channels = 2 \+ 11 = 13 .*concat.degradation='segmentation_pairs'"):
    validate.config(c)
  c.model.in_channels = 13
  validate.config(c)
  c.data.source, c.data.data_dir = "folder", str(tmp_path)
  with pytest.raises(ValueError, match=r"^concat.degradation='segmentation_pairs': .* needs "
                     r"data.name='mnist_pairs' \(not a folder\).* got data.source='folder'"):
    validate.config(c)


def test_hybrid_concat_needs_classes(tmp_path):
  c = _with_first_stage(_sr_config(), tmp_path)
  c.concat.class_labels = True
  validate.config(c)
  c.diffusion.num_classes = 0
  with pytest.raises(ValueError, match=r"^diffusion.num_classes=0: expected an integer >= 1"):
    validate.config(c)


def test_concat_conditioning_without_a_concat_section(tmp_path):
  c = _with_first_stage(mnist_text.get_config(), tmp_path)
  with c.unlocked():
    del c["concat"]
  c.diffusion.conditioning = "concat"
  with pytest.raises(ValueError, match="needs a `concat` section .* experiments/configs/mnist_ldm.py"):
    validate.config(c)


def test_text_conditioning_without_a_text_section_names_the_config_to_start_from(tmp_path):
  c = _with_first_stage(mnist_ldm.get_config(), tmp_path)
  c.diffusion.conditioning = "text"
  with pytest.raises(ValueError, match="needs a `text` section .* experiments/configs/mnist_text.py"):
    validate.config(c)
  c = _with_first_stage(mnist_text.get_config(), tmp_path)
  c.text.tokenizer = "clip"  # a built-in kind needs no path
  validate.config(c)


def test_perceptual_loss_needs_its_weight_files():
  c = mnist_autoencoder.get_config()
  c.loss.perceptual_weight = 1.0
  with pytest.raises(ValueError, match=r"loss.lpips_vgg='': expected a weight file path"):
    validate.config(c)


def test_bad_config_leaves_workdir_untouched(tmp_path):
  c = mnist_autoencoder.get_config()
  c.train.num_steps = -5
  with pytest.raises(ValueError, match="train.num_steps"):
    run.train(c, str(tmp_path / "new"))
  assert not os.path.exists(tmp_path / "new")
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "keep.txt").write_text("x")
  with pytest.raises(ValueError, match="train.num_steps"):
    run.train(c, str(tmp_path / "old"))
  assert os.listdir(tmp_path / "old") == ["keep.txt"]


def test_cli_bad_config_one_line_and_no_workdir(tmp_path):
  workdir = tmp_path / "w"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "ldm_jax.main", "train",
                        "--config=experiments/configs/mnist_autoencoder.py",
                        "--config.train.num_steps=-5", f"--workdir={workdir}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert lines == ["ldm_jax.main train: error: train.num_steps=-5: expected an integer >= 1."], out.stderr
  assert not workdir.exists()


@pytest.mark.parametrize("rules,words", [
    ((("embed", "fsdp"), ("emb", "fsdp")),
     "parallel.axis_rules entry 1 ('emb', 'fsdp'): unknown logical axis 'emb'; valid logical axes: "
     "conv_in, conv_out, embed, heads, kv, mlp, vocab."),
    ((("embed", "tensor"),), "parallel.axis_rules entry 0 ('embed', 'tensor'): unknown mesh axis "
                             "'tensor'; valid mesh axes: data, fsdp."),
    (("embed",), "parallel.axis_rules entry 0 'embed': expected a (logical axis name, mesh axis) pair"),
])
def test_bad_axis_rules_name_the_entry_and_the_valid_choices(rules, words, tmp_path):
  for get in (mnist_autoencoder.get_config, mnist_ldm.get_config):
    c = _with_first_stage(get(), tmp_path)
    _set(c, "parallel.axis_rules", rules)
    with pytest.raises(ValueError) as err:
      validate.config(c)
    assert str(err.value).startswith(words), str(err.value)
  c = mnist_ldm.get_config()
  _set(c, "parallel.axis_rules", [list(r) for r in c.parallel.axis_rules])  # as in config.json
  validate.config(_with_first_stage(c, tmp_path))


def test_cli_bad_axis_rule_one_line_and_no_workdir(tmp_path):
  workdir = tmp_path / "w"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "ldm_jax.main", "train",
                        "--config=experiments/configs/mnist_autoencoder.py", "--config.parallel.mode=mesh",
                        "--config.parallel.axis_rules=(('conv_out', 'fsdp'), ('embed', 'model'))",
                        f"--workdir={workdir}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert lines == ["ldm_jax.main train: error: parallel.axis_rules entry 1 ('embed', 'model'): unknown "
                   "mesh axis 'model'; valid mesh axes: data, fsdp."], out.stderr
  assert not workdir.exists()
