"""Torch references for the text-encoder conversion tests: tiny random transformers CLIPTextModel /
diffusers LDMBertModel, their outputs, and the compiled Flax forward pass they are compared with."""

import functools

import jax
import numpy as np
import torch
import transformers
from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (LDMBertConfig,
                                                                             LDMBertModel)

RTOL = 1e-5


def randomize(model, seed=0):
  """Every parameter (LayerNorms and biases too) random, so no mapping hides behind ones / zeros."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (0.1 if p.ndim == 1 else 0.0))
  return model.eval()


def tiny_clip(act):
  config = transformers.CLIPTextConfig(
      vocab_size=1000, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
      num_attention_heads=4, max_position_embeddings=77, hidden_act=act, bos_token_id=998,
      eos_token_id=999, pad_token_id=999)
  return randomize(transformers.CLIPTextModel(config), seed={"quick_gelu": 0, "gelu": 1}[act])


def tiny_ldm_bert():
  config = LDMBertConfig(vocab_size=1000, max_position_embeddings=77, encoder_layers=2,
                         encoder_ffn_dim=96, encoder_attention_heads=4, head_dim=8, d_model=48)
  return randomize(LDMBertModel(config), seed=2)


IDS = np.random.default_rng(0).integers(0, 1000, size=(2, 77)).astype(np.int64)


def torch_outputs(model, ids=IDS):
  with torch.no_grad():
    out = model(torch.from_numpy(ids), output_hidden_states=True, return_dict=True)
  return out.last_hidden_state.numpy(), [h.numpy() for h in out.hidden_states]


@functools.partial(jax.jit, static_argnums=0)
def flax_outputs(module, params, ids):
  return module.apply({"params": params}, ids, output_hidden_states=True)


def assert_close(a, b):
  """Within 1e-5 relative, elementwise and to the scale of the reference."""
  np.testing.assert_allclose(np.asarray(a), b, rtol=RTOL, atol=RTOL * np.abs(b).max())
