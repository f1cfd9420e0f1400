"""CLIP's text transformer (Radford et al. 2021): the prompt encoder of Stable Diffusion 1.x and 2.x.

Token + learned position embeddings -> ``layers`` pre-LayerNorm blocks
  x += self_attn(layer_norm1(x))   (causal: token i sees tokens <= i)
  x += fc2(act(fc1(layer_norm2(x))))
-> final_layer_norm. The context handed to the UNet is the final LayerNorm of the hidden state
``clip_skip`` layers before the last (0: the last; diffusers' ``clip_skip``), at all positions:
[B, 77, width]. act is "quick_gelu" x * sigmoid(1.702 x) (OpenAI CLIP, SD 1.x) or "gelu" (exact
erf form; OpenCLIP, SD 2.x).

Submodule names mirror transformers' ``CLIPTextTransformer`` (``embeddings/token_embedding``,
``embeddings/position_embedding``, ``encoder/layers_0/self_attn/q_proj``, ``.../layer_norm1``,
``.../mlp/fc1``, ``final_layer_norm``), so a ``CLIPTextModel`` state dict loads one-to-one
(``ldm_jax.convert.text_encoders``). LayerNorms, attention logits / softmax and the returned
context are float32 whatever ``dtype``; ``remat`` rematerialises every block in the backward pass.

Presets (end of file): CLIP_VIT_L14_TEXT (SD 1.x), OPENCLIP_VIT_H14_TEXT (SD 2.x: the 23 blocks it
uses of OpenCLIP's 24, i.e. its "penultimate" layer, then ln_final) and CLIP_TEXT_TINY (tests).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ldm_jax.models import precision
from ldm_jax.models.embeddings import logical_dense
from ldm_jax.models.text_attention import SelfAttention, check_attention_impl
from ldm_jax.models.transformer import layer_norm

Dtype = Any


def quick_gelu(x):
  """x * sigmoid(1.702 x): OpenAI CLIP's GELU approximation."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": functools.partial(nn.gelu, approximate=False)}


def check_token_ids(input_ids, max_length):
  """int [B, L] with L <= max_length, else ValueError naming the shape / dtype received."""
  if input_ids.ndim != 2 or input_ids.shape[1] > max_length:
    raise ValueError(f"input_ids: expected shape [B, L] with L <= {max_length}, got "
                     f"{input_ids.shape}")
  if not jnp.issubdtype(input_ids.dtype, jnp.integer):
    raise ValueError(f"input_ids: expected integer token ids, got dtype {input_ids.dtype}")


def embedding(num, dim, *, name, std, param_dtype, axes=("vocab", "embed")):
  init = nn.with_logical_partitioning(nn.initializers.normal(std), axes)
  return nn.Embed(num, dim, param_dtype=param_dtype, embedding_init=init, name=name)


class CLIPTextEmbeddings(nn.Module):
  """token_embedding(ids) + position_embedding(0 .. L-1).  int [B, L] -> [B, L, width]."""
  vocab_size: int
  max_length: int
  width: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids):
    tok = embedding(self.vocab_size, self.width, name="token_embedding", std=0.02,
                    param_dtype=self.param_dtype)(input_ids)
    pos = embedding(self.max_length, self.width, name="position_embedding", std=0.01,
                    param_dtype=self.param_dtype, axes=(None, "embed"))
    return (tok + pos(jnp.arange(input_ids.shape[1]))[None]).astype(self.dtype)


class CLIPMLP(nn.Module):
  """fc2(act(fc1(x))).  [B, L, C] -> [B, L, C]."""
  mlp_dim: int
  activation: str
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = logical_dense(self.mlp_dim, ("embed", "mlp"), name="fc1", **kw)(x)
    return logical_dense(x.shape[-1], ("mlp", "embed"), name="fc2", **kw)(
        ACTIVATIONS[self.activation](h))


class CLIPEncoderLayer(nn.Module):
  """x += self_attn(layer_norm1(x)) (causal); x += mlp(layer_norm2(x)).  [B, L, C]."""
  heads: int
  mlp_dim: int
  activation: str
  layer_norm_eps: float = 1e-5
  attention_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda h, name: layer_norm(h, name=name, epsilon=self.layer_norm_eps, **kw)
    width = x.shape[-1]
    x = x + SelfAttention(self.heads, width // self.heads, qkv_bias=True, causal=True,
                          attention_impl=self.attention_impl, name="self_attn",
                          **kw)(norm(x, "layer_norm1"))
    return x + CLIPMLP(self.mlp_dim, self.activation, name="mlp", **kw)(norm(x, "layer_norm2"))


