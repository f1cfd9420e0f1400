"""Adversarial losses of the first stage (Esser et al. 2021, eq. 4-7; Rombach et al. 2022 app. G).

Pure functions of discriminator logits. The generator and the discriminator are trained from one
scalar: `generator_loss` sees the discriminator through stop_gradient and `discriminator_loss`
sees the images through stop_gradient, so one gradient of their sum updates each network with its
own objective.
"""

import jax
import jax.numpy as jnp

DISC_LOSSES = ("hinge", "vanilla")


def check_disc_loss(name: str) -> None:
  if name not in DISC_LOSSES:
    raise ValueError(f"Unknown discriminator loss {name!r}; valid choices: {', '.join(DISC_LOSSES)}.")


def discriminator_loss(logits_real, logits_fake, kind: str = "hinge"):
  """L_D, averaged over patches and batch.

  hinge: 1/2 (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]); vanilla: 1/2 (E[softplus(-D(x))] +
  E[softplus(D(x_hat))]) (the non-saturating GAN loss).
  """
  check_disc_loss(kind)
  if kind == "hinge":
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))
  return 0.5 * (jnp.mean(jax.nn.softplus(-logits_real)) + jnp.mean(jax.nn.softplus(logits_fake)))


def generator_loss(logits_fake):
  """L_G = -E[D(x_hat)] (the generator side of the hinge loss, used with both D losses)."""
  return -jnp.mean(logits_fake)


def adaptive_weight(grad_rec, grad_gan, max_weight: float = 1e4, eps: float = 1e-4):
  """lambda = ||grad_{G_L} L_rec|| / (||grad_{G_L} L_G|| + eps) (Esser et al. 2021, eq. 7).

  grad_rec, grad_gan: gradients of the two losses w.r.t. the last decoder layer G_L (pytrees).
  The weight is clipped to [0, max_weight] and carries no gradient.
  """
  norm = lambda g: jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(g)))
  w = norm(grad_rec) / (norm(grad_gan) + eps)
  return jax.lax.stop_gradient(jnp.clip(w, 0.0, max_weight))


def adopt_weight(step, start_step, value=1.0):
  """`value` once `step` >= `start_step`, else 0 (the disc_start switch)."""
  return jnp.where(step >= start_step, value, 0.0)
