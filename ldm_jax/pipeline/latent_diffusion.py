"""`LatentDiffusionPipeline`: a trained first stage + latent denoiser behind jitted, cached programs.

  pipe = LatentDiffusionPipeline.from_workdir("workdirs/mnist/ldm")
  images = pipe.sample(jax.random.key(0), 16, labels=3, guidance_scale=2.0)   # uint8 [16, 32, 32, 1]
  edited = pipe.img2img(jax.random.key(1), images, strength=0.6, labels=5)
  filled = pipe.inpaint(jax.random.key(2), images, mask, labels=3, resample=4)

  sr = LatentDiffusionPipeline.from_workdir("workdirs/mnist_sr")  # diffusion.conditioning="concat"
  upscaled = sr.upscale(jax.random.key(3), low_res)    # uint8 [N, 8, 8, 1] -> [N, 32, 32, 1]
  fill = LatentDiffusionPipeline.from_workdir("workdirs/mnist_inpaint")  # "inpaint_large_masks"
  filled = fill.inpaint(jax.random.key(4), images, mask)  # the trained path: UNet reads the mask
  seg = LatentDiffusionPipeline.from_workdir("workdirs/mnist_semantic")  # "segmentation_pairs"
  canvases = seg.synthesize(jax.random.key(5), maps)  # int [N, 32, 64] in 0..10 -> [N, 32, 64, 1]

  sd = LatentDiffusionPipeline.from_pretrained("stable-diffusion-v1-5")  # a diffusers folder
  images = sd.sample(jax.random.key(0), 2, prompts="a photo of a cat", negative_prompts="blurry")
  sdi = LatentDiffusionPipeline.from_pretrained("stable-diffusion-inpainting")  # 9-channel UNet
  filled = sdi.inpaint(jax.random.key(0), images, mask, prompts="a dog")  # diffusers' semantics
  ldm_sr = LatentDiffusionPipeline.from_pretrained("ldm-super-resolution-4x-openimages")  # 6-ch UNet
  upscaled = ldm_sr.upscale(jax.random.key(0), low_res)  # LDMSuperResolutionPipeline's semantics
  x4 = LatentDiffusionPipeline.from_pretrained("stable-diffusion-x4-upscaler")  # 7-channel UNet
  upscaled = x4.upscale(jax.random.key(0), low_res, prompts="a cat", noise_level=20)  # noised c

Every method validates its inputs on the host (ValueError before anything compiles, naming the
argument and its bad values): images uint8 in [0, 255] or float in [-1, 1] (floats within
`checks.IMAGE_MARGIN` = 0.25 of it tolerated, e.g. resampling overshoot), masks in [0, 1], latents,
contexts and guidance scales finite, labels in 0..num_classes-1. It then splits the
batch into chunks of at most `max_batch` (the last chunk is padded, so one shape compiles), shards
each chunk across the devices, and runs programs cached per (method, num_steps, batch, ...).
Sample b of a call draws all its noise from fold_in(rng, b), so results do not depend on chunking or
device count. Prompts are encoded by their own program before denoising (`prompts.py`); method,
num_steps and guidance_scale left as None take the pipeline's `defaults` (a run's config, or the
diffusers folder's scheduler), and every method's timestep grid follows `sampler_grid`.
"""

import collections
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ldm_jax import diffusion
from ldm_jax import images as images_lib
from ldm_jax import samplers
from ldm_jax import xla_cpu
from ldm_jax.diffusion import concat
from ldm_jax.models import precision
from ldm_jax.models.pooled_text import PooledText
from ldm_jax.pipeline import checks
from ldm_jax.pipeline.concat_tasks import ConcatTasks
from ldm_jax.pipeline import conditioning
from ldm_jax.pipeline import loading
from ldm_jax.pipeline import low_res
from ldm_jax.pipeline import noise_augmentation as noise_aug
from ldm_jax.pipeline import programs
from ldm_jax.pipeline import prompts as prompts_lib
from ldm_jax.pipeline import saving
from ldm_jax.pipeline import scheduler_config
from ldm_jax.pipeline import single_file
from ldm_jax.pipeline.persistent_cache import enable_persistent_cache


def _cast_floats(tree, dtype):
  cast = lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a
  return jax.tree.map(cast, tree)


def _pad(a, size):
  """Pads the leading axis of a host array to `size` by repeating its last row."""
  a = np.asarray(a)
  return a if a.shape[0] == size else np.concatenate([a, np.repeat(a[-1:], size - a.shape[0], 0)])


def slerp(a, b, w):
  """Spherical interpolation of two noise arrays [...] at weights w [K] -> [K, ...] (exact endpoints)."""
  a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
  cos = np.dot(a64.ravel(), b64.ravel()) / (np.linalg.norm(a64) * np.linalg.norm(b64))
  theta = np.arccos(np.clip(cos, -1.0, 1.0))
  w = np.asarray(w, np.float64).reshape((-1,) + (1,) * a64.ndim)
  if theta < 1e-4:
    return ((1.0 - w) * a64 + w * b64).astype(np.float32)
  return ((np.sin((1.0 - w) * theta) * a64 + np.sin(w * theta) * b64) / np.sin(theta)).astype(np.float32)


start_for_noise = samplers.start_step_for_noise  # the pipeline's name for it


