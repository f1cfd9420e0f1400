"""Training runs of the two stages: config -> data, networks, parallel step -> `fit` -> export.

  train(config, workdir)   dispatches on config.stage ("autoencoder" | "latent_diffusion")

Each run resumes from `<workdir>/checkpoints` when it exists, logs to `<workdir>/metrics.jsonl`
(and TensorBoard), and ends by writing `<workdir>/export/` (see `export.py`) and an evaluation
summary `<workdir>/eval.json`.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ldm_jax import data as data_lib
from ldm_jax import xla_cpu
from ldm_jax.data import preprocess
from ldm_jax.diffusion import concat as concat_lib
from ldm_jax.metrics import image as image_metrics
from ldm_jax.text.prompts import split_prompts
from ldm_jax.stages import autoencoder as ae_stage
from ldm_jax.stages import builders
from ldm_jax.stages import export
from ldm_jax.stages import latent_cache
from ldm_jax.stages import latent_diffusion as ldm_stage
from ldm_jax.stages import previews
from ldm_jax.stages import validate
from ldm_jax.train import axis_rules
from ldm_jax.train import checkpoint as ckpt_lib
from ldm_jax.train import loop
from ldm_jax.train import metrics as metrics_lib
from ldm_jax.train import parallel
from ldm_jax.text.token_ids import tokenize as text_tokenize

STAGES = validate.STAGES


def _data(config, split=None, **kw):
  spec = config.data.to_dict()
  spec.pop("eval_split", None)
  if split is not None:
    spec["split"] = split
  return data_lib.create_iterator(spec, global_batch_size=kw.pop("batch", config.train.global_batch_size),
                                  seed=config.seed, num_devices=kw.pop("num_devices", None), **kw)


def _fit(config, workdir, loss_fn, init_params_fn, metadata, extra=None, images_fn=None,
         check_data=None, transform=None, export_files=None, early_loss=None, network=None):
  """The part both stages share: parallel step, state, checkpoints, `fit`, export.
  images_fn: a `previews` function, written to TensorBoard every config.train.image_every steps.
  check_data: called with the data iterator before anything compiles (raises ValueError).
  transform: the data iterator's batch transform (captions -> token ids).
  export_files: {name: bytes} written into the export beside the params (a tokenizer).
  early_loss: (until, loss_fn) run before step `until` (`parallel.data_parallel`).
  network: the stage's autoencoder or UNet module, whose width picks the CPU convolutions."""
  devices = builders.devices(config)
  tx, lr_schedule = builders.optimizer(config)
  mesh = parallel.make_mesh(config.parallel.num_fsdp, devices)
  # Logical-axis boxes (nn.LogicallyPartitioned) are metadata for the sharding rules: their names
  # choose the mesh layout; the state, the checkpoints and the export hold plain arrays.
  rng = jax.random.key(config.seed)
  param_names = axis_rules.logical_names(jax.eval_shape(init_params_fn, rng))
  extra_names = axis_rules.logical_names(extra or {})
  extra = nn.meta.unbox(extra) if extra is not None else None
  dp = parallel.data_parallel(loss_fn, tx, mode=config.parallel.mode, mesh=mesh,
                              ema_decay=config.train.ema_decay, lr_schedule=lr_schedule,
                              param_names=param_names, extra_names=extra_names,
                              rules=config.parallel.get("axis_rules", axis_rules.DEFAULT_RULES),
                              compiler_options=_cpu_options(config, metadata["stage"], network),
                              early_loss=early_loss)
  data = _data(config, num_devices=len(devices), transform=transform)
  if check_data is not None:
    try:
      check_data(data)
    except ValueError:
      data.close()
      raise
  init_plain = lambda r: nn.meta.unbox(init_params_fn(r))
  state = dp.create_state(init_plain, rng, extra=extra)
  checkpoints = ckpt_lib.Checkpoints(os.path.join(workdir, "checkpoints"))
  writer = metrics_lib.MetricWriter(workdir)
  try:
    result = loop.fit(dp, state, data, num_steps=config.train.num_steps, checkpoints=checkpoints,
                      save_every=config.train.save_every, metadata=metadata, config=config,
                      writer=writer, log_every=config.train.log_every,
                      max_consecutive_bad=config.train.max_consecutive_bad, images_fn=images_fn,
                      images_every=config.train.get("image_every", 0))
  finally:
    checkpoints.close()
    writer.close()
    data.close()
  final = dp.to_global(result.state)
  # Host copies on every process (a collective gather where parameters are sharded across
  # processes): the export and the evaluation then run without cross-process programs.
  params, ema_params = jax.tree.map(ckpt_lib.host_value, (final.params, final.ema_params))
  if "text_encoder" in final.extra:  # a frozen text encoder is part of the model a user loads
    frozen = jax.tree.map(ckpt_lib.host_value, final.extra["text_encoder"])
    params, ema_params = ({**p, "text_encoder": frozen} for p in (params, ema_params))
  export.save(workdir, config, params, ema_params, metadata, files=export_files)
  return ema_params, result


