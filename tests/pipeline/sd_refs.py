"""Tiny random-weight diffusers StableDiffusionPipelines (SD 1.x- and SD 2.x-style, and their
StableDiffusionInpaintPipeline twins with a 9-channel UNet), LDMTextToImagePipeline and
LDMSuperResolutionPipeline and StableDiffusionUpscalePipeline saved with `save_pretrained`, and
their reference images, for the pipeline's end-to-end parity tests."""

import json

import numpy as np
import torch
import transformers
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       LDMSuperResolutionPipeline, LDMTextToImagePipeline,
                       StableDiffusionInpaintPipeline, StableDiffusionPipeline,
                       StableDiffusionUpscalePipeline, UNet2DConditionModel, UNet2DModel, VQModel)
from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (LDMBertConfig,
                                                                            LDMBertModel)

from ldm_jax.text import clip_tokenizer as ct

TEXT_DIM = 32
LATENT_SIZE = 8
# SD 1.x: CLIP ViT-L/14 style text model (quick_gelu), <|endoftext|> padding, epsilon prediction.
# SD 2.x: OpenCLIP ViT-H/14 style (gelu), "!" (id 0) padding, linear attention projections,
# per-level head counts and v-prediction.
VARIANTS = {
    "sd1": dict(act="quick_gelu", pad=ct.SD1_PAD_TOKEN, prediction_type="epsilon",
                unet=dict(attention_head_dim=2)),
    "sd2": dict(act="gelu", pad=ct.SD2_PAD_TOKEN, prediction_type="v_prediction",
                unet=dict(attention_head_dim=(2, 4), use_linear_projection=True)),
}


