"""The two training stages of a latent diffusion model: the autoencoder and the latent diffusion model."""
