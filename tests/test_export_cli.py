"""`ats-hf export [MODEL] OUT`: a verified ONNX folder of the static mode, or one line saying why not."""

import json

import pytest
from conftest import image_folder

from ats_hf.data import DEFAULT_MODEL_DIR
from ats_hf_cli import build_parser, main

# One capacity more than the embedded model has ATS layers.
SHIPPED_LAYERS = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())["ats_layers"]
TOO_MANY_CAPACITIES = [12 + i for i in range(len(SHIPPED_LAYERS) + 1)]


def last_error_line(capsys) -> str:
    error = capsys.readouterr().err
    assert "Traceback" not in error
    return error.strip().splitlines()[-1]


@pytest.mark.slow  # exports and checks the graph in onnxruntime: about 12 s
def test_export_writes_a_verified_folder(tmp_path, capsys):
    output = tmp_path / "onnx"
    assert main(["export", str(output), "--ats-capacity", "12", "--num-images", "4"]) == 0
    printed = capsys.readouterr().out
    assert "verified against PyTorch on synthetic digits test split" in printed and "4 images" in printed
    assert {"model.onnx", "config.json", "preprocessor_config.json", "onnx_verification.json"} <= {
        path.name for path in output.iterdir()}
    report = json.loads((output / "onnx_verification.json").read_text())
    assert report["passed"] and report["images"] == 4  # each at batch sizes 1 and 3
    assert json.loads((output / "config.json").read_text())["ats_capacity"] == 12


@pytest.mark.slow  # exports and checks the graph in onnxruntime
def test_export_checks_on_images_of_any_classes_without_label_notes(tmp_path, capsys):
    """The images only check the graph: classes that are not the model's are taken, and nothing is said about
    labels or scoring."""
    animals = image_folder(tmp_path / "animals", ["cat", "dog"], per_class=2, size=32)
    output = tmp_path / "onnx"
    assert main(["export", str(output), "--ats-capacity", "12", "--dataset", str(animals), "--num-images", "3"]) == 0
    captured = capsys.readouterr()
    assert "3 images" in captured.out and "note:" not in captured.err
    assert json.loads((output / "onnx_verification.json").read_text())["passed"]


def test_the_adaptive_mode_is_refused_in_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "onnx")]) == 2
    line = last_error_line(capsys)
    assert line.startswith("ats-hf export: error: cannot export the embedded default model")
    assert "adaptive mode" in line and "--ats-capacity" in line and "ats-hf calibrate" in line
    assert not (tmp_path / "onnx").exists()


def test_a_failed_verification_exits_1_and_keeps_the_report(tmp_path, capsys, monkeypatch):
    import ats_hf.export

    def fake_export(model, path, example, **kwargs):
        path.write_bytes(b"not a graph")
        return path

    def disagreeing(path, model, pixel_values, batch_sizes=(1, 3)):
        return {"images": 2 * len(pixel_values), "batch_sizes": list(batch_sizes), "max_logit_difference": 0.5,
                "logits_tolerance": 1e-4, "identical_kept_tokens": False, "passed": False}

    monkeypatch.setattr(ats_hf.export, "export_onnx", fake_export)
    monkeypatch.setattr(ats_hf.export, "verify_onnx", disagreeing)
    output = tmp_path / "onnx"
    assert main(["export", str(output), "--ats-capacity", "0.25", "--random-images", "--num-images", "2"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines()[-1].startswith(
        "ats-hf export: verification failed: the ONNX graph disagrees with PyTorch: largest logit difference 5.00e-01")
    assert json.loads((output / "onnx_verification.json").read_text())["passed"] is False


def test_model_is_optional_before_out():
    args = build_parser("export").parse_args(["export", "out"])
    assert (args.model, str(args.output_dir)) == (None, "out")
    args = build_parser("export").parse_args(["export", "some/model", "out", "--ats-capacity", "0.5"])
    assert (args.model, str(args.output_dir), args.ats_capacity) == ("some/model", "out", 0.5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{tmp}/missing", "{tmp}/onnx"], "MODEL folder '{tmp}/missing' does not exist"),
        (["{tmp}/onnx", "--random-images", "--dataset", "x"], "--random-images replaces the dataset options"),
        (["{tmp}/onnx", "--split", "test"], "--split, --image-column and --label-column apply to --dataset only"),
        (["{tmp}/onnx", "--ats-capacity", *map(str, TOO_MANY_CAPACITIES)],
         f"ats_capacity={TOO_MANY_CAPACITIES} has {len(TOO_MANY_CAPACITIES)} entries"),
        (["{tmp}/onnx", "--ats-layers", "none", "--ats-capacity", "12"], "the model has no ATS layers (ats_layers=[])"),
    ],
)
def test_mistakes_are_one_line(argv, message, tmp_path, capsys):
    assert main(["export", *[arg.format(tmp=tmp_path) for arg in argv]]) == 2
    line = last_error_line(capsys)
    assert line.startswith("ats-hf export: error: ") and message.format(tmp=tmp_path) in line, line


def test_a_non_empty_out_needs_overwrite(tmp_path, capsys):
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "file").write_text("x")
    assert main(["export", str(tmp_path / "onnx"), "--ats-capacity", "12"]) == 2
    assert "is not empty; pass --overwrite" in last_error_line(capsys)


def test_model_and_out_may_come_apart_among_the_options(tmp_path, capsys):
    """`ats-hf export MODEL --options... OUT` reads MODEL and OUT (it was 'unrecognized arguments: OUT'); the check
    of OUT then answers, before anything is loaded."""
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "file").write_text("x")
    argv = ["export", str(DEFAULT_MODEL_DIR), "--ats-capacity", "12", "--num-images", "4", str(tmp_path / "onnx")]
    assert main(argv) == 2
    assert "is not empty; pass --overwrite" in last_error_line(capsys)