class LatentDiffusionPipeline(ConcatTasks):
  """Generation, editing and restoration with a latent diffusion model (Rombach et al. 2022).

  Attributes:
    unet, unet_params; autoencoder, ae_params: the Flax modules and their parameters.
    schedule: the noise schedule; scale_factor, shift_factor: z_diffusion = (z - shift) * scale.
    prediction_type: what the UNet predicts; num_classes: class count (None: no labels); the
      null label used for classifier-free guidance is num_classes.
    latent_shape (h, w, c); image_shape (H, W, C).
    max_batch: largest batch one program runs; shard: spread each batch over all devices.
    dtype: the networks' computation dtype ("float32", "bfloat16", "float16"; None keeps the
      modules' own). Floating parameters are cast to it once, here; the sampler arithmetic, the
      diffusion math and the networks' outputs stay float32 (`ldm_jax.models.precision`).
    prompt_encoder: `ldm_jax.text.PromptEncoder` of a text-conditioned model (None: no prompts).
    concat_degradation: a concat-conditioned model's degradation name
      (`diffusion.concat.DEGRADATIONS`); its UNet reads [z_t, c]. Super-resolution ("image"
      kind): only `upscale` runs it; inpainting ("mask" kind, c = [mask, masked-image latents]):
      only `inpaint` runs it (`inpainting_model`); semantic synthesis ("segmentation" kind, c =
      class fractions of a map): only `synthesize` runs it (`segmentation_model`). With a text
      encoder too (a diffusers StableDiffusionInpaintPipeline folder) the UNet also reads the
      prompt's context.
    inpainting_null: what the unconditional branch of an inpainting model's guidance reads
      (`conditioning.INPAINTING_NULLS`): "fully_masked", c of the fully masked image (this
      project's training, the default), or "unchanged", the same c as the conditional branch
      (diffusers' StableDiffusionInpaintPipeline; `from_pretrained` sets it for such folders).
    low_res_input: which low-res images `upscale` takes (`low_res.LOW_RES_INPUTS`): "exact",
      those of `low_res_shape` only (this project's SR models, the default), or "diffusers", also
      uint8 images whose sides floored to a multiple of 32 give low_res_shape, first resized to it
      by PIL's Lanczos filter (LDMSuperResolutionPipeline's preprocess of PIL images;
      `from_pretrained` sets it for such folders). c is the same under both.
    noise_augmentation: `noise_augmentation.NoiseAugmentation` of a text-conditioned
      super-resolution model whose UNet reads the low-res image noised to a level s and s as its
      class label (diffusers' StableDiffusionUpscalePipeline; `from_pretrained` sets it for such
      folders); None: the low-res image is concatenated as it is.
    sampler_grid: timestep grid keywords of `samplers.make_tables` for every method
      (`scheduler_config.GRID_KEYS`: timestep_spacing, steps_offset, set_alpha_to_one, ...).
    defaults: the sampling settings used where a call leaves them None (`DEFAULTS` keys).
    trace_counts: Counter of program traces by name (each trace is one compilation).
  """

  DEFAULTS = {"method": "dpmpp_2m", "num_steps": 20, "guidance_scale": 1.0}

  def __init__(self, unet, unet_params, autoencoder, ae_params, schedule, *, scale_factor,
               latent_shape, shift_factor=0.0, prediction_type="epsilon", num_classes=None,
               max_batch=64, shard=True, persistent_cache=None, dtype=None, prompt_encoder=None,
               sampler_grid=None, defaults=None, concat_degradation=None,
               inpainting_null="fully_masked", low_res_input="exact", noise_augmentation=None):
    unet_params, ae_params = nn.meta.unbox(unet_params), nn.meta.unbox(ae_params)
    if dtype is not None:
      dtype = precision.dtype(dtype, "dtype")
      unet, autoencoder = unet.clone(dtype=dtype), autoencoder.clone(dtype=dtype)
      unet_params, ae_params = _cast_floats((unet_params, ae_params), dtype)
      if prompt_encoder is not None:
        module = prompt_encoder.module
        module = (module.clone(encoder=module.encoder.clone(dtype=dtype))
                  if isinstance(module, PooledText) else module.clone(dtype=dtype))
        prompt_encoder = prompt_encoder._replace(module=module,
                                                 params=_cast_floats(prompt_encoder.params, dtype))
    self.dtype = unet.dtype
    self.prompt_encoder = prompt_encoder
    self.sampler_grid = scheduler_config.check_grid(sampler_grid)
    self.defaults = checks.defaults(defaults, self.DEFAULTS)
    self.unet, self.unet_params = unet, unet_params
    self.autoencoder, self.ae_params = autoencoder, ae_params
    self.schedule, self.prediction_type, self.num_classes = schedule, prediction_type, num_classes
    self.scale_factor, self.shift_factor = float(scale_factor), float(shift_factor)
    self.latent_shape = tuple(int(v) for v in latent_shape)
    f = autoencoder.downsampling_factor
    self.image_shape = (self.latent_shape[0] * f, self.latent_shape[1] * f, autoencoder.out_channels)
    self.concat_degradation = concat_degradation
    if concat_degradation is not None:
      concat.get_degradation(concat_degradation)  # a known name
      latent, image = self.latent_shape[-1], self.image_shape[-1]
      want = latent + concat.concat_channels(concat_degradation, image, latent)
      what = concat.unet_inputs(concat_degradation, image, latent)
      if unet.in_channels != want:
        raise ValueError(f"concat_degradation={concat_degradation!r} needs a UNet reading {what} = "
                         f"{want}, got in_channels={unet.in_channels}.")
    self.inpainting_null = conditioning.check_inpainting_null(inpainting_null)
    self.low_res_input = low_res.check_rule(low_res_input)
    self.noise_augmentation = noise_augmentation
    if noise_augmentation is not None:
      if self.low_res_shape is None or not self.text_conditioned:
        raise ValueError("noise_augmentation belongs to a text-conditioned super-resolution model "
                         "(a concat_degradation of the 'image' kind and a prompt_encoder: the SD "
                         "x4 upscaler).")
      noise_aug.check(noise_augmentation, unet.num_class_embeds)
    if (self.inpainting_model and inpainting_null == "unchanged" and num_classes is None
        and prompt_encoder is None):
      raise ValueError("inpainting_null='unchanged' guides on the label or prompt alone, and this "
                       "inpainting model has neither (its guidance would compare c with itself); "
                       "use inpainting_null='fully_masked'.")
    self.max_batch = checks.positive_int(max_batch, "max_batch")
    self.shard = bool(shard)
    self.trace_counts = collections.Counter()
    self._programs, self._placements = {}, {}
    if persistent_cache:
      enable_persistent_cache(persistent_cache)

  enable_persistent_cache = staticmethod(enable_persistent_cache)

  @classmethod
  def from_workdir(cls, workdir: str, *, use_ema: bool = True, first_stage_workdir: str | None = None,
                   **kwargs):
    """Loads a latent diffusion run of this project (`<workdir>/export`, EMA weights by default).
    The autoencoder run is found where the LDM run recorded it, relative to it (runs moved or
    copied together keep loading), or at `first_stage_workdir` when given.
    kwargs: constructor arguments (max_batch, shard, dtype="bfloat16", ...), or overrides of the
    loaded ones."""
    return cls(**{**loading.from_workdir(workdir, use_ema, first_stage_workdir), **kwargs})

  @classmethod
  def from_pretrained(cls, path: str, *, num_classes=None, scheduler_config=None, **kwargs):
    """Loads a diffusers pipeline folder (model_index.json; unet/, vae/, scheduler/, and
    tokenizer/ + text_encoder/ for Stable Diffusion) through `ldm_jax.convert` and `ldm_jax.text`
    (see `loading.from_pretrained`). scheduler_config: overrides of the folder's scheduler config.
    kwargs: constructor arguments (e.g. dtype="bfloat16"), or overrides of the loaded ones (e.g.
    latent_shape, scale_factor, defaults)."""
    return cls(**{**loading.from_pretrained(path, num_classes, scheduler_config), **kwargs})

  @classmethod
  def from_single_file(cls, path, *, version=None, prediction_type=None, config=None, **kwargs):
    """Loads an original Stable Diffusion 1.x / 2.x checkpoint (.ckpt or .safetensors) with its
    text encoder and SD's DDIM schedule (see `single_file.from_single_file`: the version is read
    from the text encoder's layout unless `version` says "v1" or "v2")."""
    return cls(**{**single_file.from_single_file(path, version=version,
                                                 prediction_type=prediction_type, config=config),
                  **kwargs})

  def save_pretrained(self, folder: str) -> str:
    """Writes this pipeline as a diffusers pipeline folder (`saving.save_pretrained`: LDMPipeline
    with unet/, vqvae/ holding the latent scale factor, and scheduler/ with the training schedule,
    prediction type, timestep grid and default method; StableDiffusionPipeline or
    StableDiffusionInpaintPipeline for CLIP text models; LDMSuperResolutionPipeline for
    super-resolution models on f = 4, the scale factor folded into the VQModel) that diffusers'
    `from_pretrained` and
    `LatentDiffusionPipeline.from_pretrained` load; returns the folder."""
    return saving.save_pretrained(self, folder)

  # ---------------------------------------------------------------------------------------------
  # Properties and plumbing.

  @property
  def conditioning(self) -> str:
    if self.concat_degradation is not None:
      return "concat"
    if self.num_classes is not None:
      return "class"
    return "context" if getattr(self.unet, "has_cross_attention", False) else "none"

  @property
  def _model_kind(self):
    """The denoiser's conditioning kind (`conditioning.KINDS`): `conditioning`, except
    "concat_context" for a concat model that also reads a text context (SD-inpainting)."""
    if self.concat_degradation is not None and self.text_conditioned:
      return "concat_context"
    return self.conditioning

  @property
  def context_dim(self):
    return self.unet.cross_attention_dim if self.conditioning == "context" else None

  @property
  def text_conditioned(self) -> bool:
    return self.prompt_encoder is not None

  @property
  def inpainting_model(self) -> bool:
    """Whether the UNet reads mask channels ([z_t, m, masked-image latents]): `inpaint` then takes
    the trained path."""
    return self.concat_degradation is not None and concat.is_inpainting(self.concat_degradation)

  @property
  def segmentation_model(self) -> bool:
    """Whether the UNet reads segmentation class channels ([z_t, K class fractions]): `synthesize`
    runs it."""
    return self.concat_degradation is not None and concat.is_segmentation(self.concat_degradation)

  @property
  def low_res_shape(self):
    """(h, w, C) of `upscale`'s low-resolution images (None unless super-resolution)."""
    if (self.concat_degradation is None or
        concat.get_degradation(self.concat_degradation).kind != "image"):
      return None
    return concat.low_res_hw(self.concat_degradation, self.image_shape[:2]) + self.image_shape[2:]

  def _refuse_concat(self, what):
    if self.segmentation_model:
      raise ValueError(f"This model is a trained semantic synthesis model (concat.degradation="
                       f"{self.concat_degradation!r}, its UNet reads [z_t, segmentation classes]): "
                       f"{what} does not run it; use pipe.synthesize(rng, segmentation).")
    if self.inpainting_model:
      prompts = ", prompts=..." if self.text_conditioned else ""
      raise ValueError(f"This model is a trained inpainting model (concat.degradation="
                       f"{self.concat_degradation!r}, its UNet reads [z_t, mask, masked-image "
                       f"latents]): {what} does not run it; use pipe.inpaint(rng, images, "
                       f"mask{prompts}).")
    if self.concat_degradation is not None:
      prompts = ", prompts=..." if self.text_conditioned else ""
      raise ValueError(f"This model is concat-conditioned (super-resolution from "
                       f"{self.concat_degradation!r} low-resolution images): {what} does not run "
                       f"it; use pipe.upscale(rng, low_res_images{prompts}).")

  def _tables(self, method, num_steps):
    grid = scheduler_config.grid_for(self.sampler_grid, method)
    return samplers.make_tables(self.schedule, method=method, num_steps=num_steps, **grid)

  def _count(self, name):
    self.trace_counts[name] += 1

  @property
  def unet_compiler_options(self) -> dict | None:
    """The XLA:CPU convolution back end of the programs that run the UNet (denoise, likelihood):
    `ldm_jax.xla_cpu`'s "auto" for the UNet's width (None off CPU or where XLA_FLAGS set it; a
    denoiser module without block_out_channels counts as narrow)."""
    return xla_cpu.compiler_options("auto", "sampling", widest=xla_cpu.widest(self.unet))

  def _program(self, key, build):
    if key not in self._programs:
      self._programs[key] = build()
    return self._programs[key]

  def _placement(self, batch):
    """(data sharding, replicated sharding, unet params, ae params) on the largest device count
    dividing `batch` (1 when shard=False); parameters are copied to those devices once."""
    n = jax.device_count() if self.shard else 1
    d = max(k for k in range(1, n + 1) if batch % k == 0)
    if d not in self._placements:
      mesh = jax.make_mesh((d,), ("batch",), devices=jax.devices()[:d],
                           axis_types=(jax.sharding.AxisType.Auto,))
      rep = NamedSharding(mesh, P())
      self._placements[d] = (NamedSharding(mesh, P("batch")), rep,
                             jax.device_put(self.unet_params, rep), jax.device_put(self.ae_params, rep))
    return self._placements[d]

  def _chunks(self, n):
    """Yields (offset, valid, size, placement) over a batch of n split into max_batch chunks."""
    size = min(n, self.max_batch)
    placement = self._placement(size)
    for offset in range(0, n, size):
      yield offset, min(size, n - offset), size, placement

  def _batch_args(self, tree, offset, size, data_sharding):
    take = lambda a: jax.device_put(_pad(a[offset:offset + size], size), data_sharding)
    return jax.tree.map(take, tree)

  def _map(self, n, call):
    """Runs call(placement, take) per chunk of a batch of n, where take(tree) puts that chunk of a
    host tree (leading axis n) on the devices; returns the outputs as host arrays [n, ...]."""
    outs = []
    for offset, valid, size, placement in self._chunks(n):
      take = functools.partial(self._batch_args, offset=offset, size=size, data_sharding=placement[0])
      outs.append((call(placement, take), valid))
    return jax.tree.map(lambda *o: np.concatenate([np.asarray(a)[:v] for a, (_, v) in zip(o, outs)]),
                        *[o for o, _ in outs])

  def _finish(self, x, output):
    return images_lib.to_uint8(x) if output == "uint8" else np.asarray(x, np.float32)

  # ---------------------------------------------------------------------------------------------
  # First stage.

  def encode(self, images) -> np.ndarray:
    """uint8 [N, H, W, C] in [0, 255] (or float in [-1, 1], see `checks.images`) -> diffusion-space
    latents float32 [N, h, w, c]."""
    x = images_lib.to_float(checks.images(images, self.image_shape))
    return self._encode(x)

  def _encode(self, x):
    fn = self._program(("encode",), lambda: programs.encode_program(
        self.autoencoder, self.scale_factor, self.shift_factor, self._count))
    return self._map(x.shape[0], lambda placement, take: fn(placement[3], take(x)))

  def decode(self, latents, *, output: str = "uint8") -> np.ndarray:
    """Diffusion-space latents [N, h, w, c] (finite) -> images [N, H, W, C]: uint8, or float in [-1, 1]."""
    checks.output(output, ("uint8", "float"))
    z = checks.latents(latents, self.latent_shape)
    return self._finish(self._decode(z), output)

  def _decode(self, z):
    fn = self._program(("decode",), lambda: programs.decode_program(
        self.autoencoder, self.scale_factor, self.shift_factor, self._count))
    return self._map(z.shape[0], lambda placement, take: fn(placement[3], take(z)))

  def reconstruct(self, images, *, output: str = "uint8") -> np.ndarray:
    """decode(encode(images)): the autoencoder's reconstruction (posterior mean), [N, H, W, C].
    images: uint8 in [0, 255] or float in [-1, 1] (see `checks.images`)."""
    checks.output(output, ("uint8", "float"))
    return self._finish(self._decode(self.encode(images)), output)

  def initial_noise(self, rng, num_samples: int) -> np.ndarray:
    """The noise x_T [N, h, w, c] that `sample(rng, N, ...)` starts from (sample b: fold_in(rng, b))."""
    n = checks.positive_int(num_samples, "num_samples")
    return self._noise(checks.rng_key(rng), np.arange(n, dtype=np.int32))

  def low_res_noise(self, rng, num_samples: int) -> np.ndarray:
    """The noise eps [N, h, w, C] (on the latent grid, the low-res image's channels) that
    `upscale(rng, ...)` of a noise-augmented model adds to the low-res images (image b:
    fold_in(fold_in(rng, b), noise_augmentation.LOW_RES_NOISE))."""
    if self.noise_augmentation is None:
      raise ValueError("low_res_noise belongs to noise-augmented super-resolution models "
                       "(noise_augmentation, the SD x4 upscaler); this one adds no noise.")
    n = checks.positive_int(num_samples, "num_samples")
    shape = self.latent_shape[:2] + self.low_res_shape[2:]
    fn = self._program(("low_res_noise",), lambda: noise_aug.noise_program(shape, self._count))
    return self._map(n, lambda _, take: fn(checks.rng_key(rng), take(np.arange(n, dtype=np.int32))))

  def _noise(self, rng, index):
    fn = self._program(("noise",), lambda: programs.noise_program(self.latent_shape, self._count))
    return self._map(index.shape[0], lambda _, take: fn(rng, take(index)))

  # ---------------------------------------------------------------------------------------------
  # The shared generation path.

  def encode_prompt(self, prompts) -> np.ndarray:
    """The context float32 [N, L, D] of prompts (a str or a list of str) for `context=`."""
    if not self.text_conditioned:
      raise ValueError("This pipeline has no text encoder (load a diffusers folder with "
                       "tokenizer/ and text_encoder/, or a Stable Diffusion single file).")
    return self._encode_prompts(prompts_lib.check_prompts(prompts))

  def _encode_prompts(self, prompts):
    fn = self._program(("prompts",), lambda: prompts_lib.encode_program(
        self.prompt_encoder.module, self._count))
    return prompts_lib.encode(self.prompt_encoder, fn, prompts)

  def _conditions(self, n, labels, context, null_context, label_mix=None, prompts=None,
                  negative_prompts=None):
    """(cond, null_cond) host pytrees with leading axis n for the conditioning kind; prompts are
    checked, then encoded (after every other input has been validated by the caller)."""
    self._refuse_concat("this method")
    kind = self.conditioning
    prompts_lib.check_kind(kind, self.text_conditioned, labels=labels, prompts=prompts,
                           negative_prompts=negative_prompts, context=context,
                           null_context=null_context)
    if self.text_conditioned:
      context, null_context = self._text_contexts(n, prompts, negative_prompts, context,
                                                  null_context)
    if kind != "class":
      checks.labels(labels, n, None)
    if kind != "context":
      checks.context(context, n, None)
    if kind == "class":
      y = checks.labels(labels, n, self.num_classes)
      cond = conditioning.class_mixture(y, *(label_mix or ()))
      null = conditioning.class_mixture(np.full((n,), self.num_classes, np.int32))
      return cond, null
    if kind == "context":
      c = checks.context(context, n, self.context_dim)
      null = (np.zeros_like(c) if null_context is None else
              checks.context(null_context, n, self.context_dim, name="null_context"))
      return c, null
    return None, None

  def _text_contexts(self, n, prompts, negative_prompts, context, null_context):
    """(context, null context) of a text model: given contexts checked [n, L, D] before any prompt
    is encoded, then prompts (the negative or the empty prompt for the null) encoded."""
    dim = self.unet.cross_attention_dim
    if context is not None:
      context = checks.context(context, n, dim)
    if null_context is not None:
      null_context = checks.context(null_context, n, dim, name="null_context")
    return prompts_lib.contexts(self._encode_prompts, n, prompts, negative_prompts, context,
                                null_context)

  def _generate(self, rng, n, cond, null, *, method, num_steps, guidance_scale, eta, start,
                z0=None, noise_weight=1.0, known_mask=None, resample=1, output, return_trajectory,
                noise=None):
    """Runs the denoise program over chunks, then decodes. Inputs are validated by the caller."""
    rng = checks.rng_key(rng)
    index = np.arange(n, dtype=np.int32)
    noise = self._noise(rng, index) if noise is None else noise
    z0 = np.zeros((n,) + self.latent_shape, np.float32) if z0 is None else z0
    w = checks.guidance(guidance_scale, n)
    key = ("denoise", method, num_steps, min(n, self.max_batch), self._model_kind,
           known_mask is not None, resample, bool(return_trajectory))
    fn = self._program(key, lambda: programs.denoise_program(
        self.unet, self._tables(method, num_steps), self._count, method=method,
        kind=self._model_kind, prediction_type=self.prediction_type,
        inpaint=known_mask is not None, resample=resample, trajectory=bool(return_trajectory),
        compiler_options=self.unet_compiler_options))
    per_sample = {"index": index, "noise": noise, "cond": cond, "null": null, "w": w, "z0": z0,
                  "mask": known_mask}
    scalars = (jnp.float32(eta), jnp.int32(start), jnp.float32(noise_weight))
    def call(placement, take):
      a = take(per_sample)
      return fn(placement[2], rng, a["index"], a["noise"], a["cond"], a["null"], a["w"], scalars[0],
                scalars[1], a["z0"], scalars[2], a["mask"])

    out = self._map(n, call)
    if not return_trajectory:
      return out if output == "latent" else self._finish(self._decode(out), output)
    z, traj = out[0], {k: np.moveaxis(v, 0, 1) for k, v in out[1].items()}
    tables = self._tables(method, num_steps)
    traj.update(t=np.asarray(tables.xs["t"], np.float32), active=np.arange(num_steps) >= start)
    if output != "latent":
      s = traj["x0_pred"].shape
      decoded = self._decode(traj["x0_pred"].reshape((-1,) + s[2:]))
      traj["x0_images"] = self._finish(decoded, output).reshape(s[:2] + self.image_shape)
      z = self._finish(self._decode(z), output)
    return z, traj

  # ---------------------------------------------------------------------------------------------
  # Likelihood.

  def latent_bits_per_dim(self, rng, images, labels=None, context=None, *,
                          timesteps_per_chunk: int = 8):
    """The variational bound on -log p(z) of the diffusion-space latents z = encode(images) under
    the (conditional, unguided) latent model, in bits per latent dimension (Ho et al. 2020, eq. 5,
    with the Gaussian decoder of `diffusion.vlb_terms`).

    What the number means: a bound on the negative log-*density* of the latents, not an image
    likelihood (that would also need the decoder's likelihood and the encoder's entropy). It
    shifts by -log2(scale_factor) per dimension when the latents are rescaled and can be negative,
    so compare it only between models on the same autoencoder and scale factor. One Monte-Carlo
    draw of x_t per level and image (image b draws from fold_in(rng, b)), so the result does not
    depend on max_batch or the device count. Costs T model calls per image.
    images: uint8 [N, H, W, C] in [0, 255] or float in [-1, 1] (see `checks.images`).

    Returns:
      diffusion.VLBTerms of host arrays: prior_bpd [N], terms_bpd [N, T], total_bpd [N].
    """
    x = images_lib.to_float(checks.images(images, self.image_shape))
    chunk = checks.positive_int(timesteps_per_chunk, "timesteps_per_chunk")
    n = x.shape[0]
    cond, _ = self._conditions(n, labels, context, None)
    z = self._encode(x)
    rng = checks.rng_key(rng)
    fn = self._program(("likelihood", chunk), lambda: programs.likelihood_program(
        self.unet, self.schedule, self._count, kind=self.conditioning,
        prediction_type=self.prediction_type, timesteps_per_chunk=chunk,
        compiler_options=self.unet_compiler_options))
    per_sample = {"index": np.arange(n, dtype=np.int32), "z": z, "cond": cond}

    def call(placement, take):
      a = take(per_sample)
      return fn(placement[2], rng, a["index"], a["z"], a["cond"])

    prior, terms = self._map(n, call)
    return diffusion.VLBTerms(prior_bpd=prior, terms_bpd=terms, total_bpd=prior + terms.sum(axis=1))

  def _check_common(self, method, num_steps, guidance_scale, eta, output):
    """Validated (method, num_steps, guidance_scale, eta), None taking the pipeline's defaults."""
    method = self.defaults["method"] if method is None else method
    num_steps = self.defaults["num_steps"] if num_steps is None else num_steps
    guidance_scale = self.defaults["guidance_scale"] if guidance_scale is None else guidance_scale
    checks.method(method)
    num_steps = checks.positive_int(num_steps, "num_steps")
    eta = checks.eta(eta, method)
    checks.output(output)
    self._tables(method, num_steps)  # grid errors now
    return method, num_steps, guidance_scale, eta

  # ---------------------------------------------------------------------------------------------
  # Public methods.

  def sample(self, rng, num_samples: int, labels=None, context=None, method=None, num_steps=None,
             guidance_scale=None, eta: float = 0.0, *, prompts=None, negative_prompts=None,
             output: str = "uint8", return_trajectory: bool = False, null_context=None):
    """Draws num_samples images [N, H, W, C] (uint8; float in [-1, 1] with output="float"; the
    latents with output="latent").

    labels: int or int [N] in 0..num_classes-1 (class-conditional models). Text models: prompts,
    a str or a list of N str; negative_prompts (same form) are the unconditional branch of the
    guidance, the empty prompt by default. Other cross-attention models: context [N, L, D] or
    [L, D] of finite floats, null_context the unconditional context (zeros by default; a text
    model's default is the empty prompt's context). method, num_steps (>= 1), guidance_scale
    (classifier-free guidance w, a finite scalar or [N]): None takes `self.defaults`. eta: DDIM's
    noise weight, finite >= 0.
    return_trajectory: also return {"t" [S], "x_t", "x0_pred" latents [S, N, h, w, c],
    "x0_images" [S, N, H, W, C], "active" [S]}.
    """
    method, num_steps, guidance_scale, eta = self._check_common(method, num_steps, guidance_scale,
                                                                eta, output)
    n = checks.positive_int(num_samples, "num_samples")
    checks.guidance(guidance_scale, n)
    cond, null = self._conditions(n, labels, context, null_context, prompts=prompts,
                                  negative_prompts=negative_prompts)
    return self._generate(rng, n, cond, null, method=method, num_steps=num_steps,
                          guidance_scale=guidance_scale, eta=eta, start=0, output=output,
                          return_trajectory=return_trajectory)

  def img2img(self, rng, images, strength: float, labels=None, context=None, *, prompts=None,
              negative_prompts=None, method=None, num_steps=None, guidance_scale=None,
              eta: float = 0.0, output: str = "uint8", return_trajectory: bool = False,
              null_context=None):
    """SDEdit (Meng et al. 2022): noise the images' latents to the level of grid step
    S - floor(strength S) and denoise from there. strength 0 returns the reconstruction, strength 1
    starts from pure noise (the images are ignored). images: uint8 [N, H, W, C] in [0, 255] or
    float in [-1, 1] (see `checks.images`); strength in [0, 1]. Other arguments as `sample`."""
    method, num_steps, guidance_scale, eta = self._check_common(method, num_steps, guidance_scale,
                                                                eta, output)
    strength = checks.strength(strength)
    x = checks.images(images, self.image_shape)
    checks.guidance(guidance_scale, x.shape[0])
    cond, null = self._conditions(x.shape[0], labels, context, null_context, prompts=prompts,
                                  negative_prompts=negative_prompts)
    start = samplers.start_step_for_strength(num_steps, strength)
    z0 = self._encode(images_lib.to_float(x))
    return self._generate(rng, x.shape[0], cond, null, method=method, num_steps=num_steps,
                          guidance_scale=guidance_scale, eta=eta, start=start, z0=z0, output=output,
                          return_trajectory=return_trajectory)

  def inpaint(self, rng, images, mask, labels=None, context=None, *, prompts=None,
              negative_prompts=None, method=None, num_steps=None, guidance_scale=None,
              eta: float = 0.0, resample: int = 1, strength: float = 1.0, output: str = "uint8",
              return_trajectory: bool = False, null_context=None):
    """Fills the region where mask = 1 ([N, H, W], [N, H, W, 1] or [H, W], values in [0, 1]; a
    latent block is kept only where its whole f x f pixel block is 0); the rest is kept. images:
    uint8 [N, H, W, C] in [0, 255] or float in [-1, 1] (see `checks.images`).

    After every step the known latents (where no pixel of the f x f block is masked) are replaced by
    q(z_t | z_known) at the next level, so they end exactly at encode(images): the kept region of
    the output equals `reconstruct(images)` up to the decoder's mixing across the mask border.
    resample: RePaint's U (Lugmayr et al. 2022): each step is redone U times with a jump back in
    between, which harmonises the filled region with the kept one (U model calls per step).
    Trained inpainting models (`inpainting_model`: concat.degradation "inpaint_large_masks", or a
    diffusers StableDiffusionInpaintPipeline folder) take the trained path instead
    (SD-inpainting): the mask must be binary; c = [mask on the latent grid (nearest, as torch's
    F.interpolate), latents of images * (mask < 0.5)] (`diffusion.concat.inpainting_conditioning`,
    the training loss's function, with the encoder's posterior mean) and the UNet samples z from
    [z_t, c]; nothing is replaced, so the kept region is the model's, not the reconstruction.
    guidance_scale: w against the unconditional branch of `inpainting_null` ("fully_masked": the
    fully masked image, p_drop's null conditioning, with the null label of a hybrid model;
    "unchanged": the same c with the null label or the negative prompt); default 1, or a text
    model's `defaults` (7.5 for SD-inpainting folders). labels: a hybrid model's classes
    (concat.class_labels). Text inpainting models take prompts / negative_prompts (or context /
    null_context) as `sample` does; others must leave them None. resample and strength belong to
    the training-free path: they must keep their defaults.
    Other arguments as `sample`.
    """
    if self.segmentation_model:
      self._refuse_concat("inpaint")  # names pipe.synthesize
    if self.inpainting_model:
      text = {"context": context, "prompts": prompts, "negative_prompts": negative_prompts,
              "null_context": null_context}
      unused = {"resample": (resample, 1), "strength": (strength, 1.0)}
      if not self.text_conditioned:
        unused = {**{k: (v, None) for k, v in text.items()}, **unused}
      return self._inpaint_trained(
          rng, images, mask, labels, text, method=method, num_steps=num_steps,
          guidance_scale=guidance_scale, eta=eta, output=output, return_trajectory=return_trajectory,
          unused=unused)
    method, num_steps, guidance_scale, eta = self._check_common(method, num_steps, guidance_scale,
                                                                eta, output)
    resample = checks.positive_int(resample, "resample")
    strength = checks.strength(strength)
    x = checks.images(images, self.image_shape)
    n = x.shape[0]
    m = checks.mask(mask, n, *self.image_shape[:2])
    checks.guidance(guidance_scale, n)
    cond, null = self._conditions(n, labels, context, null_context, prompts=prompts,
                                  negative_prompts=negative_prompts)
    known = images_lib.latent_known_mask(m, self.autoencoder.downsampling_factor)
    z0 = self._encode(images_lib.to_float(x))
    return self._generate(rng, n, cond, null, method=method, num_steps=num_steps,
                          guidance_scale=guidance_scale, eta=eta,
                          start=samplers.start_step_for_strength(num_steps, strength), z0=z0,
                          known_mask=known, resample=resample, output=output,
                          return_trajectory=return_trajectory)

  def interpolate(self, rng, a=None, b=None, num: int = 8, *, negative_prompts=None, method=None,
                  num_steps=None, guidance_scale=None, output: str = "uint8", null_context=None):
    """num images between two endpoints: the initial noise is slerped between the noises of
    samples 0 and 1 of `rng`, the conditioning is lerped between a and b (class labels: their
    class embeddings; text models: two prompts, or contexts [L, D]; negative_prompts one str;
    None for unconditional models). The first and last images are `sample(rng, 2, labels=[a, b])`
    (or prompts=[a, b]) for deterministic methods."""
    method, num_steps, guidance_scale, _ = self._check_common(method, num_steps, guidance_scale,
                                                              0.0, output)
    num = checks.positive_int(num, "num", minimum=2)
    checks.guidance(guidance_scale, num)
    weights = np.linspace(0.0, 1.0, num)
    if self.conditioning == "class":
      y = checks.labels([a, b] if a is not None and b is not None else None, 2, self.num_classes,
                        name="endpoints a, b")
      cond, null = self._conditions(num, np.full((num,), y[0]), None, None,
                                    label_mix=(np.full((num,), y[1]), weights))
    elif self.conditioning == "context":
      ends, negative = prompts_lib.interpolation_ends(
          self._encode_prompts if self.text_conditioned else None, a, b, num, negative_prompts,
          null_context)
      ca, cb = (checks.context(c, 1, self.context_dim, name=k)[0] for c, k in zip(ends, "ab"))
      mixed = ((1.0 - weights)[:, None, None] * ca + weights[:, None, None] * cb).astype(np.float32)
      cond, null = self._conditions(num, None, mixed, null_context, negative_prompts=negative)
    else:
      self._refuse_concat("interpolate")
      if a is not None or b is not None:
        raise ValueError("This model is unconditional: the endpoints a and b must be None.")
      cond, null = None, None
    rng = checks.rng_key(rng)
    ends = self._noise(rng, np.arange(2, dtype=np.int32))
    return self._generate(rng, num, cond, null, method=method, num_steps=num_steps,
                          guidance_scale=guidance_scale, eta=0.0, start=0,
                          noise=slerp(ends[0], ends[1], weights), output=output,
                          return_trajectory=False)

  def restore(self, rng, noisy_images, noise_level: float, labels=None, context=None, *,
              prompts=None, negative_prompts=None, method=None, num_steps=None,
              guidance_scale=None, output: str = "uint8", null_context=None):
    """Denoising as restoration: images carrying white Gaussian noise of std `noise_level` (on the
    [0, 1] image scale) are encoded, their latent noise std is estimated as noise_level x the
    encoder's gain on white noise (a JVP, see `programs.encode_with_gain_program`), and sampling
    starts, without adding noise, at the grid step of that noise level. noise_level 0 returns the
    reconstruction. noisy_images: uint8 in [0, 255] or float in [-1, 1] (see `checks.images`: noisy
    floats beyond the 0.25 margin must be clipped first); noise_level finite >= 0. Other arguments
    as `sample`."""
    method, num_steps, guidance_scale, _ = self._check_common(method, num_steps, guidance_scale,
                                                              0.0, output)
    level = checks.noise_level(noise_level)
    x = checks.images(noisy_images, self.image_shape, name="noisy_images")
    n = x.shape[0]
    checks.guidance(guidance_scale, n)
    cond, null = self._conditions(n, labels, context, null_context, prompts=prompts,
                                  negative_prompts=negative_prompts)
    rng = checks.rng_key(rng)
    z, gain = self._encode_with_gain(images_lib.to_float(x), rng)
    tables = self._tables(method, num_steps)
    start = start_for_noise(tables, 2.0 * level * float(np.mean(gain)))
    return self._generate(rng, n, cond, null, method=method, num_steps=num_steps,
                          guidance_scale=guidance_scale, eta=0.0, start=start, z0=z,
                          noise_weight=0.0, output=output, return_trajectory=False)

  def _encode_with_gain(self, x, rng):
    fn = self._program(("encode_with_gain",), lambda: programs.encode_with_gain_program(
        self.autoencoder, self.scale_factor, self.shift_factor, self._count))
    index = np.arange(x.shape[0], dtype=np.int32)
    return self._map(x.shape[0], lambda placement, take: fn(placement[3], take(x), rng, take(index)))