def _cpu_options(config, stage, network=None):
  """The step's XLA:CPU convolution back end (`ldm_jax.xla_cpu`; None off CPU or under XLA_FLAGS),
  by the width of the stage's built network (a preset's block_out_channels need not be in the
  config); None or a module without block_out_channels counts as narrow."""
  return xla_cpu.compiler_options(config.parallel.get("cpu_convolutions", "auto"), stage,
                                  widest=xla_cpu.widest(network))


# ---------------------------------------------------------------------------------------------
# Stage 1: autoencoder


def train_autoencoder(config: ml_collections.ConfigDict, workdir: str) -> dict:
  ae, disc = builders.autoencoder(config.model), builders.discriminator(config.disc)
  perceptual_fn = ae_stage.perceptual_from_config(config.loss)
  loss_fn = ae_stage.make_loss_fn(ae, disc, config.loss, perceptual_fn)
  # Before disc_start the discriminator's terms are multiplied by 0: a second program without them.
  early = (ae_stage.make_loss_fn(ae, disc, config.loss, perceptual_fn, adversarial=False)
           if config.loss.disc_start > 0 else None)
  shape = (1, config.data.image_size, config.data.image_size, config.data.channels)
  init_fn = lambda rng: ae_stage.init_params(ae, disc, rng, shape)
  ema_params, result = _fit(config, workdir, loss_fn, init_fn, metadata={"stage": "autoencoder"},
                            images_fn=_autoencoder_preview(config, ae),
                            early_loss=(config.loss.disc_start, early) if early else None,
                            network=ae)
  summary = evaluate_autoencoder(config, ae, ema_params["autoencoder"])
  summary.update(steps=result.step, final_metrics=result.metrics)
  _write_json(workdir, "eval.json", summary)
  return summary


def _autoencoder_preview(config, ae, n: int = 8):
  """Reconstructions of the first n held-out images, when config.train.image_every > 0."""
  if not config.train.get("image_every", 0):
    return None
  it = _data(config, split=config.data.eval_split, batch=n, num_epochs=1, num_devices=1,
             process_index=0, process_count=1)
  images = next(it)["image"]
  it.close()
  return previews.autoencoder_preview(ae, images)


