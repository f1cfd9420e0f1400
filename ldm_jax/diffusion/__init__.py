"""The diffusion process as pure functions: forward process, posterior, parameterisations, losses."""

from ldm_jax.diffusion.forward import check_timesteps, q_sample
from ldm_jax.diffusion.likelihood import (
    DECODERS,
    VLBTerms,
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    normal_kl,
    prior_kl,
    vlb_terms,
)
from ldm_jax.diffusion.losses import LOSS_TYPES, WEIGHTINGS, loss_from_output, loss_weight, training_loss
from ldm_jax.diffusion.parameterization import (
    PREDICTION_TYPES,
    append_dims,
    eps_to_x0,
    model_output_to_x0_eps,
    target_from_x0_eps,
    v_target,
    v_to_eps,
    v_to_x0,
    x0_to_eps,
)
from ldm_jax.diffusion.posterior import (
    posterior_log_variance_clipped,
    posterior_mean_coefs,
    posterior_variance,
    q_posterior,
)

# The name for the training loss.
diffusion_loss = training_loss
