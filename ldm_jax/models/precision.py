"""Precision, rematerialisation and attention kernel of a network, as named in configs.

Configs give them as strings, validated here with errors that list the choices:
  dtype            activations / computation: "float32" | "bfloat16" | "float16"
  param_dtype      parameters, hence optimizer state and EMA: "float32" (default) | ...
  remat            "none" | "full" (save nothing: recompute each block in the backward pass) |
                   "dots" (save matmul / conv outputs) | "dots_no_batch" (save only those without
                   batch dimensions, i.e. the weight-like ones); JAX checkpoint policies
  attention_impl   "xla" (any backend) | "cudnn" (fused flash attention: NVIDIA GPUs, float16 /
                   bfloat16 activations)
GroupNorm / LayerNorm statistics, softmax, the timestep features and the outputs of the networks
stay float32 whatever `dtype` says, and so do the diffusion math, losses and sampler arithmetic
(which only ever see those float32 outputs).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = {"none": None, "full": None,
                  "dots": jax.checkpoint_policies.checkpoint_dots,
                  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
ATTENTION_IMPLS = ("xla", "cudnn")
PRECISION_KEYS = ("dtype", "param_dtype", "remat", "attention_impl")
DEFAULTS = {"dtype": "float32", "param_dtype": "float32", "remat": "none", "attention_impl": "xla"}


def dtype(name, what: str = "dtype"):
  """The jnp dtype named `name` ("float32", "bfloat16", "float16"; a jnp dtype passes through)."""
  if isinstance(name, str):
    if name not in DTYPES:
      raise ValueError(f"{what}={name!r}; valid choices: {', '.join(DTYPES)}.")
    return DTYPES[name]
  if name is not None and jnp.dtype(name).name in DTYPES:
    return DTYPES[jnp.dtype(name).name]
  raise ValueError(f"{what}={name!r}; valid choices: {', '.join(DTYPES)}.")


def remat_name(remat) -> str:
  """Normalises a remat setting: False / None -> "none", True -> "full", else a policy name."""
  if remat is None or remat is False:
    return "none"
  if remat is True:
    return "full"
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r}; valid choices: {', '.join(REMAT_POLICIES)}.")
  return remat


def maybe_remat(cls, remat, static_argnums=()):
  """`nn.remat(cls)` with the named policy, or `cls` itself when remat is off."""
  name = remat_name(remat)
  if name == "none":
    return cls
  return nn.remat(cls, policy=REMAT_POLICIES[name], static_argnums=static_argnums)


def attention_impl(impl, backend: str | None = None):
  """Checks an attention kernel name against the backend; returns it for dot_product_attention.

  "cudnn" needs a GPU: on any other backend this raises before anything is traced, rather than
  failing deep inside XLA.
  """
  if impl is None:
    return None
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={impl!r}; valid choices: {', '.join(ATTENTION_IMPLS)}.")
  if impl == "cudnn":
    backend = jax.default_backend() if backend is None else backend
    if backend not in ("gpu", "cuda"):
      raise ValueError(f"attention_impl='cudnn' (fused cuDNN flash attention) needs an NVIDIA GPU; "
                       f"this process's JAX backend is {backend!r}. Use attention_impl='xla' here.")
  return impl


def module_fields(section: dict, *, has_attention: bool = True) -> dict:
  """The precision keys of a config's model section -> module keyword arguments (validated)."""
  out = {}
  if "dtype" in section:
    out["dtype"] = dtype(section["dtype"], "dtype")
  if "param_dtype" in section:
    out["param_dtype"] = dtype(section["param_dtype"], "param_dtype")
  if "remat" in section:
    out["remat"] = remat_name(section["remat"])
  if "attention_impl" in section:
    impl = attention_impl(section["attention_impl"])
    if has_attention:
      out["attention_impl"] = impl
  return out
