"""Tests for ldm_jax.convert.text_encoders: parity with transformers' CLIPTextModel and diffusers'
LDMBertModel (torch, random weights, float32) through their save_pretrained folders."""

import json
import os

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from text_encoder_refs import (IDS, assert_close, flax_outputs, tiny_clip, tiny_ldm_bert,
                               torch_outputs)

from ldm_jax.convert import text_encoders as te

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.fixture(scope="module", params=["quick_gelu", "gelu"])
def clip_folder(request, tmp_path_factory):
  model = tiny_clip(request.param)
  path = str(tmp_path_factory.mktemp(f"clip_{request.param}"))
  model.save_pretrained(path)
  return path, model


def test_clip_folder_parity(clip_folder):
  """SD 1.x (quick_gelu) / SD 2.x (gelu) text encoders: every hidden state and the output."""
  path, model = clip_folder
  module, params = te.load_text_encoder(path)
  assert module.activation == model.config.hidden_act and module.layers == 3
  last, hidden = torch_outputs(model)
  context, ours = flax_outputs(module, params, IDS.astype(np.int32))
  assert len(ours) == len(hidden) == 4
  for a, b in zip(ours, hidden):
    assert_close(a, b)
  assert_close(context, last)


def test_clip_skip_is_diffusers_clip_skip(clip_folder):
  """diffusers' encode_prompt(clip_skip=1): final_layer_norm(hidden_states[-2])."""
  path, model = clip_folder
  module, params = te.load_text_encoder(path, clip_skip=1)
  _, hidden = torch_outputs(model)
  final_layer_norm = getattr(model, "text_model", model).final_layer_norm  # transformers < / >= 5.6
  with torch.no_grad():
    ref = final_layer_norm(torch.from_numpy(hidden[-2])).numpy()
  assert_close(flax_outputs(module, params, IDS.astype(np.int32))[0], ref)


def test_clip_keys_with_text_model_prefix(clip_folder, tmp_path):
  """Published SD folders (transformers < 5.6) prefix every key with text_model. and keep the
  position_ids buffer; both load to the same params."""
  path, model = clip_folder
  sd = {f"text_model.{k}": v.numpy() for k, v in model.state_dict().items()}
  sd["text_model.embeddings.position_ids"] = np.arange(77)[None]
  save_file(sd, str(tmp_path / "model.safetensors"))
  with open(os.path.join(path, "config.json")) as f:
    (tmp_path / "config.json").write_text(f.read())
  _, params = te.load_text_encoder(str(tmp_path))
  _, expected = te.load_text_encoder(path)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, expected)


def test_ldm_bert_folder_parity(tmp_path):
  model = tiny_ldm_bert()
  model.save_pretrained(str(tmp_path))
  module, params = te.load_text_encoder(str(tmp_path))
  assert (module.width, module.heads, module.head_dim, module.layers) == (48, 4, 8, 2)
  last, hidden = torch_outputs(model)
  context, ours = flax_outputs(module, params, IDS.astype(np.int32))
  # diffusers' hidden_states: the input of each block, then the final LayerNorm's output
  for a, b in zip(ours[:-1], hidden[:-1]):
    assert_close(a, b)
  assert_close(context, hidden[-1])
  assert_close(context, last)


def test_key_errors_list_the_keys(clip_folder):
  path, model = clip_folder
  module = te.clip_text_from_config(model.config.to_dict())
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  sd["encoder.layers.0.extra.weight"] = np.zeros(3)
  del sd["final_layer_norm.bias"]
  with pytest.raises(ValueError, match=r"missing keys \(1\): final_layer_norm.bias.*unexpected "
                                       r"keys \(1\): encoder.layers.0.extra.weight"):
    te.text_encoder_params(sd, module)


def test_config_and_folder_errors(tmp_path):
  with pytest.raises(ValueError, match=r"hidden_act 'gelu_new' is not supported; supported: "
                                       r"\('quick_gelu', 'gelu'\)"):
    te.clip_text_from_config({"hidden_act": "gelu_new"})
  with pytest.raises(ValueError, match="'T5EncoderModel'.*not supported; supported"):
    te.text_encoder_from_config({"architectures": ["T5EncoderModel"]})
  with pytest.raises(FileNotFoundError, match="no config.json"):
    te.load_text_encoder(str(tmp_path))
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_text_model"}))
  with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
    te.load_text_encoder(str(tmp_path))
