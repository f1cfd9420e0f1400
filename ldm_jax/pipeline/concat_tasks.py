"""The concat-conditioned task methods of `LatentDiffusionPipeline`: super-resolution (`upscale`),
semantic synthesis (`synthesize`) and the trained path of `inpaint` (LDM sec. 4.3.2-4.5; SD
inpainting; the SD x4 upscaler).

`ConcatTasks` is a mixin of the pipeline class, so these stay methods (`pipe.upscale(...)`) with
their own signatures and documentation; it reads the pipeline's attributes and its shared
machinery (`_check_common`, `_text_contexts`, `_program`, `_map`, `_generate`, `_refuse_concat`)
and keeps nothing of its own. The conditioning c of each task is built by the training loss's
function (`ldm_jax.diffusion.concat`) in a cached program (`programs`, `noise_augmentation`), and
the UNet samples z from [z_t, c].
"""

import jax
import numpy as np

from ldm_jax import images as images_lib
from ldm_jax.diffusion import concat
from ldm_jax.pipeline import checks
from ldm_jax.pipeline import conditioning
from ldm_jax.pipeline import low_res
from ldm_jax.pipeline import noise_augmentation as noise_aug
from ldm_jax.pipeline import programs
from ldm_jax.pipeline import prompts as prompts_lib


