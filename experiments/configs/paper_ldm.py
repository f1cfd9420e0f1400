"""Latent diffusion models of Rombach et al. 2022 at paper scale, for accelerators.

Launch (first train the matching `paper_autoencoder.py` variant, or convert a released one):
  python -m ldm_jax.main --config=experiments/configs/paper_ldm.py:celebahq_ldm_vq4 \
      --workdir=workdirs/celebahq_ldm --config.first_stage.workdir=workdirs/celebahq_vq_f4
  python -m ldm_jax.main --config=experiments/configs/paper_ldm.py:churches_ldm_kl8 \
      --workdir=workdirs/churches_ldm --config.first_stage.workdir=workdirs/churches_kl_f8
  python -m ldm_jax.main --config=experiments/configs/paper_ldm.py:imagenet_cin_ldm_vq4 \
      --workdir=workdirs/cin_ldm --config.first_stage.workdir=workdirs/imagenet_vq_f4 \
      --config.parallel.mode=mesh --config.parallel.num_fsdp=8

Variants (CompVis configs/latent-diffusion/<name>.yaml; all T = 1000, eps-prediction, L_simple):
  celebahq_ldm_vq4      CelebA-HQ 256 unconditional LDM-4 (tab. 1: FID 5.11; tab. 14: 274M
                        params, batch 48, lr 9.6e-5, 500k it) on VQ-f4 latents 64x64x3, no
                        latent rescaling (VQ latents have ~unit variance, sec. 4.3.2 / app. G);
                        betas linear in sqrt from 0.0015 to 0.0195.
  churches_ldm_kl8      LSUN-Churches 256 unconditional LDM-8 (tab. 1: FID 4.02) on KL-f8
                        latents 32x32x4 with s = 1/std of the first batch (scale_by_std),
                        loss_type l1, betas 0.0015 -> 0.0155, 267M here, 5 levels (192, 384, 384, 768, 768),
                        8-head self-attention at 32..4, scale-shift norm; lr 5e-5 after 10k
                        warm-up steps, batch 96. Deviation: down/up-sampling by (transposed)
                        strided conv, not the original's resblock_updown ResBlocks.
  imagenet_cin_ldm_vq4  ImageNet 256 class-conditional LDM-4 (cin256-v2, 401M; tab. 3: FID 3.60 with
                        guidance s = 1.5) on VQ-f4 latents: (192, 384, 576, 960), one-head spatial
                        transformers at 32, 16, 8 on the ClassEmbedder context (1000 classes + the
                        null label 1000 for classifier-free guidance, p_uncond 0.1), batch 1200,
                        lr 1e-4. The paper's first stage is trained on OpenImages.
The paper's ImageNet LDM-8 (cin-ldm-vq-f8) needs a VQ-f8 with attention inside its lowest encoder
level, which ldm_jax's autoencoder does not build; it is not offered here.
"""

import ml_collections

from experiments.configs import mnist_ldm
from ldm_jax.models import precision

VARIANTS = ("celebahq_ldm_vq4", "churches_ldm_kl8", "imagenet_cin_ldm_vq4")


def _unet(preset: str = "UNet", **fields) -> ml_collections.ConfigDict:
  """A model section: the preset, its fields and the precision keys (override e.g.
  --config.model.dtype=bfloat16 --config.model.remat=full --config.model.attention_impl=cudnn)."""
  return ml_collections.ConfigDict({"preset": preset, **fields, **precision.DEFAULTS})


def get_config(variant: str = "celebahq_ldm_vq4") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"Unknown paper LDM {variant!r}; valid choices: {', '.join(VARIANTS)}.")
  c = mnist_ldm.get_config()
  with c.unlocked():
    c.data.split, c.data.eval_split = "train", "validation"
    c.data.image_size, c.data.channels = 256, 3
    c.data.crop, c.data.flip = "center", False
    c.diffusion.schedule = "scaled_linear"  # LDM "linear": linear in sqrt(beta)
    c.diffusion.beta_start, c.diffusion.beta_end = 0.0015, 0.0195
    c.diffusion.conditioning = "none"
    c.optim.weight_decay = 0.01             # torch AdamW default (LatentDiffusion)
    c.optim.decay = "constant"
    c.optim.end_lr_factor = 1.0
    c.train.save_every, c.train.log_every, c.train.image_every = 5_000, 100, 5_000
    c.train.ema_decay = 0.9999
    c.train.cache_latents = False  # millions of images: encode each batch (the cache is in memory)
    c.sample.method, c.sample.num_steps, c.sample.per_class = "ddim", 50, 8
    c.parallel.mode = "mesh"

    if variant == "celebahq_ldm_vq4":
      c.data.name = "celeb_a_hq/256"
      c.first_stage.scale_factor = 1.0
      c.model = _unet("LDM_CELEBAHQ")
      c.train.global_batch_size, c.train.num_steps = 48, 500_000
      c.optim.learning_rate, c.optim.warmup_steps = 9.6e-5, 0
    elif variant == "churches_ldm_kl8":
      c.data.name = "lsun/church_outdoor"
      c.first_stage.scale_factor = 0.0      # estimate 1/std (scale_by_std: True)
      c.model = _unet(
          block_out_channels=(192, 384, 384, 768, 768), layers_per_block=2,
          down_block_types=("AttnDownBlock2D",) * 4 + ("DownBlock2D",),
          up_block_types=("UpBlock2D",) + ("AttnUpBlock2D",) * 4,
          mid_block_type="UNetMidBlock2D", num_attention_heads=8, attention_head_dim=None,
          cross_attention_dim=None, resnet_time_scale_shift="scale_shift", norm_num_groups=32)
      c.diffusion.beta_end = 0.0155
      c.diffusion.loss_type = "l1"
      c.train.global_batch_size, c.train.num_steps = 96, 500_000
      c.optim.learning_rate, c.optim.warmup_steps = 5e-5, 10_000
    else:
      c.data.name = "imagenet2012"
      c.first_stage.scale_factor = 1.0
      c.model = _unet(
          block_out_channels=(192, 384, 576, 960), layers_per_block=2,
          down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
          up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
          mid_block_type="UNetMidBlock2DCrossAttn", num_attention_heads=1,
          attention_head_dim=None, cross_attention_dim=512, class_embed_type="context",
          norm_num_groups=32)
      c.diffusion.conditioning = "class"
      c.diffusion.num_classes = 1000
      c.diffusion.p_uncond = 0.1
      c.train.global_batch_size, c.train.num_steps = 1200, 178_000
      c.optim.learning_rate, c.optim.warmup_steps = 1e-4, 0
      c.sample.guidance_scale, c.sample.per_class = 1.5, 1
    c.optim.decay_steps = c.train.num_steps
  return c
