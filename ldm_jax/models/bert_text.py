"""LDM's BERTEmbedder: the prompt encoder of CompVis' txt2img-1p4B (Rombach et al. 2022, sec. 4.3).

A bidirectional transformer trained from scratch with the diffusion model (lucidrains'
x-transformers ``TransformerWrapper(Encoder(...))`` in the original code): token + learned
position embeddings -> ``layers`` pre-LayerNorm blocks
  x += out_proj(attention(q, k, v of self_attn_layer_norm(x)))   (q/k/v without bias)
  x += fc2(gelu(fc1(final_layer_norm(x))))
-> layer_norm. The context is the final output at all positions: [B, 77, width]; there is no
padding mask (the original attends to [PAD] tokens too).

Submodule names mirror diffusers' ``LDMBertEncoder`` (``embed_tokens``, ``embed_positions``,
``layers_0/self_attn/q_proj``, ``.../self_attn_layer_norm``, ``.../fc1``, ``.../final_layer_norm``,
``layer_norm``); ``ldm_jax.convert.text_encoders`` loads diffusers' ``LDMBertModel`` folders and
``ldm_jax.convert.text_checkpoint`` the original ``cond_stage_model.transformer.*`` tensors.
Trainable: ``dropout`` (default 0, as the original) applies to the embeddings and each residual
branch with ``train=True`` (rng "dropout"). LayerNorms and softmax in float32; context float32.

Presets: BERT_TXT2IMG_1P4B (n_embed 1280, n_layer 32, 8 heads x 64) and BERT_TINY (tests).
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ldm_jax.models.clip_text import check_token_ids, embedding
from ldm_jax.models import precision
from ldm_jax.models.embeddings import logical_dense
from ldm_jax.models.text_attention import SelfAttention, check_attention_impl
from ldm_jax.models.transformer import layer_norm

Dtype = Any


class LDMBertLayer(nn.Module):
  """Pre-LN block: attention (no q/k/v bias) then a GELU MLP, each with a residual.  [B, L, C]."""
  heads: int
  head_dim: int
  mlp_dim: int
  dropout: float = 0.0
  layer_norm_eps: float = 1e-5
  attention_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train=False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = lambda h, name: layer_norm(h, name=name, epsilon=self.layer_norm_eps, **kw)
    drop = lambda h: nn.Dropout(self.dropout, deterministic=not train)(h)
    x = x + drop(SelfAttention(self.heads, self.head_dim, qkv_bias=False,
                               attention_impl=self.attention_impl, name="self_attn",
                               **kw)(norm(x, "self_attn_layer_norm")))
    h = logical_dense(self.mlp_dim, ("embed", "mlp"), name="fc1", **kw)(
        norm(x, "final_layer_norm"))
    h = logical_dense(x.shape[-1], ("mlp", "embed"), name="fc2", **kw)(
        nn.gelu(h, approximate=False))
    return x + drop(h)


class BERTEmbedder(nn.Module):
  """Prompt encoder.  ``apply({"params": p}, input_ids, *, train=False, output_hidden_states=False)``.

  input_ids: int [B, L], L <= max_length. Returns the float32 context [B, L, width]; with
  ``output_hidden_states`` the pair (context, hidden_states): layers + 1 arrays [B, L, width],
  the embeddings then each block's output (before the final LayerNorm).
  """
  vocab_size: int = 30522
  max_length: int = 77
  width: int = 1280
  layers: int = 32
  heads: int = 8
  head_dim: int = 64
  mlp_dim: int = 5120
  dropout: float = 0.0
  layer_norm_eps: float = 1e-5
  remat: bool | str = False  # or a policy name of ldm_jax.models.precision
  attention_impl: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, *, train=False, output_hidden_states=False):
    check_attention_impl(self.attention_impl)
    input_ids = jnp.asarray(input_ids)
    check_token_ids(input_ids, self.max_length)
    tok = embedding(self.vocab_size, self.width, name="embed_tokens", std=0.02,
                    param_dtype=self.param_dtype)(input_ids)
    pos = embedding(self.max_length, self.width, name="embed_positions", std=0.02,
                    param_dtype=self.param_dtype, axes=(None, "embed"))
    x = (tok + pos(jnp.arange(input_ids.shape[1]))[None]).astype(self.dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    cls = precision.maybe_remat(LDMBertLayer, self.remat, static_argnums=(2,))
    hidden = [x]
    for i in range(self.layers):
      x = cls(heads=self.heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
              dropout=self.dropout, layer_norm_eps=self.layer_norm_eps,
              attention_impl=self.attention_impl, dtype=self.dtype,
              param_dtype=self.param_dtype, name=f"layers_{i}")(x, train)
      hidden.append(x)
    context = layer_norm(x, name="layer_norm", epsilon=self.layer_norm_eps, dtype=jnp.float32,
                         param_dtype=self.param_dtype)
    return (context, tuple(hidden)) if output_hidden_states else context


# CompVis txt2img-1p4B: BERTEmbedder(n_embed=1280, n_layer=32), x-transformers' 8 heads of 64.
BERT_TXT2IMG_1P4B = functools.partial(BERTEmbedder)
BERT_TINY = functools.partial(BERTEmbedder, vocab_size=1000, width=32, layers=2, heads=2,
                              head_dim=16, mlp_dim=128)