class ConcatTasks:
  """`upscale`, `synthesize` and trained inpainting of a `LatentDiffusionPipeline` (module docstring)."""

  def _inpaint_trained(self, rng, images, mask, labels, text, *, method, num_steps,
                       guidance_scale, eta, output, return_trajectory, unused):
    """`inpaint` of a trained inpainting model (see there); inputs checked before compiling."""
    for name, (value, default) in unused.items():  # (value, its required default)
      if (value is not None) if default is None else (value != default):
        shown = (f"<array of shape {value.shape}>" if isinstance(value, (np.ndarray, jax.Array))
                 else f"{value!r:.60}")
        raise ValueError(f"{name}={shown} is an option of the training-free inpainting path "
                         f"(RePaint on an unconditional, class or text model); this trained "
                         f"inpainting model ({self.concat_degradation!r}) needs {name}={default!r}.")
    if guidance_scale is None:  # a run's sample.guidance_scale is for its label-only sampling
      guidance_scale = self.defaults["guidance_scale"] if self.text_conditioned else 1.0
    method, num_steps, guidance_scale, eta = self._check_common(method, num_steps, guidance_scale,
                                                                eta, output)
    if self.text_conditioned:
      prompts_lib.check_kind("context", True, labels=labels, **text)
    x = checks.images(images, self.image_shape)
    n = x.shape[0]
    m = checks.mask(mask, n, *self.image_shape[:2])
    bad = m[(m != 0) & (m != 1)]
    if bad.size:
      raise ValueError(f"mask must be binary (1 = fill, 0 = keep) for a trained inpainting model "
                       f"(it was trained on {self.concat_degradation!r} masks in {{0, 1}}), got "
                       f"{bad.size} other values, e.g. {float(bad[0]):.4g}; threshold it first "
                       "(mask >= 0.5, diffusers' binarisation).")
    checks.guidance(guidance_scale, n)
    if self.num_classes is None and labels is not None:
      raise ValueError(f"This inpainting model has no class labels (trained without "
                       f"concat.class_labels); labels must be None, got {labels!r:.60}.")
    y = checks.labels(labels, n, self.num_classes)
    if self.text_conditioned:  # prompts encoded once everything else is checked
      contexts = self._text_contexts(n, text["prompts"], text["negative_prompts"],
                                     text["context"], text["null_context"])
    cond, fully_masked = self._inpainting_conditioning(images_lib.to_float(x), m[..., None])
    null = fully_masked if self.inpainting_null == "fully_masked" else cond
    if y is not None:  # hybrid: the pairs (c, label mixture), (null c, the null label)
      cond = (cond, conditioning.class_mixture(y))
      null = (null, conditioning.class_mixture(np.full((n,), self.num_classes, np.int32)))
    elif self.text_conditioned:  # SD-inpainting: (c, context), (null c, the negative context)
      cond, null = (cond, contexts[0]), (null, contexts[1])
    return self._generate(rng, n, cond, null, method=method, num_steps=num_steps,
                          guidance_scale=guidance_scale, eta=eta, start=0, output=output,
                          return_trajectory=return_trajectory)

  def _inpainting_conditioning(self, x, m):
    fn = self._program(("inpainting_conditioning",), lambda: programs.inpainting_conditioning_program(
        self.autoencoder, self.scale_factor, self.shift_factor, self._count))
    return self._map(x.shape[0], lambda placement, take: fn(placement[3], *take((x, m))))

  def upscale(self, rng, low_res_images, labels=None, *, prompts=None, negative_prompts=None,
              noise_level=None, method=None, num_steps=None, guidance_scale=None, eta: float = 0.0,
              output: str = "uint8", return_trajectory: bool = False):
    """Super-resolution with a concat-conditioned model (LDM-SR, Rombach et al. 2022 sec. 4.4):
    samples z ~ p(z | c) with the UNet reading [z_t, c], c the low-resolution images on the latent
    grid (`diffusion.concat.to_latent_grid`, as in training), and decodes.

    low_res_images: uint8 [N, h, w, C] in [0, 255] or float in [-1, 1], of `low_res_shape` (the
    model's image size / the degradation's factor, e.g. 8 x 8 for 32 x 32 images and
    "bicubic_x4"); with low_res_input="diffusers" (diffusers' LDMSuperResolutionPipeline
    folders) also uint8 images a little larger, Lanczos-resized to it as diffusers does
    (`low_res`). A loaded LDMSuperResolutionPipeline folder (UNet reading [z_t, low-res image],
    f = 4 VQModel) runs as diffusers does: DDIM from the folder's scheduler, 100 steps, eta 0,
    no guidance, latents decoded without a scaling factor. labels: int or int [N] in
    0..num_classes-1 for a hybrid concat + class model (concat.class_labels), None otherwise.
    guidance_scale: w against the zero map (p_drop's null conditioning; with the null label for a
    hybrid model); None is 1, the conditional model alone (the only meaningful value when
    p_drop = 0).

    Text models (a diffusers StableDiffusionUpscalePipeline folder, the SD x4 upscaler) take
    prompts, a str or a list of N str, and negative_prompts (the empty prompt by default), and
    guide the prompt against the negative prompt with the same c in both branches (None:
    `defaults`, 9 for such folders). Their `noise_augmentation` noises the low-res image to
    level s = noise_level before it is concatenated (an int, or int [N], in
    [0, noise_augmentation.max_level]; None: its default_level, 20), the UNet reading s as its
    class label; that noise is drawn from `rng` (image b: fold_in(fold_in(rng, b), LOW_RES_NOISE), what
    `low_res_noise(rng, N)` returns), independently of the initial noise `initial_noise(rng, N)`.
    Other models must leave prompts, negative_prompts and noise_level None.
    Returns images [N, H, W, C] (uint8; float with output="float"; latents with output="latent").
    Other arguments as `sample`.
    """
    if self.inpainting_model or self.segmentation_model:
      self._refuse_concat("upscale")  # names pipe.inpaint or pipe.synthesize
    if self.concat_degradation is None:
      raise ValueError(f"upscale needs a concat-conditioned (super-resolution) model, trained with "
                       f"diffusion.conditioning='concat'; this one is {self.conditioning!r}-"
                       "conditioned (training-free alternatives: restore, img2img).")
    if guidance_scale is None:  # a run's sample.guidance_scale is for its label-only sampling
      guidance_scale = self.defaults["guidance_scale"] if self.text_conditioned else 1.0
    method, num_steps, guidance_scale, eta = self._check_common(method, num_steps, guidance_scale,
                                                                eta, output)
    want, (h, w) = self.low_res_shape, self.image_shape[:2]
    x = low_res.images(low_res_images, want, self.low_res_input,
                       f"the model's {h}x{w} images downsampled x{h // want[0]} by "
                       f"{self.concat_degradation!r}")
    n = x.shape[0]
    checks.guidance(guidance_scale, n)
    self._check_upscale_text(labels, prompts, negative_prompts, noise_level)
    aug = self.noise_augmentation
    s = None if aug is None else noise_aug.levels(noise_level, n, aug)
    if not self.text_conditioned:
      y = self._concat_labels(labels, n, "super-resolution")
      cond, null = self._concat_pair(self._concat_map(images_lib.to_float(x)), y)
    else:  # prompts encoded once everything else is checked; c the same in both branches
      context, negative = self._text_contexts(n, prompts, negative_prompts, None, None)
      c = (self._concat_map(images_lib.to_float(x)) if aug is None else
           self._noised_concat_map(images_lib.to_float(x), checks.rng_key(rng), s))
      cond, null = (c, context), (c, negative)
      if s is not None:  # the noise level is the UNet's class label in both branches
        cond, null = cond + (s,), null + (s,)
    return self._generate(rng, n, cond, null, method=method, num_steps=num_steps,
                          guidance_scale=guidance_scale, eta=eta, start=0, output=output,
                          return_trajectory=return_trajectory)

  def _check_upscale_text(self, labels, prompts, negative_prompts, noise_level):
    """upscale's prompts, negative_prompts and noise_level fit the model (before compiling)."""
    if self.text_conditioned:
      prompts_lib.check_kind("context", True, labels=labels, prompts=prompts,
                             negative_prompts=negative_prompts)
    elif prompts is not None or negative_prompts is not None:
      raise ValueError("This super-resolution model has no text encoder; prompts and "
                       "negative_prompts must be None.")
    if self.noise_augmentation is None and noise_level is not None:
      raise ValueError(f"This super-resolution model concatenates the low-res image as it is (no "
                       f"noise_augmentation); noise_level must be None, got {noise_level!r:.60}.")

  def synthesize(self, rng, segmentation, labels=None, *, method=None, num_steps=None,
                 guidance_scale=1.0, eta: float = 0.0, output: str = "uint8",
                 return_trajectory: bool = False):
    """Semantic synthesis with a concat-conditioned model (LDM sec. 4.3.2): samples z ~ p(z | c)
    with the UNet reading [z_t, c], c the one-hot segmentation maps averaged to the latent grid
    (the fraction of each class per latent pixel, `diffusion.concat.segmentation_to_latent_grid`,
    as in training), and decodes.

    segmentation: int [N, H, W] at the model's image size, classes in 0..K-1 (K = the
    degradation's classes; "segmentation_pairs": 0 = background, d + 1 = a stroke pixel of digit
    d, K = 11). labels: int or int [N] in 0..num_classes-1 for a hybrid model
    (concat.class_labels), None otherwise. guidance_scale: w against the zero map (p_drop's null
    conditioning; with the null label for a hybrid model); the default 1 is the conditional model
    alone. Returns images [N, H, W, C] (uint8; float with output="float"; latents with
    output="latent"). Other arguments as `sample`.
    """
    if not self.segmentation_model:
      kind = (f"concat-conditioned with {self.concat_degradation!r} (use pipe.upscale or "
              "pipe.inpaint)" if self.concat_degradation is not None else
              f"{self.conditioning!r}-conditioned")
      raise ValueError(f"synthesize needs a semantic synthesis model, trained with diffusion."
                       f"conditioning='concat' and a segmentation degradation (concat.degradation "
                       f"in {[n for n in concat.DEGRADATIONS if concat.is_segmentation(n)]}), whose "
                       f"UNet reads the segmentation classes; this one is {kind}.")
    method, num_steps, guidance_scale, eta = self._check_common(method, num_steps, guidance_scale,
                                                                eta, output)
    degradation = concat.get_degradation(self.concat_degradation)
    s = checks.segmentation(segmentation, *self.image_shape[:2], degradation.classes,
                            degradation.description)
    n = s.shape[0]
    checks.guidance(guidance_scale, n)
    y = self._concat_labels(labels, n, "semantic synthesis")
    fn = self._program(("segmentation_map",), lambda: programs.segmentation_map_program(
        self.latent_shape[:2], degradation.classes, self._count))
    cond, null = self._concat_pair(self._map(n, lambda placement, take: fn(take(s))), y)
    return self._generate(rng, n, cond, null, method=method, num_steps=num_steps,
                          guidance_scale=guidance_scale, eta=eta, start=0, output=output,
                          return_trajectory=return_trajectory)

  def _concat_labels(self, labels, n, what):
    """The checked labels [N] of a concat model (None without concat.class_labels), before any
    compile."""
    if self.num_classes is None and labels is not None:
      raise ValueError(f"This {what} model has no class labels (trained without "
                       f"concat.class_labels); labels must be None, got {labels!r:.60}.")
    return checks.labels(labels, n, self.num_classes)

  def _concat_pair(self, c, y):
    """(cond, null) of a concat map c: c against zeros; hybrid (labels y): the pairs (map, label
    mixture) against (zeros, the null label)."""
    cond, null = c, np.zeros_like(c)
    if y is not None:
      cond = (c, conditioning.class_mixture(y))
      null = (null, conditioning.class_mixture(np.full((len(y),), self.num_classes, np.int32)))
    return cond, null

  def _noised_concat_map(self, x, rng, s):
    fn = self._program(("noised_concat_map",), lambda: noise_aug.noised_map_program(
        self.latent_shape[:2], self.noise_augmentation.schedule, self._count))
    index = np.arange(x.shape[0], dtype=np.int32)
    return self._map(x.shape[0], lambda placement, take: fn(take(x), rng, *take((index, s))))

  def _concat_map(self, x):
    fn = self._program(("concat_map",), lambda: programs.concat_map_program(
        self.latent_shape[:2], self._count))
    return self._map(x.shape[0], lambda placement, take: fn(take(x)))
