"""Semantic synthesis on MNIST pairs: a map of digit-class strokes -> a 32 x 64 canvas of two digits.

LDM's semantic synthesis (Rombach et al. 2022 sec. 4.3.2; CompVis' semantic_synthesis256 config)
at CPU scale: the segmentation map is derived from each canvas and its label 10 * left + right
(concat.degradation "segmentation_pairs": 0 = background, d + 1 = a stroke pixel of digit d, so
no external data), one-hot over K = 11 classes, averaged to the 8 x 16 latent grid and
concatenated to z_t (3 + 11 UNet input channels, `ldm_jax/diffusion/concat.py`). The first stage
is the MNIST autoencoder (fully convolutional: the 32 x 32 digit model encodes the 32 x 64 canvas).

Launch (after the autoencoder run of experiments/configs/mnist_autoencoder.py):
  python -m ldm_jax.main --config=experiments/configs/mnist_semantic.py \
      --workdir=workdirs/mnist_semantic --config.first_stage.workdir=workdirs/mnist/ae
then in Python (maps: int [N, 32, 64] in 0..10, e.g. `concat.segmentation_pairs` of test canvases):
  pipe = LatentDiffusionPipeline.from_workdir("workdirs/mnist_semantic")
  images = pipe.synthesize(jax.random.key(0), maps, guidance_scale=2.0)   # uint8 [N, 32, 64, 1]
"""

import ml_collections

from experiments.configs import mnist_ldm


def get_config() -> ml_collections.ConfigDict:
  c = mnist_ldm.get_config()
  c.unlock()
  data = c.data.to_dict()
  data.update(name="mnist_pairs",     # digit pairs with labels 10 * left + right (data/mnist_pairs.py)
              eval_split="heldout",   # the 10 pairs (d, d + 3 mod 10) never seen in training
              image_size=(32, 64),    # (H, W): the left digit in columns 0-31, the right in 32-63
              crop="none")
  c.data = ml_collections.ConfigDict(data)
  c.diffusion.conditioning = "concat"
  c.concat.degradation = "segmentation_pairs"  # the stroke map of each canvas and its label
  c.concat.p_drop = 0.1               # c -> zeros (no map) for classifier-free guidance
  c.train.image_every = 0             # no preview for maps yet: pipe.synthesize on the export
  c.lock()
  return c
