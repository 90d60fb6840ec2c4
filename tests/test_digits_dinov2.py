"""The shipped DINOv2 with registers trained on the synthetic digits (src/ats_hf/data/digits_dinov2_registers):
`python scripts/train_default_model.py --family dinov2-registers --threads 1`, ATS settings from `ats-hf tune`."""

import json

import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

import ats_hf
from ats_hf.benchmark import evaluate_method
from ats_hf.data import DIGITS_DINOV2_REGISTERS_DIR
from ats_hf.data import synthetic_digits as digits
from ats_hf.flops import dense_gmacs, gmacs_per_image
from ats_hf.methods import AtsMethod, dense_method
from ats_hf_cli import main

MODEL_DIR = DIGITS_DINOV2_REGISTERS_DIR


@pytest.fixture(scope="module")
def model():
    return AutoModelForImageClassification.from_pretrained(MODEL_DIR).eval()


@pytest.fixture(scope="module")
def test_slice():
    """The first 200 images of the embedded test split, through the shipped image processor."""
    images, labels = digits.test_split(200)
    processor = AutoImageProcessor.from_pretrained(MODEL_DIR)
    return processor(images=list(images.numpy()), return_tensors="pt")["pixel_values"], labels


def test_shipped_folder_is_small_and_loads_as_the_ats_dinov2_with_registers(model):
    assert (MODEL_DIR / "model.safetensors").stat().st_size < 3 * 2**20
    assert type(model) is ats_hf.AtsDinov2ForImageClassification
    config = model.config
    assert config.model_type == "ats_dinov2" and config.num_register_tokens > 0
    assert config.ats_num_special_tokens == 1 + config.num_register_tokens
    assert (config.image_size, config.patch_size, config.num_labels) == (64, 8, 10)
    assert config.ats_layers, "the shipped config carries the tuned ATS setting"


def test_dense_accuracy_and_the_shipped_ats_setting(model, test_slice):
    pixel_values, labels = test_slice
    dense = evaluate_method(model, dense_method(), pixel_values, labels, batch_size=200)
    # The config's own setting, sampler included (the benchmark's "ats" row is inverse transform on its layers and K).
    ats = evaluate_method(model, AtsMethod("shipped", model.config.ats_settings), pixel_values, labels, batch_size=200)
    assert dense.score >= 80.0  # top-1 %; chance is 10%
    assert ats.score >= 80.0

    config = model.config
    with torch.inference_mode():
        num_tokens = model(pixel_values).num_tokens  # (200, layers): the config's own ATS setting
    assert gmacs_per_image(config, num_tokens).mean().item() < dense_gmacs(config)
    assert ats.gmacs_mean == pytest.approx(gmacs_per_image(config, num_tokens).mean().item())
    # Every ATS layer keeps CLS, the registers and at least one patch, never more than its K allows, never more
    # than the layer before it.
    special = config.ats_num_special_tokens
    num_input_tokens = special + (config.image_size // config.patch_size) ** 2
    max_tokens = config.resolve_ats_max_tokens(num_input_tokens)  # {layer: K}, K = all resolved to a count
    saved = json.loads((MODEL_DIR / "config.json").read_text())
    assert saved["ats_layers"] == list(config.ats_layers)
    assert (num_tokens[:, : min(config.ats_layers)] == num_input_tokens).all()
    for layer in config.ats_layers:
        kept = num_tokens[:, layer]
        assert (kept > special).all() and (kept <= max_tokens[layer]).all()
        if config.ats_sampler == "top_k":
            assert (kept == max_tokens[layer]).all(), "top-K keeps exactly K tokens"
        assert (kept <= num_tokens[:, layer - 1]).all()
    assert (num_tokens[:, max(config.ats_layers)] < num_input_tokens).any(), "ATS drops tokens on these images"


def test_benchmark_command_has_a_tome_row(tmp_path):
    output = tmp_path / "benchmark"
    code = main(["benchmark", "--model", str(MODEL_DIR), "--batch-sizes", "--num-images", "200", "--threads", "1",
                 "--output-dir", str(output)])
    assert code == 0
    saved = json.loads((output / "benchmark.json").read_text())
    kinds = [row["method"]["kind"] for row in saved["methods"]]
    assert "tome" in kinds and saved["num_images"] == 200
    dense = saved["methods"][0]
    assert dense["score"] >= 80.0
    assert all(row["gmacs_mean"] < dense["gmacs_mean"] for row in saved["methods"][1:])
