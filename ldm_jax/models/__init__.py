"""Flax Linen networks of a latent diffusion model: autoencoders (first stage) and the UNet."""