class CLIPEncoder(nn.Module):
  """``layers`` blocks; returns the hidden states (input, after block 1, ..., after the last)."""
  layers: int
  heads: int
  mlp_dim: int
  activation: str
  layer_norm_eps: float = 1e-5
  remat: bool | str = False  # or a policy name of ldm_jax.models.precision
  attention_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cls = precision.maybe_remat(CLIPEncoderLayer, self.remat)
    hidden = [x]
    for i in range(self.layers):
      x = cls(heads=self.heads, mlp_dim=self.mlp_dim, activation=self.activation,
              layer_norm_eps=self.layer_norm_eps, attention_impl=self.attention_impl,
              dtype=self.dtype, param_dtype=self.param_dtype, name=f"layers_{i}")(x)
      hidden.append(x)
    return hidden


class CLIPTextTransformer(nn.Module):
  """Prompt encoder.  ``apply({"params": p}, input_ids, *, train=False, output_hidden_states=False)``.

  input_ids: int [B, L], L <= max_length (77 for SD). Returns the float32 context [B, L, width]
  = final_layer_norm(hidden_states[-1 - clip_skip]); with ``output_hidden_states`` the pair
  (context, hidden_states), hidden_states a tuple of layers + 1 arrays [B, L, width] (the
  embeddings, then each block's output, before the final LayerNorm; as transformers'). Blocks
  after the one ``clip_skip`` selects are dead code under jit.
  """
  vocab_size: int = 49408
  max_length: int = 77  # max_position_embeddings
  width: int = 768
  layers: int = 12
  heads: int = 12
  mlp_dim: int = 3072
  activation: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  clip_skip: int = 0
  remat: bool | str = False  # or a policy name of ldm_jax.models.precision
  attention_impl: str | None = None  # None/"xla", or "cudnn" (fused GPU kernel, bf16/fp16)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def check_config(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation {self.activation!r} not in {tuple(ACTIVATIONS)}")
    if self.width % self.heads:
      raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
    if not 0 <= self.clip_skip < self.layers:
      raise ValueError(f"clip_skip {self.clip_skip} must be in [0, layers={self.layers})")
    check_attention_impl(self.attention_impl)

  @nn.compact
  def __call__(self, input_ids, *, train=False, output_hidden_states=False):
    del train  # CLIP's text tower has no dropout; taken so every text encoder has one interface
    self.check_config()
    input_ids = jnp.asarray(input_ids)
    check_token_ids(input_ids, self.max_length)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = CLIPTextEmbeddings(self.vocab_size, self.max_length, self.width, name="embeddings",
                           **kw)(input_ids)
    hidden = CLIPEncoder(layers=self.layers, heads=self.heads, mlp_dim=self.mlp_dim,
                         activation=self.activation, layer_norm_eps=self.layer_norm_eps,
                         remat=self.remat, attention_impl=self.attention_impl, name="encoder",
                         **kw)(x)
    context = layer_norm(hidden[-1 - self.clip_skip], name="final_layer_norm",
                         epsilon=self.layer_norm_eps, dtype=jnp.float32,
                         param_dtype=self.param_dtype)
    return (context, tuple(hidden)) if output_hidden_states else context


# SD 1.x: openai/clip-vit-large-patch14's text tower (123M parameters).
CLIP_VIT_L14_TEXT = functools.partial(CLIPTextTransformer)
# SD 2.x: OpenCLIP ViT-H/14's text tower up to its penultimate block (diffusers' 23-layer
# text_encoder; the single file's 24th block is never used).
OPENCLIP_VIT_H14_TEXT = functools.partial(CLIPTextTransformer, width=1024, layers=23, heads=16,
                                          mlp_dim=4096, activation="gelu")
CLIP_TEXT_TINY = functools.partial(CLIPTextTransformer, vocab_size=1000, width=32, layers=2,
                                   heads=4, mlp_dim=64)