def _perturb(model, seed):
  """Default init plus small random offsets on every 1-D parameter (norm scales, biases), so no
  mapping hides behind ones or zeros while the network stays well conditioned."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.05 * torch.randn(p.shape, generator=g))
  return model.eval()


def write_clip_tokenizer(path, pad):
  vocab, merges = ct.clip_vocab_from_bpe()
  path.mkdir(parents=True)
  (path / "vocab.json").write_text(json.dumps(vocab))
  (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
  (path / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad}))
  (path / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77}))
  return transformers.CLIPTokenizer.from_pretrained(str(path))


def _unet_vae_scheduler(seed, prediction_type="epsilon", in_channels=4, vae_levels=2,
                        sample_size=LATENT_SIZE, vae_kw=None, **unet_kw):
  """UNet2DConditionModel, AutoencoderKL (f = 2^(vae_levels - 1)) and DDIMScheduler."""
  unet = _perturb(UNet2DConditionModel(
      sample_size=sample_size, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64),
      layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
      norm_num_groups=8, **unet_kw), seed + 1)
  vae = _perturb(AutoencoderKL(
      in_channels=3, out_channels=3, block_out_channels=(16,) * (vae_levels - 1) + (32,),
      layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * vae_levels,
      up_block_types=("UpDecoderBlock2D",) * vae_levels, latent_channels=4, norm_num_groups=8,
      sample_size=2 * LATENT_SIZE, **(vae_kw or {})), seed + 2)
  scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                            clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                            prediction_type=prediction_type)
  return unet, vae, scheduler


def tiny_sd_pipeline(root, variant="sd1", seed=0, inpainting=False):
  """Writes a StableDiffusionPipeline folder at root / variant (inpainting: a
  StableDiffusionInpaintPipeline, its UNet reading [z_t, mask, masked-image latents], 4 + 1 + 4
  channels, at root / (variant + "_inpaint")); returns (folder, the torch pipeline diffusers loads
  from it)."""
  v = VARIANTS[variant]
  cls = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
  name = variant + "_inpaint" if inpainting else variant
  torch.manual_seed(seed)
  tokenizer, text_encoder = _clip_text(root, name, v, seed)
  unet, vae, scheduler = _unet_vae_scheduler(seed, v["prediction_type"],
                                             in_channels=9 if inpainting else 4, **v["unet"])
  pipe = cls(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
             scheduler=scheduler, safety_checker=None, feature_extractor=None,
             requires_safety_checker=False)
  folder = root / name
  pipe.save_pretrained(str(folder))
  loaded = cls.from_pretrained(str(folder))  # what a diffusers user runs
  loaded.set_progress_bar_config(disable=True)
  return str(folder), loaded


def _clip_text(root, name, v, seed):
  """(CLIPTokenizer, tiny random CLIPTextModel) of the VARIANTS entry v."""
  tokenizer = write_clip_tokenizer(root / "tok_src" / name, v["pad"])
  text_encoder = _perturb(transformers.CLIPTextModel(transformers.CLIPTextConfig(
      vocab_size=49408, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=77, hidden_act=v["act"])), seed)
  return tokenizer, text_encoder


def tiny_sd_upscale_pipeline(root, seed=7, low_res=16):
  """Writes a StableDiffusionUpscalePipeline folder at root / "sd_upscale" in the
  stabilityai/stable-diffusion-x4-upscaler layout: unet/ reading [z_t, noised low-res image] =
  4 + 3 channels at low_res x low_res with 1000 class embeddings (the noise level) and
  cross-attention (only cross-attention at level 0, as the published UNet's first levels), vae/
  AutoencoderKL f = 4 (scaling_factor 0.08333), SD 2.x-style text encoder,
  scheduler/ DDIM (v-prediction), low_res_scheduler/ DDPM (scaled_linear 1e-4..0.02),
  max_noise_level 350; returns (folder, the torch pipeline loaded from it)."""
  v = VARIANTS["sd2"]
  torch.manual_seed(seed)
  tokenizer, text_encoder = _clip_text(root, "sd_upscale", v, seed)
  unet, vae, scheduler = _unet_vae_scheduler(
      seed, v["prediction_type"], in_channels=7, vae_levels=3, sample_size=low_res,
      vae_kw=dict(scaling_factor=0.08333), num_class_embeds=1000,
      only_cross_attention=[True, False], **v["unet"])
  low_res_scheduler = DDPMScheduler(beta_start=0.0001, beta_end=0.02,
                                    beta_schedule="scaled_linear")
  pipe = StableDiffusionUpscalePipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                        unet=unet, low_res_scheduler=low_res_scheduler,
                                        scheduler=scheduler, max_noise_level=350)
  folder = root / "sd_upscale"
  pipe.save_pretrained(str(folder))
  loaded = StableDiffusionUpscalePipeline.from_pretrained(str(folder))
  loaded.set_progress_bar_config(disable=True)
  return str(folder), loaded


BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "red",
              "house", "on", "mars", ",", "!", "an", "##s", "blurry"]


def tiny_ldm_txt2img_pipeline(root, seed=3):
  """Writes an LDMTextToImagePipeline folder (tokenizer/ WordPiece, bert/ LDMBertModel, vqvae/,
  unet/, scheduler/) at root / "ldm"; returns (folder, the torch pipeline loaded from it)."""
  torch.manual_seed(seed)
  (root / "vocab").mkdir(parents=True)
  (root / "vocab" / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n")
  tokenizer = transformers.BertTokenizer(str(root / "vocab" / "vocab.txt"))
  bert = _perturb(LDMBertModel(LDMBertConfig(
      vocab_size=len(BERT_VOCAB), max_position_embeddings=77, encoder_layers=2,
      encoder_ffn_dim=64, encoder_attention_heads=2, head_dim=16, d_model=TEXT_DIM)), seed)
  unet, vae, scheduler = _unet_vae_scheduler(seed, attention_head_dim=2)
  pipe = LDMTextToImagePipeline(vqvae=vae, bert=bert, tokenizer=tokenizer, unet=unet,
                                scheduler=scheduler)
  folder = root / "ldm"
  pipe.save_pretrained(str(folder))
  loaded = LDMTextToImagePipeline.from_pretrained(str(folder))
  loaded.set_progress_bar_config(disable=True)
  return str(folder), loaded


def tiny_vqvae(seed, levels=3, embeddings=64):
  """A VQModel with 3 latent channels and f = 2^(levels - 1) (4: LDM-SR's VQ-f4), its codebook
  N(0, 1) (diffusers' default U(-1/n, 1/n) would snap every latent to about 0)."""
  vq = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
               up_block_types=("UpDecoderBlock2D",) * levels,
               block_out_channels=(16,) * (levels - 1) + (32,), layers_per_block=1,
               latent_channels=3, num_vq_embeddings=embeddings, norm_num_groups=8)
  with torch.no_grad():
    vq.quantize.embedding.weight.copy_(torch.randn(embeddings, 3,
                                                   generator=torch.Generator().manual_seed(seed)))
  return _perturb(vq, seed)


def tiny_ldm_sr_pipeline(root, seed=5, low_res=16):
  """Writes an LDMSuperResolutionPipeline folder (unet/ UNet2DModel reading [z_t, low-res image] =
  3 + 3 channels at low_res x low_res, vqvae/ VQModel f = 4, scheduler/ DDIM) at root / "ldm_sr";
  returns (folder, the torch pipeline loaded from it)."""
  torch.manual_seed(seed)
  unet = _perturb(UNet2DModel(
      sample_size=low_res, in_channels=6, out_channels=3, block_out_channels=(32, 64),
      layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
      up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=16, norm_num_groups=8),
      seed + 1)
  scheduler = DDIMScheduler(beta_start=0.0015, beta_end=0.0155, beta_schedule="scaled_linear",
                            clip_sample=False, set_alpha_to_one=True, steps_offset=0)
  pipe = LDMSuperResolutionPipeline(vqvae=tiny_vqvae(seed + 2), unet=unet, scheduler=scheduler)
  folder = root / "ldm_sr"
  pipe.save_pretrained(str(folder))
  loaded = LDMSuperResolutionPipeline.from_pretrained(str(folder))
  loaded.set_progress_bar_config(disable=True)
  return str(folder), loaded


def with_scheduler(pipe, method):
  """The torch pipeline with the scheduler diffusers uses for `method` (from the folder's config)."""
  cls = {"ddim": DDIMScheduler, "dpmpp_2m": DPMSolverMultistepScheduler}[method]
  extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if method == "dpmpp_2m" else {}
  pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)
  return pipe


def reference_images(pipe, latents_nhwc, prompts, *, num_steps, guidance_scale,
                     negative_prompts=None, **inputs):
  """diffusers' images float [N, H, W, 3] in [0, 1] from the given initial latents (NHWC);
  inputs: further arguments of the pipeline's __call__ (the inpainting pipeline's image=, ...)."""
  latents = torch.from_numpy(np.ascontiguousarray(np.transpose(latents_nhwc, (0, 3, 1, 2))))
  with torch.no_grad():  # diffusers scales latents by init_noise_sigma, 1 for DDIM / DPM-Solver
    out = pipe(prompt=list(prompts), negative_prompt=negative_prompts, latents=latents,
               num_inference_steps=num_steps, guidance_scale=guidance_scale, output_type="np",
               height=latents.shape[2] * 2, width=latents.shape[3] * 2, **inputs)
  return out.images


def inpainting_inputs(pipe, images, masks):
  """What StableDiffusionInpaintPipeline makes of images float [N, H, W, 3] in [0, 1] and masks
  [N, H, W, 1] in [0, 1], by its own processors: (mask_condition [N, 1, H, W], binarised at 0.5,
  and masked_image_latents [N, 4, h, w] = scaling_factor x the VAE posterior's mode (its mean) of
  init_image * (mask_condition < 0.5)). The pipeline itself samples the posterior with its
  generator; passing these latents as masked_image_latents= makes it deterministic."""
  init = pipe.image_processor.preprocess(images)  # [0, 1] -> [-1, 1]
  mask = pipe.mask_processor.preprocess(masks)
  with torch.no_grad():
    z = pipe.vae.encode(init * (mask < 0.5)).latent_dist.mode()
  return mask, z * pipe.vae.config.scaling_factor


def colour_ramps():
  """uint8 [2, 16, 16, 3] low-res test images: smooth colour ramps plus noise (both kinds of
  content reach the conditioning)."""
  yy, xx = np.mgrid[0:16, 0:16] / 15.0
  ramps = np.stack([np.stack([xx, yy, 1 - xx], -1), np.stack([yy, 1 - yy, xx * yy], -1)])
  noise = np.random.default_rng(0).normal(0, 0.15, ramps.shape)
  return np.clip(np.round((ramps + noise) * 255), 0, 255).astype(np.uint8)


# The parity tests' prompts (a short one and one with capitals and punctuation) and negatives.
PROMPTS = ["a photo of a cat", "An astronaut riding a horse on Mars, 4k!"]
NEGATIVE = ["blurry", "a drawing"]
