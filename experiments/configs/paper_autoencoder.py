"""First-stage autoencoders of Rombach et al. 2022 at paper scale (256x256 RGB), for accelerators.

Launch (the part after ':' picks the model; TFDS prepares the dataset, CelebA-HQ and ImageNet need
their manual downloads in the TFDS manual_dir):
  python -m ldm_jax.main --config=experiments/configs/paper_autoencoder.py:vq_f4 \
      --workdir=workdirs/celebahq_vq_f4 --config.data.name=celeb_a_hq/256
  python -m ldm_jax.main --config=experiments/configs/paper_autoencoder.py:kl_f8 \
      --workdir=workdirs/churches_kl_f8 --config.parallel.mode=mesh --config.parallel.num_fsdp=4

Variants (CompVis models/first_stage_models/<name>/config.yaml; both have no attention in the
encoder/decoder levels, attn_resolutions []):
  vq_f4  VQ-regularised, f = 4, z 64x64x3, codebook 8192 (LDM-4 on CelebA-HQ, LSUN-Bedrooms,
         ImageNet cin256-v2); VQLPIPSWithDiscriminator: disc_start 0, disc_weight 0.75,
         codebook_weight 1.
  kl_f8  KL-regularised, f = 8, z 32x32x4 (LDM-8 on LSUN-Churches; the Stable Diffusion shape);
         LPIPSWithDiscriminator: kl_weight 1e-6, disc_start 50001, disc_weight 0.5.
The paper trains them on OpenImages (`data.name` picks any TFDS image dataset). Learning rate:
base_learning_rate 4.5e-6 times the global batch (CompVis scales by batch x GPUs), Adam betas
(0.5, 0.9). Deviation: the LPIPS term is off unless its weights are given
(`--config.loss.lpips_vgg=<torchvision vgg16 .pth> --config.loss.lpips_lin=<lpips vgg.pth>`,
then set `--config.loss.perceptual_weight=1.0` as in the paper); no weights are downloaded.
"""

import ml_collections

from experiments.configs import mnist_autoencoder
from ldm_jax.models import precision

VARIANTS = ("vq_f4", "kl_f8")


def get_config(variant: str = "vq_f4") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"Unknown paper autoencoder {variant!r}; valid choices: {', '.join(VARIANTS)}.")
  c = mnist_autoencoder.get_config()
  with c.unlocked():
    c.data.name = "celeb_a_hq/256" if variant == "vq_f4" else "lsun/church_outdoor"
    c.data.split, c.data.eval_split = "train", "validation"
    c.data.image_size, c.data.channels = 256, 3
    c.data.crop, c.data.flip = "random", True

    c.model = ml_collections.ConfigDict()
    c.model.preset = "VQ_F4" if variant == "vq_f4" else "KL_F8"  # ldm_jax.models.autoencoder
    c.model.in_channels = 3
    c.model.out_channels = 3
    c.model.update(precision.DEFAULTS)  # dtype, param_dtype, remat, attention_impl

    c.disc.base_channels = 64           # taming NLayerDiscriminator: ndf 64, 3 layers
    c.disc.num_layers = 3
    c.disc.norm = "batch"

    c.loss.rec_loss = "l1"
    c.loss.kl_weight = 1e-6
    c.loss.codebook_weight = 1.0
    c.loss.disc_weight = 0.75 if variant == "vq_f4" else 0.5
    c.loss.disc_start = 0 if variant == "vq_f4" else 50_001
    c.loss.perceptual_weight = 0.0      # 1.0 in the paper: needs loss.lpips_vgg / lpips_lin

    c.train.global_batch_size = 64
    c.train.num_steps = 500_000
    c.train.save_every = 5_000
    c.train.log_every = 100
    c.train.image_every = 5_000
    c.train.ema_decay = 0.9999

    c.optim.learning_rate = 4.5e-6 * c.train.global_batch_size
    c.optim.warmup_steps = 0
    c.optim.decay = "constant"
    c.optim.decay_steps = c.train.num_steps
    c.optim.end_lr_factor = 1.0
    c.disc_learning_rate = c.optim.learning_rate

    c.parallel.mode = "mesh"
  return c
