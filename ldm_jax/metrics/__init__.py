"""Evaluation metrics: Frechet distance, precision/recall, PSNR/SSIM, FID Inception-v3 features,
an MNIST digit classifier."""

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

# `precision_recall` is deliberately not re-exported: the function would shadow its module here.
