"""Choosing the static mode's capacities: `calibrate_capacity` and `ats-hf calibrate`."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_model

from ats_hf import AtsSettings, AtsViTForImageClassification
from ats_hf.calibration import calibrate_capacity
from ats_hf.data import DEFAULT_MODEL_DIR
from ats_hf.evaluation import Objective, tensor_images
from ats_hf.flops import gmacs_per_image, static_gmacs
from ats_hf_cli import main


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def data():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(30, 3, 32, 32, generator=generator), torch.randint(0, 5, (30,), generator=generator)


def test_capacities_are_the_quantile_of_the_adaptive_kept_counts(model, data):
    pixel_values, labels = data
    model.set_ats(max_tokens=[40, 30, 30], capacity=50)  # calibrates these settings; the static mode comes back
    before = model.ats_settings
    result = calibrate_capacity(model, pixel_values, labels, quantile=0.8, batch_size=7)
    assert model.ats_settings == before

    with torch.no_grad():
        model.set_ats(capacity=None)
        adaptive = model(pixel_values)
        model.set_ats(**before)
    counts = adaptive.num_tokens[:, [1, 2, 3]].numpy()
    expected = [math.ceil(round(float(np.quantile(counts[:, i], 0.8)), 6)) for i in range(3)]
    assert result.capacity == dict(zip([1, 2, 3], expected, strict=True))
    assert len(set(expected)) > 1 and min(expected) < 30, "the test needs capacities that truncate"
    assert result.settings == AtsSettings((1, 2, 3), (40, 30, 30), "inverse_transform", tuple(expected))
    over = counts > np.array(expected)
    assert result.predicted_truncated == int(over.any(axis=1).sum()) > 0
    assert [layer.over_capacity for layer in result.layers] == over.sum(axis=0).tolist()
    assert [layer.kept_max for layer in result.layers] == counts.max(axis=0).tolist()
    assert result.truncated >= result.predicted_truncated

    with torch.no_grad():
        model.set_ats(**result.settings)
        static = model(pixel_values)
        assert result.executed_gmacs == pytest.approx(static_gmacs(model.config))
        model.set_ats(**before)
    assert result.static_gmacs == pytest.approx(gmacs_per_image(model.config, static.num_tokens).mean().item())
    assert result.adaptive_gmacs == pytest.approx(gmacs_per_image(model.config, adaptive.num_tokens).mean().item())
    assert result.objective == "accuracy"
    assert result.static_score == pytest.approx(100 * (static.logits.argmax(-1) == labels).float().mean().item())
    assert result.dense_score is not None and result.dense_gmacs > result.executed_gmacs
    json.dumps(result.to_dict())


def test_at_quantile_one_the_static_mode_keeps_what_the_adaptive_mode_keeps(model, data):
    pixel_values, labels = data
    result = calibrate_capacity(model, pixel_values, labels, quantile=1.0)
    assert result.predicted_truncated == result.truncated == 0
    assert [layer.capacity for layer in result.layers] == [layer.kept_max for layer in result.layers]
    assert result.static_score == result.adaptive_score
    assert result.static_gmacs == pytest.approx(result.adaptive_gmacs)
    assert result.executed_gmacs >= result.static_gmacs
    assert model.ats_settings["capacity"] is None


def test_without_labels_the_modes_are_scored_against_dense(model, data):
    """Unlabelled images: a classifier's modes are scored by agreement with dense (dense agrees with itself), and a
    streamed source gives what the same images in memory give, at any batch size."""
    pixel_values, labels = data
    model.set_ats(max_tokens=[40, 30, 30])
    result = calibrate_capacity(model, pixel_values, quantile=0.7, batch_size=8)
    assert result.objective == "agreement" and result.dense_score == 100.0
    with torch.no_grad():
        dense = model.ats_settings_applied(AtsSettings())
        with dense:
            reference = model(pixel_values).logits.argmax(-1)
        model.set_ats(**result.settings)
        static = model(pixel_values).logits.argmax(-1)
        model.set_ats(capacity=None)
    assert result.static_score == pytest.approx(100 * (static == reference).double().mean().item())
    streamed = calibrate_capacity(model, tensor_images(pixel_values, labels), quantile=0.7, batch_size=11)
    in_memory = calibrate_capacity(model, pixel_values, labels, quantile=0.7, batch_size=8)
    assert streamed.to_dict() == in_memory.to_dict()
    with pytest.raises(ValueError, match="carries its own labels"):
        calibrate_capacity(model, tensor_images(pixel_values, labels), labels)


def test_a_feature_extractor_is_calibrated_by_fidelity():
    from ats_hf import AtsDinov2Config, AtsDinov2Model

    config = AtsDinov2Config(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                             mlp_ratio=2, num_register_tokens=2, ats_layers=[1, 2], ats_max_tokens=0.5)
    model = AtsDinov2Model(config).eval()
    pixel_values = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = calibrate_capacity(model, pixel_values, quantile=0.5)
    assert result.objective == "fidelity" and result.dense_score == pytest.approx(100.0)
    with torch.no_grad():
        with model.ats_settings_applied(AtsSettings()):
            dense = model(pixel_values).pooler_output
        with model.ats_settings_applied(result.settings):
            static = model(pixel_values).pooler_output
    cosine = torch.nn.functional.cosine_similarity(static, dense, dim=-1).double().mean().item()
    assert result.static_score == pytest.approx(100 * cosine) and result.static_score < 100
    with pytest.raises(ValueError, match="has no classifier head"):
        calibrate_capacity(model, pixel_values, quantile=0.5, objective=Objective("agreement"))


def test_calibration_refuses_what_it_cannot_calibrate(model, data):
    with pytest.raises(ValueError, match=r"quantile=0 must be in \(0, 1\]"):
        calibrate_capacity(model, data[0], quantile=0)
    model.set_ats(layers=[])
    with pytest.raises(ValueError, match="no ATS layers"):
        calibrate_capacity(model, data[0])


def test_command_saves_a_checkpoint_with_the_capacities(tmp_path, capsys):
    output = tmp_path / "calibrated"
    assert main(["calibrate", "--num-images", "40", "--quantile", "0.9", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((output / "calibration.json").read_text())
    capacity = saved["settings"]["capacity"]
    assert f"--ats-capacity {','.join(map(str, capacity))}" in printed and "truncated images" in printed
    assert saved["num_images"] == 40 and saved["quantile"] == 0.9 and saved["static_score"] is not None
    assert saved["objective"] == "accuracy" and saved["processes"] == 1
    reloaded = AtsViTForImageClassification.from_pretrained(output)
    shipped_layers = AtsViTForImageClassification.from_pretrained(DEFAULT_MODEL_DIR).config.ats_layers
    assert reloaded.config.ats_capacity == capacity and reloaded.config.ats_layers == shipped_layers
    assert len(capacity) == len(shipped_layers), "one capacity per ATS layer of the embedded model"
    assert (output / "preprocessor_config.json").is_file() and (output / "modeling_ats_vit.py").is_file()
    assert main(["calibrate", "--num-images", "4", "--output", str(output)]) == 2
    assert "is not empty; pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--quantile", "0"], "argument --quantile: '0' is not a quantile in (0, 1]"),
        (["--quantile", "1.5"], "'1.5' is not a quantile in (0, 1]"),
        (["--quantile", "high"], "'high' is not a number"),
        (["--ats-layers", "none"], "--ats-layers none leaves nothing to calibrate; give at least one ATS layer"),
        (["--ats-capacity", "12"], "unrecognized arguments: --ats-capacity"),
        (["--split", "test"], "--split, --image-column and --label-column apply to --dataset only"),
    ],
)
def test_command_mistakes_are_one_line(argv, message, capsys):
    assert main(["calibrate", *argv]) == 2
    error = capsys.readouterr().err
    # The last line: transformers' progress bar may come first here (the command turns it off only when it is the
    # first to import transformers, as in a real run).
    assert "Traceback" not in error and error.endswith("\n")
    line = error.strip().splitlines()[-1]
    assert line.startswith("ats-hf calibrate: error: ") and message in line, error
