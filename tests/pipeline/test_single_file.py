"""`LatentDiffusionPipeline.from_single_file`: tiny original checkpoints (CompVis UNet and
autoencoder layout) against the diffusers StableDiffusionPipeline assembled from diffusers' own
single-file converters: SD 1.x-style (CLIP under cond_stage_model.transformer, conv projections,
eps) and SD 2.x-style (OpenCLIP under cond_stage_model.model with a last block that SD drops,
linear projections, heads from num_head_channels, v-prediction); and the v1 / v2 and
prediction-type rules. An SD 1.x-style inpainting file (UNet reading 9 = 4 + 1 + 4 channels) against
diffusers' StableDiffusionInpaintPipeline."""

import jax
import numpy as np
import pytest
import torch
import transformers
from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline,
                       StableDiffusionPipeline, UNet2DConditionModel)
from diffusers.loaders import single_file_utils as sfu
from safetensors.numpy import save_file

import sd_refs
from ldm_jax.convert import text_checkpoint as tc
from ldm_jax.pipeline import LatentDiffusionPipeline, single_file
from tests.convert.test_ldm_checkpoint import DDCONFIG, SD1_UNET, UNET_KW, ldm_unet_shapes, ldm_vae_shapes

pytestmark = [pytest.mark.slow,  # end to end, torch + jax
              pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")]
WIDTH = 64  # one 64-wide head, the single-file rule for CLIP
PROMPTS = ["a photo of a cat", "a red house"]


def _weights(shapes, prefix, rng):
  """Well-conditioned random tensors: N(0, 1/fan_in) matrices and kernels, norm scales near 1."""
  out = {}
  for k, shape in shapes.items():
    if len(shape) > 1:
      w = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[1:])), shape)
    else:
      w = (1.0 if k.endswith("weight") else 0.0) + 0.05 * rng.normal(size=shape)
    out[prefix + k] = w.astype(np.float32)
  return out


# version -> (UNet builder keywords, its LDM yaml unet_config.params, text activation, yaml extras)
VERSIONS = {
    "v1": (UNET_KW, SD1_UNET, "quick_gelu", {}),
    "v2": ({**UNET_KW, "use_linear": True},
           {**{k: v for k, v in SD1_UNET.items() if k != "num_heads"},
            "use_linear_in_transformer": True, "num_head_channels": 16},
           "gelu", {"parameterization": "v"}),
}


