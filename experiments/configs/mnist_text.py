"""Text-conditioned MNIST-pairs LDM: "3 left of seven" -> a 32 x 64 canvas of two digits.

LDM's txt2img recipe at CPU scale (Rombach et al. 2022 sec. 4.3): a small transformer text encoder
(LDM's BERTEmbedder) trained jointly with a cross-attention UNet, caption dropout for
classifier-free guidance. The first stage is the MNIST autoencoder (fully convolutional, so the
32 x 32 digit model encodes the 32 x 64 canvas into 8 x 16 x 3 latents).

Launch (after the autoencoder run of experiments/configs/mnist_autoencoder.py):
  python -m ldm_jax.main --config=experiments/configs/mnist_text.py --workdir=workdirs/mnist_text/ldm \
      --config.first_stage.workdir=workdirs/mnist/ae
  python -m ldm_jax.main sample --workdir=workdirs/mnist_text/ldm \
      --prompts="3 left of 7;seven right of two" --out=grid.png
The pooled-embedding baseline (one vector per caption, no per-token attention): --config.text.pooled=True.
A frozen pretrained encoder (SD fine-tuning style): --config.text.pretrained=<diffusers folder>
--config.text.train_encoder=False (the folder's tokenizer and encoder replace text.tokenizer/encoder).
"""

import ml_collections
from ml_collections import config_dict

from experiments.configs import mnist_ldm


def get_config() -> ml_collections.ConfigDict:
  c = mnist_ldm.get_config()
  c.unlock()
  data = c.data.to_dict()
  data.update(name="mnist_pairs",     # captioned digit pairs (ldm_jax/data/mnist_pairs.py)
              eval_split="heldout",   # the 10 pairs (d, d + 3 mod 10) never seen in training
              image_size=(32, 64),    # (H, W): the left digit in columns 0-31, the right in 32-63
              crop="none",
              caption_style="grammar")  # "digits": "3 7" only (the two-token diagnostic)
  c.data = ml_collections.ConfigDict(data)

  model = c.model.to_dict()
  # Cross-attention at both levels (8 x 16 and 4 x 8 latents): the prompt reaches every resolution,
  # as the class embedding does in mnist_ldm (at level 2 only, step 2,000 of a 4,000-step run
  # drew both digits as asked on 21.8% of seen pairs).
  model.update(down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
               mid_block_type="UNetMidBlock2DCrossAttn",
               cross_attention_dim=config_dict.placeholder(int),  # None: the encoder's width
               # Each cross-attention query knows its position (fixed 2-D sin-cos features),
               # so the left half can attend to the left digit's words: without them, the 3,000-
               # step model drew each half's digit right only 38-41% of the time and often
               # repeated one digit on both halves.
               attention_position_embedding="sincos_2d")
  c.model = ml_collections.ConfigDict(model)

  c.diffusion.conditioning = "text"
  c.diffusion.p_uncond = 0.1          # caption dropout to the empty prompt

  c.text = ml_collections.ConfigDict()
  c.text.tokenizer = "mnist_pairs"    # word-level over the caption grammar; "clip"; or a path
  c.text.max_length = 12              # tokens per caption, start and end included
  c.text.pretrained = ""              # a diffusers folder (tokenizer/ + text_encoder/ or bert/)
  c.text.train_encoder = True         # True: trained jointly (LDM); False: frozen (SD fine-tuning)
  c.text.pooled = False               # True: the pooled-embedding baseline
  c.text.lr_scale = 1.0               # joint training: the encoder's lr = lr_scale x optim's
  c.text.encoder = ml_collections.ConfigDict()  # ldm_jax.models.bert_text.BERTEmbedder fields
  c.text.encoder.preset = "BERTEmbedder"        # or "CLIPTextTransformer", or an upper-case preset
  c.text.encoder.width = 64
  c.text.encoder.layers = 2
  c.text.encoder.heads = 4
  c.text.encoder.head_dim = 16
  c.text.encoder.mlp_dim = 256
  c.text.encoder.dropout = 0.0
  c.text.encoder.dtype = "float32"
  c.text.encoder.param_dtype = "float32"
  c.text.encoder.remat = "none"
  c.text.encoder.attention_impl = "xla"

  c.sample = ml_collections.ConfigDict()  # the grid written at the end: one row per prompt
  c.sample.method = "dpmpp_2m"
  c.sample.num_steps = 25
  c.sample.guidance_scale = 2.0
  c.sample.per_class = 8              # samples per prompt
  c.sample.prompts = "3 left of 7;seven right of two;0 left of 3;five to the right of 2"
  c.lock()
  return c