def evaluate_autoencoder(config, ae, ae_params, batch_size: int = 500) -> dict:
  """PSNR / SSIM (images in [0, 1]) of x vs decode(mode(q(z|x))) on the held-out split."""
  it = _data(config, split=config.data.eval_split, batch=batch_size, num_epochs=1,
             drop_remainder=False, num_devices=1, process_index=0, process_count=1)

  @jax.jit
  def reconstruct(params, images):
    x = data_lib.to_float(images)
    # decode(mode of q(z|x)) for KL; decode(quantise(h)) for VQ
    x_hat = ae.apply({"params": params}, ae.apply({"params": params}, x, method="latents"),
                     method="decode")
    x01, y01 = (x + 1) / 2, jnp.clip((x_hat + 1) / 2, 0, 1)
    return (image_metrics.psnr(x01, y01, data_range=1.0), image_metrics.ssim(x01, y01, data_range=1.0))

  psnrs, ssims = [], []
  held_out = it.source.description  # which images were measured (a folder: how it was split)
  for batch in it:
    p, s = reconstruct(ae_params, batch["image"])
    psnrs.append(np.asarray(p))
    ssims.append(np.asarray(s))
  it.close()
  psnrs, ssims = np.concatenate(psnrs), np.concatenate(ssims)
  return {"eval_split": config.data.eval_split, "eval_data": held_out,
          "num_images": int(psnrs.size),
          "psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))}


# ---------------------------------------------------------------------------------------------
# Stage 2: latent diffusion


def _tokenize_captions(tokenizer):
  """Batch transform: the captions (str [b]) -> "tokens" int32 [b, L] (the step sees arrays only)."""
  def transform(batch):
    if "caption" not in batch:
      raise ValueError("diffusion.conditioning='text' needs captions, and this dataset has none "
                       "(a captioned dataset: --config.data.name=mnist_pairs); or train with "
                       "--config.diffusion.conditioning=class or none.")
    batch = dict(batch)
    batch["tokens"] = text_tokenize(tokenizer, list(batch.pop("caption")))
    return batch
  return transform


def _drop_captions(batch):
  """Batch transform of runs that do not read captions: only arrays reach the train step."""
  return {k: v for k, v in batch.items() if k != "caption"}


def train_latent_diffusion(config: ml_collections.ConfigDict, workdir: str) -> dict:
  if not config.first_stage.workdir:
    raise ValueError("config.first_stage.workdir is empty: give the autoencoder run's workdir.")
  d = config.diffusion
  text = d.conditioning == "text"
  tokenizer = text_encoder = text_params = None
  if text:
    tokenizer, text_encoder, text_params = builders.text_conditioner(config.text)
  ae, ae_params, _ = export.load_first_stage(config.first_stage.workdir, config.first_stage.use_ema)
  transform = _tokenize_captions(tokenizer) if text else _drop_captions
  scale = _scale_factor(config, workdir, ae, ae_params)
  concat_section = config.get("concat") if d.conditioning == "concat" else None
  if config.train.get("cache_latents", False):  # E(x) once per distinct image, not every step
    cache = latent_cache.LatentCache(ae, ae_params, keep_images=concat_section is not None)
    transform = (lambda batch, base=transform: cache(base(batch)))
  labels = ldm_stage.uses_labels(d, concat_section)  # "class", or hybrid "concat" + class
  num_class_embeds = d.num_classes + 1 if labels else None
  f = ae.downsampling_factor
  h, w = preprocess.image_hw(config.data.image_size)
  latent_shape = (1, h // f, w // f, ae.latent_channels)
  concat = d.conditioning == "concat"  # LDM-SR: [z_t, c] with c = D(x) on the latent grid
  unet = builders.unet(config.model, in_channels=latent_shape[-1],
                       num_class_embeds=num_class_embeds,
                       context_dim=text_encoder.width if text else None,
                       concat_channels=concat_lib.concat_channels(
                           concat_section.degradation, ae.in_channels, ae.latent_channels)
                       if concat else 0)
  schedule = builders.schedule(d)
  train_encoder = bool(text and config.text.train_encoder)
  null_ids = text_tokenize(tokenizer, [""])[0] if text else None
  loss_fn = ldm_stage.make_loss_fn(unet, ae, schedule, d, scale, text_encoder=text_encoder,
                                   null_ids=null_ids, train_encoder=train_encoder,
                                   concat=concat_section)
  y0 = jnp.zeros((1,), jnp.int32) if num_class_embeds else None
  ids0 = jnp.zeros((1, null_ids.shape[0]), jnp.int32) if text else None
  unet_input = latent_shape[:-1] + (unet.in_channels,)

  def init_fn(rng):
    if not text:
      return unet.init(rng, jnp.zeros(unet_input), jnp.zeros((1,)), y=y0)["params"]
    unet_rng, text_rng = jax.random.split(rng)
    context = jnp.zeros((1, ids0.shape[1], text_encoder.width))
    params = {"unet": unet.init(unet_rng, jnp.zeros(latent_shape), jnp.zeros((1,)),
                                context=context)["params"]}
    if train_encoder:
      params["text_encoder"] = (text_params if text_params is not None
                                else text_encoder.init(text_rng, ids0)["params"])
    return params

  extra = {"frozen": ae_params}
  if text and not train_encoder:  # a frozen encoder: pretrained, or its random init (an ablation)
    extra["text_encoder"] = (text_params if text_params is not None else
                             text_encoder.init(jax.random.key(config.seed + 1), ids0)["params"])
  # The first stage's place relative to this run (the two runs can move together), and where it was.
  metadata = {"stage": "latent_diffusion", "latent_scale_factor": scale,
              "first_stage_workdir": os.path.relpath(config.first_stage.workdir, workdir),
              "first_stage_workdir_absolute": os.path.abspath(config.first_stage.workdir)}
  preview = None
  if config.train.get("image_every", 0) and concat:
    preview = _concat_preview(config, unet, ae, schedule, scale, latent_shape[1:], labels)
  elif config.train.get("image_every", 0):
    sample = config.get("sample") or {}
    preview = previews.ldm_preview(
        unet, ae, schedule, scale_factor=scale, latent_shape=latent_shape[1:],
        prediction_type=d.prediction_type, num_classes=d.num_classes if num_class_embeds else None,
        per_class=sample.get("per_class", 8), method=sample.get("method", "ddim"),
        num_steps=sample.get("num_steps", 25), guidance_scale=sample.get("guidance_scale", 2.0),
        seed=config.seed, text=_preview_text(config, tokenizer, text_encoder, null_ids))
  files = {"tokenizer.json": tokenizer.to_str().encode()} if text else None
  _, result = _fit(config, workdir, loss_fn, init_fn, metadata, extra=extra,
                   images_fn=preview, check_data=lambda it: _check_conditioning(d, it, labels),
                   transform=transform, export_files=files, network=unet)
  summary = {"steps": result.step, "final_metrics": result.metrics, "latent_scale_factor": scale}
  _write_json(workdir, "eval.json", summary)
  return summary


def _concat_preview(config, unet, ae, schedule, scale, latent_shape, hybrid, n: int = 8):
  """previews.concat_preview of the first n held-out images and their labels (a concat-conditioned
  run; a hybrid one reads the labels as classes, a segmentation degradation builds its maps from
  them)."""
  it = _data(config, split=config.data.eval_split, batch=n, num_epochs=1, num_devices=1,
             process_index=0, process_count=1)
  batch = next(it)
  it.close()
  sample = config.get("sample") or {}
  return previews.concat_preview(
      unet, ae, schedule, batch["image"], image_labels=batch.get("label"), hybrid=bool(hybrid),
      degradation=config.concat.degradation, scale_factor=scale, latent_shape=latent_shape,
      prediction_type=config.diffusion.prediction_type, method=sample.get("method", "ddim"),
      num_steps=sample.get("num_steps", 25), seed=config.seed)


def _preview_text(config, tokenizer, text_encoder, null_ids):
  """previews.ldm_preview's text argument: (encoder, prompt ids [P, L], null ids [L]) of
  config.sample.prompts (a ';'-separated str), or None for other runs."""
  if text_encoder is None:
    return None
  prompts = split_prompts((config.get("sample") or {}).get("prompts", ""))
  if not prompts:
    return None
  return text_encoder, text_tokenize(tokenizer, prompts), null_ids


def _check_conditioning(d, it, labels) -> None:
  """A text-conditional run needs captions; a class-conditional run (or a hybrid concat + class
  one: `labels`) labels, all below diffusion.num_classes."""
  if d.conditioning == "text" and not it.has_captions:
    raise ValueError(f"diffusion.conditioning='text' needs captions, and {it.source.description} "
                     "has none (a captioned dataset: --config.data.name=mnist_pairs); or train "
                     "with --config.diffusion.conditioning=class or none.")
  if not labels:
    return
  if it.num_classes is None:
    what, off = (("'class'", "--config.diffusion.conditioning=none") if d.conditioning == "class"
                 else (f"{d.conditioning!r} with concat.class_labels",
                       "--config.concat.class_labels=False"))
    raise ValueError(f"diffusion.conditioning={what} needs labels, and {it.source.description} "
                     f"has none (a folder: one subfolder per class); or train without labels: {off}.")
  if it.num_classes > d.num_classes:
    raise ValueError(f"{it.source.description} has {it.num_classes} classes "
                     f"{list(it.class_names or ())} but diffusion.num_classes={d.num_classes}; "
                     f"set --config.diffusion.num_classes={it.num_classes}.")


def _scale_factor(config, workdir, ae, ae_params) -> float:
  """s: given in the config, else from an existing checkpoint, else 1/std of the first batch."""
  if config.first_stage.scale_factor > 0:
    return float(config.first_stage.scale_factor)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if os.path.isdir(ckpt_dir):
    checkpoints = ckpt_lib.Checkpoints(ckpt_dir)
    try:
      meta = checkpoints.read_meta()
    finally:
      checkpoints.close()
    if meta and "latent_scale_factor" in meta.get("metadata", {}):
      return float(meta["metadata"]["latent_scale_factor"])
  it = _data(config, num_devices=1, process_index=0, process_count=1)
  first = it.batch_at(0)["image"]
  it.close()
  return ldm_stage.estimate_scale_factor(ae, ae_params, first, jax.random.key(config.seed))


def _write_json(workdir, name, obj):
  if jax.process_index() == 0:
    with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=1, default=float)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the stage named by config.stage in `workdir`; returns its evaluation summary.
  The config is validated first (`validate.config`): a bad value raises ValueError before any
  data is prepared, anything compiled, or the workdir created."""
  validate.config(config)
  os.makedirs(workdir, exist_ok=True)
  if config.stage == "autoencoder":
    return train_autoencoder(config, workdir)
  return train_latent_diffusion(config, workdir)
