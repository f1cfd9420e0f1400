"""MNIST KL autoencoder (f = 4, 32x32x1 -> 8x8x3) on the embedded offline MNIST.

Launch:
  python -m ldm_jax.main --config=experiments/configs/mnist_autoencoder.py --workdir=workdirs/mnist_ae
Override any key, e.g. --config.train.num_steps=100 --config.parallel.mode=mesh.
"""

import ml_collections
from ml_collections import config_dict

from ldm_jax.train import axis_rules
from ldm_jax.train import distributed
from ldm_jax.train import optim


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = "autoencoder"
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

  c.model = ml_collections.ConfigDict()
  c.model.preset = "AutoencoderKL"    # a class or preset name of ldm_jax.models.autoencoder
  c.model.in_channels = 1
  c.model.out_channels = 1
  c.model.block_out_channels = (16, 32, 64)  # f = 4
  c.model.layers_per_block = 1
  c.model.z_channels = 3
  c.model.norm_groups = 8
  c.model.mid_attention = True
  c.model.dtype = "float32"           # activations: "float32" | "bfloat16" | "float16"
  c.model.param_dtype = "float32"     # params, optimizer state, EMA
  c.model.remat = "none"              # "none" | "full" | "dots" | "dots_no_batch"
  c.model.attention_impl = "xla"      # "xla" | "cudnn" (NVIDIA GPUs, 16-bit dtype)

  c.disc = ml_collections.ConfigDict()
  c.disc.base_channels = 32           # PatchGAN width (ndf)
  c.disc.num_layers = 2               # stride-2 layers: 32 -> 8 -> 7 patch grid
  c.disc.norm = "batch"
  c.disc.dtype = "float32"
  c.disc.param_dtype = "float32"
  c.disc.remat = "none"               # rematerialises the whole discriminator forward
  c.disc.attention_impl = "xla"       # unused: the PatchGAN has no attention

  c.loss = ml_collections.ConfigDict()
  c.loss.rec_loss = "l1"              # "l1" or "l2"
  c.loss.kl_weight = 1e-6             # LDM KL-f* autoencoders
  c.loss.codebook_weight = 1.0        # VQ only
  c.loss.disc_weight = 0.5
  c.loss.disc_start = 800             # step at which the adversarial term switches on
  c.loss.disc_loss = "hinge"
  c.loss.perceptual_weight = 0.0      # LPIPS (> 0 needs the two weight files below)
  c.loss.lpips_vgg = ""               # torchvision VGG16 state dict (.pth)
  c.loss.lpips_lin = ""               # the lpips package's weights/v0.1/vgg.pth

  c.optim = optim.default_config()
  c.optim.unlock()
  c.optim.learning_rate = 4.5e-4
  c.optim.b1, c.optim.b2 = 0.5, 0.9   # LDM / taming first-stage Adam betas
  c.optim.weight_decay = 0.0
  c.optim.warmup_steps = 50
  c.optim.decay = "cosine"
  c.optim.decay_steps = 1200
  c.optim.end_lr_factor = 0.1
  c.optim.lock()
  c.disc_learning_rate = 4.5e-4

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1200
  c.train.global_batch_size = 32
  c.train.save_every = 300
  c.train.log_every = 50
  c.train.image_every = 500           # preview grid to TensorBoard (and at the end); 0: never
  c.train.ema_decay = 0.999
  c.train.max_consecutive_bad = 20

  c.parallel = ml_collections.ConfigDict()
  c.parallel.mode = "pmap"            # "pmap" or "mesh"
  c.parallel.num_devices = 0          # 0: all devices
  c.parallel.num_fsdp = 1             # mesh mode: size of the "fsdp" axis
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
