"""The benchmark engine, its report, the throughput timer and the `ats-hf benchmark` command, on tiny models."""

import json
import time

import numpy as np
import pytest
import torch
from conftest import peaky_weights_, tiny_config
from PIL import Image
from transformers import ViTImageProcessorPil

from ats_hf import AtsViTForImageClassification
from ats_hf.benchmark import Method, matched_baselines, run_benchmark, run_speed_benchmark, sweep_methods, use_method
from ats_hf.benchmark_report import format_table, write_report
from ats_hf.cli import main
from ats_hf.flops import gmacs_per_image
from ats_hf.timing import interleaved_throughput


@pytest.fixture
def model():
    return peaky_weights_(AtsViTForImageClassification(tiny_config()).eval())


@pytest.fixture
def data():
    generator = torch.Generator().manual_seed(7)
    return torch.randn(24, 3, 32, 32, generator=generator), torch.randint(0, 5, (24,), generator=generator)


def test_methods_accuracy_gmacs_and_matched_token_counts(model, data):
    pixel_values, labels = data
    result = run_benchmark(model, pixel_values, labels, batch_sizes=(1, 8), timing_images=4, repeats=1, eval_batch_size=5)
    assert [r.method.name for r in result.methods] == ["dense", "ats", "top-k", "random"]
    dense, ats, top_k, random = result.methods
    assert result.method("top-k") is top_k

    with torch.no_grad():
        output = model(pixel_values)  # the config's own settings are ATS
    assert ats.accuracy == pytest.approx(100 * (output.logits.argmax(-1) == labels).float().mean().item())
    assert ats.gmacs_mean == pytest.approx(gmacs_per_image(model.config, output.num_tokens).mean().item())
    assert ats.tokens_per_layer == pytest.approx(output.num_tokens.double().mean(0).tolist())
    assert dense.tokens_per_layer == [65.0] * 4 and dense.gmacs_std == pytest.approx(0.0, abs=1e-12)
    assert ats.gmacs_mean < dense.gmacs_mean

    expected_k = tuple(int(np.floor(ats.tokens_per_layer[i] + 0.5)) for i in (1, 2, 3))
    for baseline in (top_k, random):
        assert baseline.method.ats_max_tokens == expected_k
        assert baseline.tokens_per_layer[1:] == pytest.approx([float(k) for k in expected_k])
        assert baseline.gmacs_mean == pytest.approx(ats.gmacs_mean, rel=0.05)

    for r in result.methods:
        assert set(r.timings) == {1, 8}
        assert r.timings[1].num_images == 4 and r.timings[8].num_images == 8
        assert r.timings[8].images_per_second > 0
    assert dense.timings[1].speedup == 1.0 and dense.timings[1].gmacs_ratio == 1.0
    assert ats.timings[8].gmacs_ratio == pytest.approx(dense.gmacs[:8].mean().item() / ats.gmacs[:8].mean().item())
    assert model.config.ats_layers == [1, 2, 3] and model.config.ats_sampler == "inverse_transform"


def test_prediction_does_not_depend_on_eval_batch_size(model, data):
    pixel_values, labels = data
    results = [
        run_benchmark(model, pixel_values, labels, batch_sizes=(), eval_batch_size=size).methods[1]
        for size in (1, 24)
    ]
    assert results[0].accuracy == results[1].accuracy
    torch.testing.assert_close(results[0].gmacs, results[1].gmacs)


def test_sweep_adds_matched_points(model, data):
    pixel_values, labels = data
    ats = Method.from_config(model.config)
    result = run_benchmark(model, pixel_values, labels, sweep=sweep_methods(ats, 4, (0.5, 12), (2,)), batch_sizes=())
    names = [r.method.name for r in result.sweep]
    assert names == ["ats K=0.5", "top-k (as ats K=0.5)", "random (as ats K=0.5)",
                     "ats K=12", "top-k (as ats K=12)", "random (as ats K=12)",
                     "ats layers 2-3", "top-k (as ats layers 2-3)", "random (as ats layers 2-3)"]
    assert max(result.sweep[3].tokens_per_layer) == 65 and max(result.sweep[3].tokens_per_layer[1:]) <= 12
    assert result.sweep[6].tokens_per_layer[:2] == [65.0, 65.0] and result.sweep[6].tokens_per_layer[2] < 65
    assert result.sweep[7].method.ats_layers == (2, 3)
    assert all(not r.timings for r in result.methods)


