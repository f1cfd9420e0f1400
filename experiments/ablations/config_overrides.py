"""Dotted-key overrides of the ablations' ml_collections configs: the tiny and per-scale model
sizes, the length and learning-rate schedule of a short run, and `apply_overrides`, which sets
them on a locked config."""

import numpy as np


def apply_overrides(config, overrides):
  """Sets dotted keys ("train.num_steps") of a locked ml_collections config: misspelt keys fail,
  except keys marked new with a leading "+" ("+model.num_embeddings"), which are added."""
  for key, value in overrides.items():
    new = key.startswith("+")
    node = config
    *path, last = key.lstrip("+").split(".")
    for part in path:
      node = getattr(node, part)
    if new:
      with node.unlocked():
        setattr(node, last, value)
      continue
    if not hasattr(node, last):
      raise ValueError(f"Unknown config key {key!r}.")
    setattr(node, last, value)
  return config


def tiny_autoencoder_overrides(f=4, z_channels=3):
  """A very small KL autoencoder with downsampling factor f (a power of 2), no GAN, no attention."""
  levels = int(np.log2(f)) + 1
  return {"model.block_out_channels": (8,) * levels, "model.layers_per_block": 1,
          "model.z_channels": z_channels, "model.norm_groups": 4, "model.mid_attention": False,
          "disc.base_channels": 8, "disc.num_layers": 1, "loss.disc_start": 10 ** 9}


def tiny_unet_overrides():
  """A one-level UNet without attention (compiles fastest; for tests)."""
  return {"model.block_out_channels": (16,), "model.layers_per_block": 1,
          "model.down_block_types": ("DownBlock2D",), "model.up_block_types": ("UpBlock2D",),
          "model.mid_block_type": None, "model.norm_num_groups": 8, "model.attention_head_dim": 8}


def unet_overrides(scale):
  """The LDM's UNet per scale: tiny as `tiny_unet_overrides`; cpu: (32, 64), attention only in
  the mid block."""
  o = tiny_unet_overrides()
  if scale == "cpu":
    o.update({"model.block_out_channels": (32, 64), "model.norm_num_groups": 16,
              "model.down_block_types": ("DownBlock2D", "DownBlock2D"),
              "model.up_block_types": ("UpBlock2D", "UpBlock2D"), "model.mid_block_type": "UNetMidBlock2D"})
  return o


def run_overrides(steps, batch, seed=0, lr=None, decay_steps=None):
  """Length, batch, seed and learning-rate schedule of a short run (cosine decay over decay_steps,
  default `steps`: give the final step count when a run is resumed in stages)."""
  decay_steps = decay_steps or steps
  o = {"train.num_steps": steps, "train.global_batch_size": batch, "train.save_every": max(steps, 1),
       "train.log_every": max(1, min(50, steps)), "optim.decay_steps": max(decay_steps, 1),
       "optim.warmup_steps": min(100, max(decay_steps // 10, 0)), "seed": seed,
       "train.image_every": 0}  # no preview grids: the scripts evaluate with their own samples
  if lr is not None:
    o["optim.learning_rate"] = lr
  return o
