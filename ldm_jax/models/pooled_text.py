"""A pooled-embedding text conditioner: one vector per caption instead of one per token.

The baseline against which per-token cross-attention is measured (issue 13): the text encoder's
context c [B, L, D] is averaged over its L positions into c_bar [B, 1, D], so the UNet's
cross-attention sees a single key/value per caption -- it can still condition on the caption as a
whole (like a class embedding), but cannot attend to individual words. Pad positions are included
in the mean (the encoder is bidirectional and trained jointly, so it can move the caption's
information anywhere; BERTEmbedder's own context also attends to padding).

    enc = PooledText(BERT_TINY(vocab_size=40, max_length=16))
    params = enc.init(rng, ids)["params"]          # {"encoder": ...}
    enc.apply({"params": params}, ids)             # float32 [B, 1, width]
"""

import flax.linen as nn
import jax.numpy as jnp


class PooledText(nn.Module):
  """``apply({"params": p}, input_ids, *, train=False)`` -> mean of ``encoder``'s context, [B, 1, D].

  Exposes the wrapped encoder's ``vocab_size``, ``max_length`` and ``width`` (what the prompt
  code checks token ids and the UNet's cross_attention_dim against).
  """
  encoder: nn.Module

  @property
  def vocab_size(self):
    return self.encoder.vocab_size

  @property
  def max_length(self):
    return self.encoder.max_length

  @property
  def width(self):
    return self.encoder.width

  @nn.compact
  def __call__(self, input_ids, *, train=False):
    context = self.encoder(input_ids, train=train)
    return jnp.mean(context.astype(jnp.float32), axis=1, keepdims=True)
