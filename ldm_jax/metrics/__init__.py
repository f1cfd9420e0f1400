"""Evaluation metrics: Frechet distance, precision/recall, PSNR/SSIM, FID Inception-v3 features,
the rate of a first stage's latent, an MNIST digit classifier. (Likelihood in bits/dim:
`ldm_jax.diffusion.vlb_terms` and `LatentDiffusionPipeline.latent_bits_per_dim`.)"""

from ldm_jax.metrics.frechet import (
    FeatureStats,
    frechet_distance,
    frechet_distance_from_stats,
    frechet_distance_jax,
    gaussian_from_stats,
    init_stats,
    merge_stats,
    psum_stats,
    stats_from_features,
    update_stats,
)
from ldm_jax.metrics.image import psnr, ssim
from ldm_jax.metrics.inception import FIDInceptionV3, inception_features
from ldm_jax.metrics.rate import kl_rate_bits, vq_rate_bits

# `precision_recall` is deliberately not re-exported: the function would shadow its module here.
