"""The shared evaluation loop: streamed data equals data in memory, objectives without labels, feature extractors,
ToMe on other families, and several processes giving exactly one process's results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import image_folder
from family_cases import CASES, tiny_image_processor
from PIL import Image
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from ats_hf import AtsSettings
from ats_hf.evaluation import Objective, evaluate_methods, open_images, tensor_images
from ats_hf.hub.checkpoint import load_model_and_processor
from ats_hf.methods import AtsMethod, TomeMethod, dense_method
from ats_hf_cli import main

DINOV2_REGISTERS = next(case for case in CASES if case.name == "dinov2-registers")


def flat_folder(root, count=10, size=40):
    """Images directly in `root`: unlabelled data."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def class_folder(root, per_class=5):
    return image_folder(root, ("LABEL_0", "LABEL_3"), per_class, size=36, seed=2)


@pytest.fixture(scope="module")
def dinov2_classifier(tmp_path_factory):
    """An upstream (plain transformers) DINOv2-with-registers classifier folder, as on the Hub."""
    return DINOV2_REGISTERS.save(tmp_path_factory.mktemp("dinov2") / "model")


@pytest.fixture(scope="module")
def dinov2_backbone(tmp_path_factory):
    """An upstream DINOv2-with-registers feature extractor (no head)."""
    directory = tmp_path_factory.mktemp("backbone") / "model"
    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=32,
                                       patch_size=4, mlp_ratio=2, num_register_tokens=2)
    Dinov2WithRegistersModel(config).save_pretrained(directory)
    tiny_image_processor().save_pretrained(directory)
    return directory


def methods_for(model):
    return [dense_method(), AtsMethod("ats", AtsSettings((1, 2, 3), 12)),
            AtsMethod("random", AtsSettings((2, 3), 10, "random")), TomeMethod("tome r=8", 8)]


def test_streamed_images_equal_images_in_memory_whatever_the_workers(dinov2_classifier, tmp_path):
    model, processor = load_model_and_processor(dinov2_classifier)
    source = open_images(class_folder(tmp_path / "data"), processor, model.config.id2label)
    assert len(source) == 10 and source.labels is not None
    methods = methods_for(model)
    streamed, stats = evaluate_methods(model, methods, source, Objective("accuracy"), 3, num_workers=1)
    in_memory, _ = evaluate_methods(model, methods, tensor_images(source.head(10), source.labels),
                                    Objective("accuracy"), 3)
    assert stats.images == 10 and 0 < stats.to_dict()["data_share"] < 1
    for a, b in zip(streamed, in_memory, strict=True):
        assert torch.equal(a.scores, b.scores) and torch.equal(a.num_tokens, b.num_tokens)
        assert torch.equal(a.gmacs, b.gmacs)
    ats = streamed[1]
    assert ats.num_tokens[:, 0].eq(64 + 3).all() and ats.num_tokens[:, -1].lt(64 + 3).any()  # ATS dropped tokens


def test_results_do_not_depend_on_how_batches_are_shared_out(dinov2_classifier, tmp_path):
    model, processor = load_model_and_processor(dinov2_classifier)
    source = open_images(class_folder(tmp_path / "data"), processor, model.config.id2label)
    methods = methods_for(model)
    whole, _ = evaluate_methods(model, methods, source, Objective("agreement"), 2)
    # Two processes run batches 0, 2, 4 and 1, 3; gathered back in order they must give the same rows.
    even, _ = evaluate_methods(model, methods, source, Objective("agreement"), 2, batch_numbers=[0, 2, 4])
    odd, _ = evaluate_methods(model, methods, source, Objective("agreement"), 2, batch_numbers=[1, 3])
    order = [0, 1, 4, 5, 8, 9, 2, 3, 6, 7]  # the images of batches 0, 2, 4 then 1, 3
    for all_rows, a, b in zip(whole, even, odd, strict=True):
        assert torch.equal(torch.cat([a.scores, b.scores]), all_rows.scores[order])
        assert torch.equal(torch.cat([a.num_tokens, b.num_tokens]), all_rows.num_tokens[order])
    assert whole[0].score == 100.0  # dense agrees with itself


