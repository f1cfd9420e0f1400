"""ldm_jax: Latent Diffusion Models (Rombach et al., CVPR 2022) in JAX / Flax."""

__version__ = "0.1.0"
