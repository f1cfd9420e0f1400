"""Class-conditional latent diffusion on MNIST, in the latent space of mnist_autoencoder (8x8x3).

Launch (after the autoencoder run):
  python -m ldm_jax.main --config=experiments/configs/mnist_ldm.py --workdir=workdirs/mnist_ldm \
      --config.first_stage.workdir=workdirs/mnist_ae

Super-resolution x4 (LDM-SR: the bicubic 8x8 image concatenated to the 8x8 latent; then
`LatentDiffusionPipeline.from_workdir("workdirs/mnist_sr").upscale(rng, low_res_images)`):
  python -m ldm_jax.main --config=experiments/configs/mnist_ldm.py --workdir=workdirs/mnist_sr \
      --config.first_stage.workdir=workdirs/mnist_ae --config.diffusion.conditioning=concat

Inpainting (SD-inpainting: [z_t, mask, masked-image latents], LaMa-style large masks; then
`LatentDiffusionPipeline.from_workdir("workdirs/mnist_inpaint").inpaint(rng, images, mask)`):
  python -m ldm_jax.main --config=experiments/configs/mnist_ldm.py --workdir=workdirs/mnist_inpaint \
      --config.first_stage.workdir=workdirs/mnist_ae --config.diffusion.conditioning=concat \
      --config.concat.degradation=inpaint_large_masks --config.concat.p_drop=0.1
"""

import ml_collections
from ml_collections import config_dict

from ldm_jax.train import axis_rules
from ldm_jax.train import distributed
from ldm_jax.train import optim


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "latent_diffusion"
  c.seed = 0

  c.data = ml_collections.ConfigDict()  # every key of ldm_jax.data.SPEC_DEFAULTS, plus eval_split
  c.data.source = "tfds"              # "tfds" or "folder" (your own images: README)
  c.data.name = "mnist_embedded"      # any TFDS image dataset; mnist_embedded works offline
  c.data.split = "train"              # TFDS split; folders: "train" | "test" | "all"
  c.data.eval_split = "test"          # held-out split for PSNR / SSIM
  c.data.data_dir = config_dict.placeholder(str)  # the image folder; TFDS: None = default dir
  c.data.holdout_fraction = 0.1       # folders without train/ + test/: files held out as "test"
  c.data.image_size = 32              # 28 -> 32 by zero padding
  c.data.channels = 1                 # 1 (grayscale) or 3 (RGB); the model's in/out_channels too
  c.data.crop = "none"                # "center" | "random" | "none": square crop of side min(H, W)
  c.data.resize = "auto"              # "auto" | "pad" | "resize": the crop -> image_size
  c.data.flip = False                 # random horizontal flips
  c.data.shuffle = True               # a new permutation each epoch
  c.data.in_memory = config_dict.placeholder(bool)  # None: decode once when <= 1 GiB
  c.data.download = True              # prepare a TFDS dataset that is not prepared yet
  c.data.caption_style = "grammar"    # mnist_pairs only: "grammar" | "digits" ("3 7")

  c.first_stage = ml_collections.ConfigDict()
  c.first_stage.workdir = ""          # workdir of the autoencoder run (its EMA weights are used)
  c.first_stage.use_ema = True
  c.first_stage.scale_factor = 0.0    # 0: estimate 1/std from the first batch (LDM app. D.1)

  c.model = ml_collections.ConfigDict()  # the UNet (ldm_jax.models.unet.UNet fields)
  c.model.preset = "UNet"
  c.model.block_out_channels = (32, 64)
  c.model.layers_per_block = 2
  c.model.down_block_types = ("DownBlock2D", "AttnDownBlock2D")
  c.model.up_block_types = ("AttnUpBlock2D", "UpBlock2D")
  c.model.mid_block_type = "UNetMidBlock2D"
  c.model.attention_head_dim = 32
  c.model.num_attention_heads = None
  c.model.cross_attention_dim = None
  c.model.norm_num_groups = 16
  c.model.dropout = 0.0
  c.model.dtype = "float32"           # activations: "float32" | "bfloat16" | "float16"
  c.model.param_dtype = "float32"     # params, optimizer state, EMA
  c.model.remat = "none"              # "none" | "full" | "dots" | "dots_no_batch"
  c.model.attention_impl = "xla"      # "xla" | "cudnn" (NVIDIA GPUs, 16-bit dtype)

  c.diffusion = ml_collections.ConfigDict()
  c.diffusion.schedule = "scaled_linear"  # LDM's "linear" (linear in sqrt(beta))
  c.diffusion.beta_start = 0.0015         # LDM configs' linear_start / linear_end
  c.diffusion.beta_end = 0.0195
  c.diffusion.num_timesteps = 1000
  c.diffusion.zero_terminal_snr = False
  c.diffusion.prediction_type = "epsilon"
  c.diffusion.weighting = "simple"
  c.diffusion.loss_type = "l2"             # "l2" or "l1" (LDM's LSUN-Churches model)
  c.diffusion.min_snr_gamma = 5.0
  c.diffusion.conditioning = "class"      # "class", "none", "text" (mnist_text.py) or "concat"
  c.diffusion.num_classes = 10
  c.diffusion.p_uncond = 0.1              # label dropout for classifier-free guidance

  c.concat = ml_collections.ConfigDict()  # diffusion.conditioning="concat" (LDM-SR, inpainting)
  c.concat.degradation = "bicubic_x4"     # c = D(x): ldm_jax.diffusion.concat.DEGRADATIONS
  c.concat.p_drop = 0.0                   # c -> null (zeros; inpainting: all masked) with this prob.
  c.concat.class_labels = False           # hybrid: also the class label (dropped with p_uncond)

  c.optim = optim.default_config()
  c.optim.unlock()
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.decay = "cosine"
  c.optim.decay_steps = 2000
  c.optim.end_lr_factor = 0.05
  c.optim.weight_decay = 0.0
  c.optim.lock()

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 2000
  c.train.global_batch_size = 64
  c.train.save_every = 500
  c.train.log_every = 50
  c.train.image_every = 500           # preview grid to TensorBoard (and at the end); 0: never
  c.train.ema_decay = 0.999
  c.train.max_consecutive_bad = 20
  c.train.cache_latents = True        # E's q(z|x) once per distinct image, kept in host memory

  c.sample = ml_collections.ConfigDict()  # the per-class grid written at the end
  c.sample.method = "dpmpp_2m"
  c.sample.num_steps = 25
  c.sample.guidance_scale = 2.0
  c.sample.per_class = 10

  c.parallel = ml_collections.ConfigDict()
  c.parallel.mode = "pmap"
  c.parallel.num_devices = 0
  c.parallel.num_fsdp = 1
  # mesh mode: (logical axis name, mesh axis) pairs in priority order (README "Sharding by
  # logical axes"); arrays no rule shards fall back to their largest fsdp-divisible dimension
  c.parallel.axis_rules = axis_rules.DEFAULT_RULES
  # CPU hosts: the step's convolution library, "auto" | "ynnpack" | "eigen" | "eigen_1thread"
  # (ldm_jax/xla_cpu.py; auto: the measured choice by network width, YNNPACK for these; XLA_FLAGS
  # that set it win)
  c.parallel.cpu_convolutions = "auto"

  c.distributed = distributed.default_config()  # multi-process runs (README: pods and clusters)
  c.lock()
  return c