def test_report_table_json_and_plots(model, data, tmp_path):
    pixel_values, labels = data
    sweep = sweep_methods(Method.from_config(model.config), 4, (0.5,))
    result = run_benchmark(model, pixel_values, labels, sweep=sweep, batch_sizes=(1, 8), timing_images=2, repeats=1)
    table = format_table(result)
    for text in ("dense", "ats", "top-k", "random", "img/s bs1", "speed-up bs8 (GMACs ratio)", "mean tokens per layer"):
        assert text in table
    written = write_report(result, tmp_path)
    assert sorted(p.name for p in written) == sorted(
        ["benchmark.json", "accuracy_vs_gmacs.png", "tokens_per_layer.png", "gmacs_per_image.png", "throughput.png"]
    )
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert [m["method"]["name"] for m in saved["methods"]] == ["dense", "ats", "top-k", "random"]
    assert saved["methods"][1]["timings"][0]["efficiency"] == pytest.approx(
        result.methods[1].timings[1].speedup / result.methods[1].timings[1].gmacs_ratio
    )
    for path in written[1:]:
        with Image.open(path) as picture:
            assert picture.width > 300 and picture.height > 200


def test_use_method_restores_the_config_even_after_an_error(model):
    with pytest.raises(ValueError, match="ats_sampler"):
        with use_method(model, Method("bad", (1,), None, "nearest")):
            pass
    assert model.config.ats_layers == [1, 2, 3] and model.config.ats_sampler == "inverse_transform"
    with use_method(model, Method("dense")):
        assert model.config.ats_layers == []
    assert model.config.ats_layers == [1, 2, 3]


def test_matched_baselines_round_half_up_and_keep_at_least_two(model, data):
    ats = run_benchmark(model, *data, batch_sizes=()).methods[1]
    ats.tokens_per_layer = [65.0, 30.5, 1.2, 10.49]
    top_k, random = matched_baselines(ats)
    assert top_k.ats_max_tokens == random.ats_max_tokens == (31, 2, 10)
    assert (top_k.ats_sampler, random.ats_sampler) == ("top_k", "random")


def test_speed_mode_on_a_small_geometry():
    geometry = dict(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                    intermediate_size=64)
    result = run_speed_benchmark(geometry, ats_max_tokens=0.5, batch_sizes=(1, 4), timing_images=2, repeats=1)
    names = [r.method.name for r in result.methods]
    assert names == ["dense", "ats K=0.5", "ats K=all", "no-drop"]
    dense, half, _, no_drop = result.methods
    assert half.tokens_per_layer[1] <= 33 and half.timings[4].gmacs_ratio > 1.3
    assert no_drop.tokens_per_layer == dense.tokens_per_layer
    assert all(r.accuracy is None for r in result.methods)
    table = format_table(result)
    assert "no-drop" in table and "top-k / random keep" not in table


def test_interleaved_throughput_takes_the_median_and_rotates():
    order = []

    def sleeper(name, seconds):
        def run():
            order.append(name)
            time.sleep(seconds)
            return 10

        return run

    measured = interleaved_throughput({"fast": sleeper("fast", 0.01), "slow": sleeper("slow", 0.04)},
                                      torch.device("cpu"), repeats=3, warmup=1)
    assert order == ["fast", "slow", "slow", "fast", "fast", "slow", "slow", "fast"]
    assert len(measured["fast"].samples) == 3
    assert 150 < measured["fast"].images_per_second < 1000 and 100 < measured["slow"].images_per_second < 250
    with pytest.raises(ValueError, match="repeats=0"):
        interleaved_throughput({}, torch.device("cpu"), repeats=0)


def test_command_on_a_saved_model_and_an_image_folder(tmp_path, capsys):
    config = tiny_config(id2label={i: f"class{i}" for i in range(5)}, label2id={f"class{i}": i for i in range(5)})
    model = peaky_weights_(AtsViTForImageClassification(config))
    model.save_pretrained(tmp_path / "model")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    for label in (3, 1):  # folder names are class names: sorted folder order differs from the model's ids
        (tmp_path / "images" / f"class{label}").mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / f"class{label}" / f"{i}.png")

    exit_code = main(["benchmark", "--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "images"),
                      "--batch-sizes", "1", "--timing-images", "2", "--repeats", "1", "--ats-max-tokens", "0.5",
                      "--output-dir", str(tmp_path / "out")])
    assert exit_code == 0
    printed = capsys.readouterr().out
    assert "top-k" in printed and "img/s bs1" in printed
    saved = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert saved["num_images"] == 6 and saved["methods"][1]["method"]["ats_max_tokens"] == 0.5
    assert saved["methods"][0]["accuracy"] is not None
    assert saved["sweep"] == []