def test_unlabelled_folder_agreement_and_tome_on_an_upstream_dinov2_classifier(dinov2_classifier, tmp_path, capsys):
    data = flat_folder(tmp_path / "flat")
    assert main(["benchmark", "--model", str(dinov2_classifier), "--dataset", str(data), "--batch-sizes",
                 "--ats-layers", "1-3", "--ats-max-tokens", "12", "--num-workers", "1",
                 "--output-dir", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert saved["objective"] == "agreement" and saved["processes"] == 1 and saved["num_images"] == 10
    names = [m["method"]["name"] for m in saved["methods"]]
    assert names[:4] == ["dense", "ats", "top-k", "random"] and names[4].startswith("tome r=")
    assert saved["methods"][0]["score"] == 100.0
    assert 0 <= saved["methods"][1]["score"] <= 100 and saved["methods"][4]["gmacs_mean"] < saved["dense_gmacs"]
    assert "agree" in capsys.readouterr().out


def test_fidelity_is_the_default_for_a_feature_extractor(dinov2_backbone, tmp_path):
    data = flat_folder(tmp_path / "flat")
    assert main(["benchmark", "--model", str(dinov2_backbone), "--dataset", str(data), "--batch-sizes",
                 "--ats-layers", "1-3", "--ats-max-tokens", "8", "--output-dir", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert saved["objective"] == "fidelity"
    dense, ats = saved["methods"][0], saved["methods"][1]
    assert dense["score"] == pytest.approx(100.0, abs=1e-4)  # cosine of the dense embedding with itself
    assert ats["score"] < dense["score"] - 1e-3 and ats["gmacs_mean"] < dense["gmacs_mean"]
    assert saved["methods"][4]["method"]["kind"] == "tome"


@pytest.mark.parametrize(("objective", "message"), [
    ("accuracy", "needs labelled data"),
    ("fidelity", "is a classifier"),
])
def test_objectives_the_data_or_model_cannot_give_are_refused(dinov2_classifier, tmp_path, capsys, objective,
                                                              message):
    data = flat_folder(tmp_path / "flat", count=2)
    assert main(["benchmark", "--model", str(dinov2_classifier), "--dataset", str(data), "--batch-sizes",
                 "--objective", objective, "--output-dir", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_patch_fidelity_is_the_mean_patch_cosine_of_the_dense_output(dinov2_backbone):
    model, _ = load_model_and_processor(dinov2_backbone)
    pixel_values = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ats = AtsSettings((1, 2), 20)
    objective = Objective("patch-fidelity")
    with pytest.raises(ValueError, match=r"set model\.config\.ats_dense_output = True"):
        evaluate_methods(model, [dense_method()], tensor_images(pixel_values), objective)
    model.config.ats_dense_output = True
    (dense, sampled), _ = evaluate_methods(model, [dense_method(), AtsMethod("ats", ats)], tensor_images(pixel_values),
                                           objective, batch_size=4)
    with torch.no_grad():
        with model.ats_settings_applied(AtsSettings()):
            reference = model(pixel_values).last_hidden_state[:, 3:]  # CLS and two registers first
        with model.ats_settings_applied(ats):
            output = model(pixel_values)
    assert output.last_hidden_state.shape[1] == 3 + 64 and output.num_tokens[:, -1].max() <= 20
    expected = torch.nn.functional.cosine_similarity(output.last_hidden_state[:, 3:], reference, dim=-1).mean(-1)
    assert sampled.scores == pytest.approx(expected.double(), abs=1e-6) and sampled.score < 100.0
    assert dense.score == pytest.approx(100.0)
    with pytest.raises(ValueError, match="Token Merging merges tokens"):
        evaluate_methods(model, [dense_method(), TomeMethod("tome r=8", 8)], tensor_images(pixel_values), objective)


def test_label_free_tuning_by_patch_fidelity_keeps_the_dense_output(dinov2_backbone, tmp_path, capsys):
    data = flat_folder(tmp_path / "flat", count=12)
    output = tmp_path / "tuned"
    assert main(["tune", "--model", str(dinov2_backbone), "--dataset", str(data), "--objective", "patch-fidelity",
                 "--gmacs-budget", "0.8", "--no-speed", "--tome-r", "4", "--output", str(output)]) == 0
    captured = capsys.readouterr()
    assert "objective: patch-fidelity" in captured.out and "ToMe left out: it merges tokens" in captured.out
    assert "runs with ats_dense_output=True" in captured.err
    config = json.loads((output / "config.json").read_text())
    assert config["ats_layers"] and config["ats_dense_output"] is True


def test_agreement_on_a_feature_extractor_is_refused(dinov2_backbone, tmp_path, capsys):
    data = flat_folder(tmp_path / "flat", count=2)
    assert main(["benchmark", "--model", str(dinov2_backbone), "--dataset", str(data), "--batch-sizes",
                 "--objective", "agreement", "--output-dir", str(tmp_path / "out")]) == 2
    assert "has no classifier head" in capsys.readouterr().err


def test_two_processes_give_exactly_one_process_results(dinov2_classifier, tmp_path):
    data = class_folder(tmp_path / "data", per_class=7)
    command = ["benchmark", "--model", str(dinov2_classifier), "--dataset", str(data), "--batch-sizes",
               "--ats-layers", "1-3", "--ats-max-tokens", "12", "--eval-batch-size", "3", "--num-workers", "0"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "ats_hf", *command, "--output-dir", str(tmp_path / "one")],
                         env=environment, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "ats_hf", *command, "--output-dir", str(tmp_path / "two")],
                         env=environment, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    single = json.loads((tmp_path / "one" / "benchmark.json").read_text())
    double = json.loads((tmp_path / "two" / "benchmark.json").read_text())
    assert single["processes"] == 1 and double["processes"] == 2
    keys = ("method", "score", "gmacs_mean", "gmacs_std", "tokens_per_layer", "tokens_per_layer_std")
    assert [{k: m[k] for k in keys} for m in double["methods"]] == [{k: m[k] for k in keys} for m in single["methods"]]
    assert two.stdout.count("ats-hf benchmark:") == 1  # only the main process prints


def test_label_free_tuning_of_an_upstream_dinov2_registers_classifier_by_agreement(dinov2_classifier, tmp_path,
                                                                                    capsys):
    data = flat_folder(tmp_path / "flat", count=16)
    output = tmp_path / "tuned"
    assert main(["tune", "--model", str(dinov2_classifier), "--dataset", str(data), "--objective", "agreement",
                 "--gmacs-budget", "0.7", "--no-speed", "--tome-r", "4", "--output", str(output)]) == 0
    report = capsys.readouterr().out
    assert "objective: agreement" in report and "ToMe r=4" in report
    config = json.loads((output / "config.json").read_text())
    assert config["ats_layers"] and config["architectures"] == ["AtsDinov2ForImageClassification"]
    saved = json.loads((output / "tune.json").read_text())
    assert saved["objective"] == "agreement" and saved["dense"]["calibration"]["score"] == 100.0
    assert saved["chosen"]["calibration"]["gmacs_fraction"] <= 0.7
    assert "agreement" in (output / "README.md").read_text()


def test_label_free_tuning_of_a_clip_vision_model_with_projection_by_fidelity(tmp_path, capsys):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    upstream = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=32,
        patch_size=4, projection_dim=16))
    upstream.save_pretrained(tmp_path / "clip")
    tiny_image_processor().save_pretrained(tmp_path / "clip")
    data = flat_folder(tmp_path / "flat", count=16)
    output = tmp_path / "tuned"
    assert main(["tune", "--model", str(tmp_path / "clip"), "--dataset", str(data), "--objective", "fidelity",
                 "--gmacs-budget", "0.7", "--no-speed", "--tome-r", "4", "--output", str(output)]) == 0
    assert "objective: fidelity" in capsys.readouterr().out
    config = json.loads((output / "config.json").read_text())
    assert config["ats_layers"]
    saved = json.loads((output / "tune.json").read_text())
    assert saved["dense"]["calibration"]["score"] == pytest.approx(100.0, abs=1e-4)
    assert saved["chosen"]["calibration"]["score"] < 100.0 - 1e-6  # ATS changes the embedding a little


def test_single_process_commands_refuse_a_multi_process_launch(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["export", str(tmp_path / "out"), "--ats-capacity", "0.5"]) == 2
    assert "export runs on one process, but a launcher started 2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _run_one_and_two_processes(command: list[str], output_option: str, tmp_path) -> tuple[Path, Path, str]:
    """Run `ats-hf COMMAND` on one process and under torchrun on two; returns both output folders and the two
    processes' standard output."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "ats_hf", *command, output_option, str(tmp_path / "one")],
                         env=environment, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "ats_hf", *command, output_option, str(tmp_path / "two")],
                         env=environment, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    return tmp_path / "one", tmp_path / "two", two.stdout


def test_tune_and_calibrate_on_two_processes_choose_exactly_what_one_process_chooses(dinov2_classifier, tmp_path):
    data = class_folder(tmp_path / "data", per_class=7)
    tune = ["tune", "--model", str(dinov2_classifier), "--dataset", str(data), "--gmacs-budget", "0.7", "--no-speed",
            "--tome-r", "4", "--first-layers", "1", "2", "--batch-size", "3", "--num-workers", "0"]
    one, two, printed = _run_one_and_two_processes(tune, "--output", tmp_path / "tune")
    single, double = (json.loads((folder / "tune.json").read_text()) for folder in (one, two))
    assert single.pop("processes") == 1 and double.pop("processes") == 2
    # screening, the rest of the calibration split, the held-out split: every image is read once
    assert single.pop("search")["images"] == double.pop("search")["images"] == len(list(data.rglob("*.png")))
    assert single == double and single["chosen"] is not None
    assert (one / "config.json").read_text() == (two / "config.json").read_text()
    assert printed.count("chosen (*):") == 1  # only the main process prints

    calibrate = ["calibrate", "--model", str(dinov2_classifier), "--dataset", str(data), "--ats-layers", "1-3",
                 "--ats-max-tokens", "12", "--quantile", "0.6", "--batch-size", "3", "--num-workers", "0"]
    one, two, _ = _run_one_and_two_processes(calibrate, "--output", tmp_path / "calibrate")
    single, double = (json.loads((folder / "calibration.json").read_text()) for folder in (one, two))
    assert single.pop("processes") == 1 and double.pop("processes") == 2
    assert single == double and single["objective"] == "accuracy" and single["num_images"] > 0


def test_a_flat_folder_is_named_unlabelled_data(dinov2_classifier, tmp_path):
    model, processor = load_model_and_processor(dinov2_classifier)
    source = open_images(flat_folder(tmp_path / "flat", count=3), processor, model.config.id2label)
    assert source.labels is None and "no class sub-folders" in source.notes[0]
