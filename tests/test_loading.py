"""Saving and loading: ATS checkpoints, plain ViT checkpoints in old and current weight names, Auto classes."""

import json

import pytest
import torch
from conftest import plain_vit_config, tiny_config, tiny_model, tiny_plain_vit
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    ViTModel,
)

from ats_hf import AtsViTConfig, AtsViTForImageClassification, AtsViTModel


def plain_vit(num_labels=5):
    return tiny_plain_vit(num_labels=num_labels)


def test_round_trip_is_bit_exact(tmp_path, images):
    model = tiny_model(ats_max_tokens=[0.5, 20, None])
    model.save_pretrained(tmp_path)
    loaded = AtsViTForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        a, b = model(images), loaded(images)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.sampled_token_indices, b.sampled_token_indices)


def test_saved_weights_use_current_names_and_load_strictly(tmp_path):
    model = AtsViTForImageClassification(tiny_config())
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert "vit.layers.0.attention.q_proj.weight" in state
    assert not any("encoder.layer" in key for key in state)
    # What Trainer's resume / load_best_model_at_end does with the file:
    fresh = AtsViTForImageClassification(tiny_config())
    fresh.load_state_dict(state, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


@pytest.mark.parametrize("original_format", [True, False])
def test_plain_vit_checkpoint_loads_every_weight(tmp_path, images, original_format):
    plain = plain_vit()
    plain.save_pretrained(tmp_path, save_original_format=original_format)
    saved_names = load_file(tmp_path / "model.safetensors").keys()
    assert any("encoder.layer.0.attention.attention.query" in k for k in saved_names) == original_format
    model, info = AtsViTForImageClassification.from_pretrained(
        tmp_path, ats_layers=[], output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for key, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with torch.no_grad():
        assert (model.eval()(images).logits - plain(images).logits).abs().max() <= 1e-5
    ats = AtsViTForImageClassification.from_pretrained(tmp_path, ats_layers=[1, 3], ats_max_tokens=0.5)
    assert ats.config.ats_layers == [1, 3]
    with torch.no_grad():
        assert ats.eval()(images).num_tokens[:, 1].max() <= 33


def test_plain_vit_model_checkpoint_into_classifier_gets_a_new_head(tmp_path):
    ViTModel(plain_vit_config()).save_pretrained(tmp_path)
    model, info = AtsViTForImageClassification.from_pretrained(tmp_path, num_labels=3, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert model.classifier.out_features == 3
    assert type(AtsViTModel.from_pretrained(tmp_path)) is AtsViTModel


def test_replaced_head_with_ignore_mismatched_sizes(tmp_path):
    plain_vit(num_labels=5).save_pretrained(tmp_path)
    model = AtsViTForImageClassification.from_pretrained(tmp_path, num_labels=2, ignore_mismatched_sizes=True)
    assert model.classifier.out_features == 2


def test_missing_encoder_weights_fail_loudly(tmp_path):
    plain_vit().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(path)
    save_file({k: v for k, v in state.items() if ".layer.2." not in k and ".layers.2." not in k}, path)
    with pytest.raises(ValueError, match=r"randomly initialised"):
        AtsViTForImageClassification.from_pretrained(tmp_path)


def test_unexpected_weights_fail_loudly(tmp_path):
    plain_vit().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(path)
    state["vit.encoder.layer.9.extra.weight"] = torch.zeros(2)
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"ignore 1 checkpoint weight"):
        AtsViTForImageClassification.from_pretrained(tmp_path)


def test_auto_classes_resolve_ats_vit(tmp_path):
    config = tiny_config()
    assert type(AutoConfig.for_model("ats_vit")) is AtsViTConfig
    assert type(AutoModel.from_config(config)) is AtsViTModel
    assert type(AutoModelForImageClassification.from_config(config)) is AtsViTForImageClassification
    AtsViTForImageClassification(config).save_pretrained(tmp_path)
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path)) is AtsViTForImageClassification
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "ats_vit"
    assert saved["auto_map"]["AutoModelForImageClassification"].endswith("AtsViTForImageClassification")


def test_a_mask_token_the_user_asks_for_may_be_new(tmp_path, images):
    AtsViTModel(tiny_config()).save_pretrained(tmp_path)
    model = AtsViTModel.from_pretrained(tmp_path, use_mask_token=True).eval()
    assert model.embeddings.mask_token is not None
    masked = torch.zeros(6, 64, dtype=torch.bool)
    masked[:, :10] = True
    with torch.no_grad():
        assert not torch.equal(model(images, bool_masked_pos=masked).pooler_output, model(images).pooler_output)


def test_output_loading_info_loads_partially_and_reports_the_keys(tmp_path):
    plain_vit().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(path)
    save_file({k: v for k, v in state.items() if ".layer.2." not in k and ".layers.2." not in k}, path)
    model, info = AtsViTForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(model, AtsViTForImageClassification)
    assert info["missing_keys"] and all(".layers.2." in key for key in info["missing_keys"])
