"""Prompts as the pipeline's conditioning: host-side validation, and the text encoder as its own
small program, run once per call before the denoising program.

The encoder's output, the context [N, L, D], then enters the denoising program as an ordinary
traced argument, so new prompts never recompile it; the encoder program itself compiles once per
batch size. Classifier-free guidance (Ho & Salimans 2022) takes the negative prompts' context (the
empty prompt's by default) as its unconditional branch, as diffusers' StableDiffusionPipeline does:
eps = eps(x, null) + w (eps(x, cond) - eps(x, null)).
"""

import jax
import numpy as np

from ldm_jax import text


def check_prompts(prompts, n=None, name="prompts") -> list:
  """A str (repeated n times) or a list / tuple of n str -> list of n str (n None: any length >= 1)."""
  if isinstance(prompts, str):
    if n is None:
      return [prompts]
    return [prompts] * n
  expected = "a str" + ("" if n is None else f" or a list of num_samples={n} str")
  if not isinstance(prompts, (list, tuple)):
    raise ValueError(f"{name} must be {expected}, got {type(prompts).__name__} {prompts!r:.80}.")
  bad = [(i, type(p).__name__) for i, p in enumerate(prompts) if not isinstance(p, str)]
  if bad:
    raise ValueError(f"{name} must all be str; got non-strings at (index, type) {bad[:5]}.")
  if (n is not None and len(prompts) != n) or not prompts:
    raise ValueError(f"{name} must be {expected}, got a list of {len(prompts)}.")
  return list(prompts)


def check_kind(kind, has_text, *, labels=None, prompts=None, negative_prompts=None,
               context=None, null_context=None):
  """ValueError when the conditioning given does not fit the model (before anything compiles)."""
  given = [k for k, v in (("prompts", prompts), ("negative_prompts", negative_prompts))
           if v is not None]
  if given and not has_text:
    what = {"class": "class-conditional (give labels=)",
            "context": "conditioned on a context without a text encoder (give context=)",
            "none": "unconditional"}[kind]
    raise ValueError(f"This model is {what}; it takes no {' or '.join(given)}.")
  if has_text:
    if labels is not None:
      raise ValueError(f"This model is conditioned on text: give prompts= (str or list of str), "
                       f"not labels={labels!r:.80}.")
    if prompts is not None and context is not None:
      raise ValueError("Give prompts= or context=, not both.")
    if negative_prompts is not None and null_context is not None:
      raise ValueError("Give negative_prompts= or null_context=, not both.")
    if prompts is None and context is None:
      raise ValueError("This model is conditioned on text: give prompts= (a str or a list of "
                       "num_samples str), or a context [N, L, D] with context=.")


def contexts(encode, n, prompts, negative_prompts, context, null_context):
  """(context, null_context) with prompts replaced by their encodings [n, L, D] (one encoder call).

  encode(list of str) -> float32 [len, L, D]. The null context defaults to the encoding of the
  negative prompts, or of "" when there are none (diffusers' unconditional branch).
  """
  p = None if prompts is None else check_prompts(prompts, n)
  neg = None
  if null_context is None:
    neg = check_prompts("" if negative_prompts is None else negative_prompts, n,
                        name="negative_prompts")
  texts = (p or []) + (neg or [])
  if not texts:
    return context, null_context
  encoded = encode(texts)
  if p is not None:
    context, encoded = encoded[:n], encoded[n:]
  if neg is not None:
    null_context = encoded
  return context, null_context


def interpolation_ends(encode, a, b, num, negative_prompts, null_context):
  """((a, b), negatives) for `interpolate`: endpoints given as prompts encoded to contexts [1, L, D]
  (others returned as given), the one negative prompt repeated num times (None: none).

  encode: list of str -> [len, L, D], or None for models without a text encoder.
  """
  texts = [isinstance(e, str) for e in (a, b)]
  if any(texts) and encode is None:
    raise ValueError("This model has no text encoder: the endpoints a and b must be contexts "
                     "[L, D], not prompts.")
  if negative_prompts is not None:
    if encode is None or null_context is not None:
      raise ValueError("negative_prompts need a text model and no null_context.")
    if not isinstance(negative_prompts, str):
      raise ValueError(f"negative_prompts of interpolate must be one str, got "
                       f"{negative_prompts!r:.80}.")
  if any(texts):
    encoded = list(encode([e for e, t in zip((a, b), texts) if t]))
    a, b = (encoded.pop(0)[None] if t else e for e, t in zip((a, b), texts))
  return (a, b), (None if negative_prompts is None else [negative_prompts] * num)


def encode_program(module, on_trace):
  """encode(params, ids int32 [N, L]) -> float32 context [N, L, D] (compiles once per N)."""
  def fn(params, ids):
    on_trace("prompts")
    return module.apply({"params": params}, ids).astype(np.float32)
  return jax.jit(fn)


def encode(encoder, program, prompts) -> np.ndarray:
  """Host float32 context [N, L, D] of a list of str through `program` (see encode_program)."""
  return np.asarray(program(encoder.params, text.prompt_ids(encoder, prompts)), np.float32)
