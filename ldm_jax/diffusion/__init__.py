"""The diffusion process as pure functions: forward process, posterior, parameterisations, losses."""

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
