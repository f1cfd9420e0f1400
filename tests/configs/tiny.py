"""Tiny MNIST stages for the command-line tests (a few seconds of compilation each on a CPU).

  python -m ldm_jax.main --config=tests/configs/tiny.py:autoencoder --workdir=W
  python -m ldm_jax.main --config=tests/configs/tiny.py:latent_diffusion --workdir=W \
      --config.first_stage.workdir=<autoencoder run>
  python -m ldm_jax.main --config=tests/configs/tiny.py:text --workdir=W \
      --config.first_stage.workdir=<autoencoder run>
  python -m ldm_jax.main --config=tests/configs/tiny.py:sr --workdir=W \
      --config.first_stage.workdir=<autoencoder run>
  python -m ldm_jax.main --config=tests/configs/tiny.py:semantic --workdir=W \
      --config.first_stage.workdir=<autoencoder run>
The autoencoder is one level (f = 1, 32x32x1 -> 32x32x2) without attention; the UNet one level of
one ResNet block without attention or mid block: the smallest networks that still exercise every
part of both stages (GAN, KL, EMA, frozen first stage, label dropout, scale factor). "sr": the
latent_diffusion UNet with concat conditioning (LDM-SR: the 8x8 bicubic image resized to the
32x32 latent grid and concatenated, 2 + 1 input channels). "semantic": the same UNet on MNIST
pairs (32 x 64) with the 11-class segmentation map concatenated (2 + 11 input channels).
"""

from experiments.configs import mnist_autoencoder, mnist_ldm, mnist_semantic, mnist_text

STAGES = ("autoencoder", "latent_diffusion", "text", "sr", "semantic")


def get_config(stage: str = "autoencoder"):
  if stage not in STAGES:
    raise ValueError(f"Unknown tiny stage {stage!r}; valid choices: {', '.join(STAGES)}.")
  if stage == "autoencoder":
    c = mnist_autoencoder.get_config()
    c.model.block_out_channels = (8,)
    c.model.z_channels = 2
    c.model.norm_groups = 4
    c.model.mid_attention = False
    c.disc.base_channels = 8
    c.disc.num_layers = 1
    c.loss.disc_start = 2
  else:  # one UNet level of one ResNet block; "text": cross-attention there, a 1-layer encoder
    text = stage == "text"
    c = (mnist_text.get_config() if text else
         mnist_semantic.get_config() if stage == "semantic" else mnist_ldm.get_config())
    block = "CrossAttn{}Block2D" if text else "{}Block2D"
    c.model.block_out_channels = (8,)
    c.model.layers_per_block = 1
    c.model.down_block_types = (block.format("Down"),)
    c.model.up_block_types = (block.format("Up"),)
    c.model.mid_block_type = None
    c.model.norm_num_groups = 4
    c.diffusion.num_timesteps = 100
    c.sample.method, c.sample.num_steps, c.sample.per_class = "ddim", 2, 2
    if stage == "sr":
      c.diffusion.conditioning = "concat"
    if text:  # MNIST pairs (32 x 64)
      c.model.attention_head_dim = 8
      c.text.encoder.width, c.text.encoder.layers, c.text.encoder.heads = 16, 1, 2
      c.text.encoder.head_dim, c.text.encoder.mlp_dim = 8, 32
  c.train.num_steps = 6
  c.train.global_batch_size = 8
  c.train.save_every = 0
  c.train.log_every = 1
  c.train.image_every = 0
  c.optim.decay_steps = 10
  c.optim.warmup_steps = 1
  c.distributed.initialization_timeout = 60
  c.distributed.heartbeat_timeout = 10
  return c
