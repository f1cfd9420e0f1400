"""PyTorch peers of the benchmarked JAX train steps: diffusers modules, eager or `torch.compile`.

Each builder returns `(call, n_params)`: `call()` runs one whole step on the CPU and returns the
loss as a Python float (torch on the CPU is synchronous, so a returned `call()` is a finished
step); the caller times it (`experiments/benchmarks/train_throughput.py`). Set the thread count
(`torch.set_num_threads`) BEFORE building a compiled step: inductor's C++ kernels fix their OpenMP
thread count when they are generated.

torch.compile here is what a PyTorch user writes for a training loop: `module.compile(...)` on the
networks (the diffusers UNet, and the frozen KL encoder in the stage step) with the inductor
backend, `dynamic=False` (shapes never change) and `fullgraph=True` (a graph break is an error,
so a "compiled" row never runs half eager). AOTAutograd compiles the backward as well. The
few elementwise ops around the networks (q_sample, the MSE, label dropout), the clipping, AdamW
(torch's default implementation; on the CPU that is the per-tensor loop, not fused=True) and the
EMA stay eager.
"""

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DModel


def _compiled(module: torch.nn.Module, compile_mode: str | None) -> torch.nn.Module:
  """`module`, compiled in place with inductor when compile_mode is a torch.compile mode ("default",
  "max-autotune", ...; torch names the valid ones on a bad one), else (None) eager."""
  if compile_mode is None:
    return module
  module.compile(backend="inductor", mode=compile_mode, dynamic=False, fullgraph=True)
  return module


def _reset_compiler(compile_mode: str | None) -> None:
  """A fresh dynamo cache, so that a new thread count or model compiles anew (no stale guards)."""
  if compile_mode is not None:
    torch._dynamo.reset()  # pylint: disable=protected-access


def _config(config: dict) -> dict:
  return {k: v for k, v in config.items() if not k.startswith("_")}


def _q_sample(abar, z, t, eps):
  """z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4); z, eps [B, C, H, W]."""
  a = abar[t].view(-1, 1, 1, 1)
  return a.sqrt() * z + (1.0 - a).sqrt() * eps


def unet_step(unet_config: dict, z: np.ndarray, y: np.ndarray | None, abar: np.ndarray, *,
              lr: float, weight_decay: float, compile_mode: str | None = None):
  """The UNet train step: t ~ U{0..T-1}, eps ~ N(0, I), the MSE of eps_theta(z_t, t, y) to eps
  (Rombach et al. 2022 eq. 2), backward, one torch.optim.AdamW update.

  unet_config: diffusers `UNet2DModel` config (`unet_config_from_module`); z: float32 latents
  [B, H, W, C] (NHWC, transposed here); y: int32 [B] or None; abar: alphas_cumprod [T]."""
  _reset_compiler(compile_mode)
  torch.manual_seed(0)
  model = _compiled(UNet2DModel.from_config(_config(unet_config)).train(), compile_mode)
  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
  abar = torch.tensor(np.asarray(abar), dtype=torch.float32)  # a copy: jax arrays are read-only
  z = torch.from_numpy(z).permute(0, 3, 1, 2).contiguous()
  y = None if y is None else torch.from_numpy(y).long()

  def call():
    t = torch.randint(0, abar.shape[0], (z.shape[0],))
    eps = torch.randn_like(z)
    loss = torch.nn.functional.mse_loss(model(_q_sample(abar, z, t, eps), t, class_labels=y).sample, eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()
  return call, sum(p.numel() for p in model.parameters())


class _EncodeSample(torch.nn.Module):
  """z ~ q(z | x) of a diffusers AutoencoderKL: x [B, C, H, W] in [-1, 1] -> [B, z, H/f, W/f]."""

  def __init__(self, vae: AutoencoderKL):
    super().__init__()
    self.vae = vae

  def forward(self, x):
    return self.vae.encode(x).latent_dist.sample()


def stage_step(unet_config: dict, vae_config: dict, images: np.ndarray, labels: np.ndarray,
               abar: np.ndarray, lr_table: np.ndarray, *, num_classes: int, p_uncond: float,
               scale_factor: float, optim, ema_decay: float, compile_mode: str | None = None):
  """The project's full LDM stage step (`ldm_jax.stages.latent_diffusion` + `ldm_jax.train.step`)
  in PyTorch: z ~ q(z|x) from the frozen KL encoder on uint8 images, z *= scale_factor, label
  dropout to the null label `num_classes` with probability p_uncond, the UNet step's MSE, backward,
  global-norm clipping, AdamW at the learning rate lr_table[update] (the config's warm-up + decay,
  tabulated by the caller), and, when the gradient is finite (the guard), the update and the EMA
  ema <- ema + (1 - d)(theta - ema) with LDM's warm-up d = min(decay, (1 + n) / (10 + n)).

  unet_config / vae_config: diffusers configs (`unet_config_from_module`, `vae_config_from_module`);
  images: uint8 [B, H, W, C]; labels: int32 [B]; optim: the config's `optim` section (b1, b2, eps,
  weight_decay, grad_clip_norm). Returns (call, trainable UNet params + frozen autoencoder params)."""
  _reset_compiler(compile_mode)
  torch.manual_seed(0)
  unet = _compiled(UNet2DModel.from_config(_config(unet_config)).train(), compile_mode)
  vae = AutoencoderKL.from_config(_config(vae_config)).eval().requires_grad_(False)
  encode = _compiled(_EncodeSample(vae), compile_mode)
  params = list(unet.parameters())
  ema = [p.detach().clone() for p in params]
  lr_table = [float(v) for v in lr_table]
  opt = torch.optim.AdamW(params, lr=lr_table[0], betas=(optim.b1, optim.b2), eps=optim.eps,
                          weight_decay=optim.weight_decay)
  abar = torch.tensor(np.asarray(abar), dtype=torch.float32)  # a copy: jax arrays are read-only
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(labels).long()
  num_updates = [0]

  def call():
    with torch.no_grad():
      z = encode(x.float() / 127.5 - 1.0) * scale_factor
    y_drop = torch.where(torch.rand(y.shape) < p_uncond, torch.full_like(y, num_classes), y)
    t = torch.randint(0, abar.shape[0], (z.shape[0],))
    eps = torch.randn_like(z)
    loss = torch.nn.functional.mse_loss(unet(_q_sample(abar, z, t, eps), t, class_labels=y_drop).sample, eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, optim.grad_clip_norm or float("inf"))
    if torch.isfinite(grad_norm):
      opt.step()
      num_updates[0] += 1
      n = num_updates[0]
      for group in opt.param_groups:
        group["lr"] = lr_table[min(n, len(lr_table) - 1)]
      d = min(ema_decay, (1.0 + n) / (10.0 + n))
      with torch.no_grad():
        torch._foreach_lerp_(ema, params, 1.0 - d)  # pylint: disable=protected-access
    return loss.item()
  n_params = sum(p.numel() for p in params) + sum(p.numel() for p in vae.parameters())
  return call, n_params