def _openclip(clip, rng):
  """open_clip's text tower holding `clip`'s weights (q, k, v fused into in_proj), plus one more
  random block, which SD 2.x's penultimate-layer output never uses."""
  t = {k: v.numpy() for k, v in clip.state_dict().items()}
  out = {"token_embedding.weight": t["embeddings.token_embedding.weight"],
         "positional_embedding": t["embeddings.position_embedding.weight"],
         "ln_final.weight": t["final_layer_norm.weight"], "ln_final.bias": t["final_layer_norm.bias"],
         "text_projection": rng.normal(size=(WIDTH, WIDTH)).astype(np.float32),
         "logit_scale": np.array(4.6, np.float32)}
  n = clip.config.num_hidden_layers
  for i in range(n + 1):
    src, dst = f"encoder.layers.{min(i, n - 1)}.", f"transformer.resblocks.{i}."
    pairs = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for new, old in pairs.items():
      for leaf in ("weight", "bias"):
        out[f"{dst}{new}.{leaf}"] = t[f"{src}{old}.{leaf}"] * (3.0 if i == n else 1.0)
    for leaf in ("weight", "bias"):
      out[f"{dst}attn.in_proj_{leaf}"] = np.concatenate(
          [t[f"{src}self_attn.{p}_proj.{leaf}"] for p in "qkv"]) * (3.0 if i == n else 1.0)
  return {tc.SD2_PREFIX + k: v for k, v in out.items()}


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def checkpoint(request, tmp_path_factory):
  """(version, path, LDM config dict, the diffusers reference pipeline) of a tiny single file."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # torch's pool spins on a shared 2-core machine
  yield (request.param, *_tiny_checkpoint(request.param, tmp_path_factory.mktemp("single")))
  torch.set_num_threads(threads)


def _tiny_checkpoint(version, root, in_channels=4):
  """(path, LDM config dict, the diffusers reference pipeline) of a tiny single file in root; with
  in_channels=9 an inpainting UNet and a StableDiffusionInpaintPipeline reference."""
  unet_kw, unet_params, act, extras = VERSIONS[version]
  unet_params = {**unet_params, "in_channels": in_channels}
  rng = np.random.default_rng(0)
  sd = {**_weights(ldm_unet_shapes(**{**unet_kw, "context_dim": WIDTH, "in_channels": in_channels}),
                   "model.diffusion_model.", rng),
        **_weights(ldm_vae_shapes(), "first_stage_model.", rng)}
  torch.manual_seed(0)
  clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
      vocab_size=49408, hidden_size=WIDTH, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=1, max_position_embeddings=77, hidden_act=act)).eval()
  if version == "v1":
    sd.update({tc.SD1_PREFIX + k: v.numpy() for k, v in clip.state_dict().items()})
    sd[tc.SD1_PREFIX + "embeddings.position_ids"] = np.arange(77)[None]
  else:
    sd.update(_openclip(clip, rng))
  save_file(sd, str(root / f"tiny-{version}.safetensors"))
  config = {"unet_config": {"params": {**unet_params, "context_dim": WIDTH}},
            "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": DDCONFIG}}, **extras}
  return str(root / f"tiny-{version}.safetensors"), config, _reference(
      version, sd, config, clip.config, root)


def _reference(version, sd, config, clip_config, root):
  """diffusers' conversion of the same file, as a StableDiffusionPipeline with SD's scheduler."""
  ckpt = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
  clip = transformers.CLIPTextModel(clip_config).eval()
  if version == "v1":
    converted = sfu.convert_ldm_clip_checkpoint(ckpt)
  else:
    converted = sfu.convert_open_clip_checkpoint(clip, ckpt, prefix=tc.SD2_PREFIX)
  converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
  missing, _ = clip.load_state_dict(converted, strict=False)  # SD 2.x: the last block is unused
  assert not missing, missing
  ldm = {"model": {"params": config}}
  unet_cfg = sfu.create_unet_diffusers_config_from_ldm(ldm, ckpt, image_size=16)
  unet = UNet2DConditionModel(**unet_cfg).eval()
  unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(ckpt, unet_cfg), strict=True)
  vae_cfg = sfu.create_vae_diffusers_config_from_ldm(ldm, ckpt, image_size=16,
                                                    scaling_factor=0.18215)
  vae = AutoencoderKL(**vae_cfg).eval()
  vae.load_state_dict(sfu.convert_ldm_vae_checkpoint(ckpt, vae_cfg), strict=True)
  scheduler = DDIMScheduler(**{k: v for k, v in single_file.SD_SCHEDULER.items()
                               if not k.startswith("_")},
                            prediction_type="v_prediction" if version == "v2" else "epsilon")
  variant = {"v1": "sd1", "v2": "sd2"}[version]
  tokenizer = sd_refs.write_clip_tokenizer(root / "tokenizer", sd_refs.VARIANTS[variant]["pad"])
  cls = StableDiffusionInpaintPipeline if unet.config.in_channels == 9 else StableDiffusionPipeline
  pipe = cls(vae=vae, text_encoder=clip, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
  pipe.set_progress_bar_config(disable=True)
  return pipe


def test_single_file_images_match_diffusers(checkpoint):
  version, path, config, reference = checkpoint
  pipe = LatentDiffusionPipeline.from_single_file(path, config=config, latent_shape=(8, 8, 4),
                                                  max_batch=4)
  assert pipe.text_conditioned
  assert pipe.prediction_type == {"v1": "epsilon", "v2": "v_prediction"}[version]
  assert pipe.prompt_encoder.module.layers == 2  # SD 2.x: the penultimate of 3 blocks
  assert pipe.defaults == single_file.SD_DEFAULTS and pipe.sampler_grid["steps_offset"] == 1
  noise = pipe.initial_noise(jax.random.key(0), 2)
  for w, negative in [(1.0, None), (7.5, ["blurry", ""])]:
    ours = pipe.sample(jax.random.key(0), 2, prompts=PROMPTS, negative_prompts=negative,
                       num_steps=4, guidance_scale=w, output="float")
    want = sd_refs.reference_images(reference, noise, PROMPTS, num_steps=4, guidance_scale=w,
                                    negative_prompts=negative)
    diff = np.abs(np.clip(ours / 2.0 + 0.5, 0.0, 1.0) - want).max() * 255
    assert diff < 1.0, (w, diff)


def test_inpainting_single_file_matches_diffusers(tmp_path, torch_one_thread):  # pylint: disable=unused-argument
  """An SD 1.x inpainting file (its yaml's in_channels = 9) inpaints as diffusers'
  StableDiffusionInpaintPipeline built from diffusers' own conversion of it."""
  path, config, reference = _tiny_checkpoint("v1", tmp_path, in_channels=9)
  pipe = LatentDiffusionPipeline.from_single_file(path, config=config, latent_shape=(8, 8, 4),
                                                  max_batch=4)
  assert pipe.unet.in_channels == 9 and pipe.inpainting_model and pipe.text_conditioned
  assert pipe.inpainting_null == "unchanged" and pipe.prediction_type == "epsilon"
  x = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  m = np.zeros((2, 16, 16), np.float32)
  m[0, 3:11, 5:12] = 1
  m[1, :, 9:] = 1
  images, masks = x.astype(np.float32) / 255.0, m[..., None]
  _, z_masked = sd_refs.inpainting_inputs(reference, images, masks)
  noise = pipe.initial_noise(jax.random.key(0), 2)
  for w in (1.0, 7.5):
    ours = pipe.inpaint(jax.random.key(0), x, m, prompts=PROMPTS, num_steps=4, guidance_scale=w,
                        output="float")
    want = sd_refs.reference_images(reference, noise, PROMPTS, num_steps=4, guidance_scale=w,
                                    image=images, mask_image=masks, masked_image_latents=z_masked)
    diff = np.abs(np.clip(ours / 2.0 + 0.5, 0.0, 1.0) - want).max() * 255
    assert diff < 1.0, (w, diff)


def test_version_and_prediction_type_rules():
  v1 = {tc.SD1_PREFIX + "embeddings.token_embedding.weight": 0}
  v2 = {tc.SD2_PREFIX + "token_embedding.weight": 0}
  bert = {tc.BERT_PREFIX + "token_emb.weight": 0}
  assert single_file.sd_version(v1) == "v1" and single_file.sd_version(v2, "v2") == "v2"
  with pytest.raises(ValueError, match="version='v1', but the checkpoint's text encoder is "
                                       "'sd2_openclip'"):
    single_file.sd_version(v2, "v1")
  with pytest.raises(ValueError, match="Unknown Stable Diffusion version 'xl'; valid choices: v1, v2"):
    single_file.sd_version(v1, "xl")
  with pytest.raises(ValueError, match="'ldm_bert', not a Stable Diffusion one"):
    single_file.sd_version(bert)
  with pytest.raises(ValueError, match="no supported text encoder"):
    single_file.sd_version({"model.diffusion_model.out.0.weight": 0})
  rule = single_file._prediction_type  # pylint: disable=protected-access
  assert rule("v1", None, {}) == "epsilon" and rule("v2", None, {}) == "v_prediction"
  assert rule("v2", None, {"parameterization": "eps"}) == "epsilon"
  assert rule("v1", None, {"parameterization": "v"}) == "v_prediction"
  assert rule("v2", "epsilon", {}) == "epsilon"  # SD 2.x-base (512 px)
  assert rule("v2", None, {}, inpainting=True) == "epsilon"  # 512-inpainting-ema
  with pytest.raises(ValueError, match="Unknown prediction_type 'v'; valid choices: "):
    rule("v2", "v", {})
