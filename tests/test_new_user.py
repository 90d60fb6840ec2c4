"""What a new user hit from a fresh clone (the house issue, item 7): each case gives a correct result or a one-line
error, no command overwrites without --overwrite, and commands check paths before anything heavy loads."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import plain_vit_config, tiny_model
from hf_fixtures import (
    load_example,
    random_image,
    save_plain_vit,
    subprocess_env,
    tiny_image_processor,
    write_image_folder,
)
from transformers import ViTModel

from ats_hf import AtsViTModel, load_ats_classifier
from ats_hf.hub import checkpoint
from ats_hf.hub.convert import convert_to_ats
from ats_hf_cli import main


def one_error_line(capsys, command: str) -> str:
    error = capsys.readouterr().err
    assert "Traceback" not in error, error
    line = error.strip().splitlines()[-1]
    assert line.startswith(f"ats-hf {command}: error: "), error
    return line


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any model loading fails the test: the command must have stopped before."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for name in ("load_classifier_and_processor", "load_ats_model", "load_ats_classifier"):
        monkeypatch.setattr(checkpoint, name, refuse)


def kept_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keep.txt").write_text("the user's work")
    return folder / "keep.txt"


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("benchmark", ["--output-dir", "{target}"]),
        ("tune", ["--output", "{target}"]),
        ("calibrate", ["--output", "{target}"]),
        ("export", ["{target}"]),
        ("convert", ["{model}", "{target}"]),
    ],
)
def test_no_command_writes_into_a_non_empty_folder_without_overwrite(command, argv, tmp_path, capsys,
                                                                    no_model_loading):
    keep = kept_file(tmp_path / "results")
    model = save_plain_vit(tmp_path / "vit")
    argv = [part.format(target=tmp_path / "results", model=model) for part in argv]
    assert main([command, *argv]) == 2
    line = one_error_line(capsys, command)
    assert "is not empty; pass --overwrite" in line and str(tmp_path / "results") in line
    assert keep.read_text() == "the user's work"


@pytest.mark.parametrize("command", ["tune", "calibrate"])
def test_a_file_given_as_an_output_folder_is_refused_up_front(command, tmp_path, capsys, no_model_loading):
    (tmp_path / "results").write_text("a file")
    assert main([command, "--output", str(tmp_path / "results")]) == 2
    assert "is a file; give a folder" in one_error_line(capsys, command)
    assert (tmp_path / "results").read_text() == "a file"


def test_visualize_keeps_an_existing_picture_unless_told(tmp_path, capsys, no_model_loading):
    random_image(0).save(tmp_path / "image.png")
    (tmp_path / "map.png").write_text("an earlier picture")
    assert main(["visualize", str(tmp_path / "image.png"), "--output", str(tmp_path / "map.png")]) == 2
    assert "exists; pass --overwrite" in one_error_line(capsys, "visualize")
    assert (tmp_path / "map.png").read_text() == "an earlier picture"


def test_k_and_capacity_above_the_token_count_keep_what_all_keeps(images):
    model = tiny_model()  # 65 tokens
    with torch.no_grad():
        everything = model(images)
        model.set_ats(max_tokens=1000)
        above = model(images)
        model.set_ats(max_tokens=None, capacity=1000)
        static_above = model(images)
        model.set_ats(capacity=1.0)
        static_all = model(images)
    assert torch.equal(above.num_tokens, everything.num_tokens)
    assert torch.equal(above.sampled_token_indices, everything.sampled_token_indices)
    assert everything.num_tokens[:, -1].max() < 65, "the test needs a model that drops tokens at K = all"
    assert torch.equal(static_above.sampled_token_indices, static_all.sampled_token_indices)
    assert static_above.token_mask.shape == static_all.token_mask.shape
    assert model.config.resolve_ats_max_tokens(65) == {1: 65, 2: 65, 3: 65}


def test_convert_of_a_backbone_keeps_a_backbone_and_its_pooler(tmp_path, images):
    torch.manual_seed(0)
    upstream = ViTModel(plain_vit_config()).eval()
    upstream.save_pretrained(tmp_path / "backbone")
    tiny_image_processor().save_pretrained(tmp_path / "backbone")
    output = convert_to_ats(tmp_path / "backbone", tmp_path / "ats", ats_layers=[])
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["AtsViTModel"]
    converted = AtsViTModel.from_pretrained(output).eval()
    with torch.no_grad():
        ours, theirs = converted(images), upstream(images)
    assert (ours.pooler_output - theirs.pooler_output).abs().max() <= 1e-5, "the pooler is kept"
    assert (ours.last_hidden_state - theirs.last_hidden_state).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="ViTModel checkpoint without an image-classification head"):
        load_ats_classifier(tmp_path / "backbone")


def test_benchmark_scores_a_backbone_by_fidelity_and_refuses_accuracy_on_it(tmp_path, capsys):
    # A backbone has no head, so no accuracy (never a randomly initialised head): it is a feature extractor.
    ViTModel(plain_vit_config()).save_pretrained(tmp_path / "backbone")
    tiny_image_processor().save_pretrained(tmp_path / "backbone")
    assert main(["benchmark", "--model", str(tmp_path / "backbone"), "--batch-sizes", "--objective", "accuracy",
                 "--output-dir", str(tmp_path / "out")]) == 2
    assert "has no classifier head" in one_error_line(capsys, "benchmark")


@pytest.mark.parametrize("capacity", [None, 12])
def test_a_mask_that_keeps_only_cls_in_every_image(capacity, images):
    model = tiny_model(ats_capacity=capacity)
    mask = torch.zeros(len(images), 65, dtype=torch.long)
    mask[:, 0] = 1
    with torch.no_grad():
        output = model(images, attention_mask=mask)
    assert output.num_tokens.eq(1).all() and torch.isfinite(output.logits).all()
    assert (output.sampled_token_indices < 0).all()


def test_visualize_without_ats_layers_draws_the_input(tmp_path, capsys):
    random_image(0, size=(64, 64)).save(tmp_path / "image.png")
    output = tmp_path / "map.png"
    assert main(["visualize", str(tmp_path / "image.png"), "--ats-layers", "none", "--output", str(output)]) == 0
    assert output.is_file() and "no ATS layers" not in capsys.readouterr().err


def test_push_to_hub_without_network_is_one_line_and_keeps_the_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = save_plain_vit(tmp_path / "vit")
    assert main(["convert", str(model), str(tmp_path / "out"), "--push-to-hub", "someone/tiny"]) == 2
    line = one_error_line(capsys, "convert")
    assert f"wrote {tmp_path / 'out'}, but uploading it to 'someone/tiny' failed" in line
    assert (tmp_path / "out" / "config.json").is_file()


# The command line checks paths before it imports torch: a child process reports what was imported.
IMPORTS_SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from ats_hf_cli import main
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(sys.argv[1:])
    print(json.dumps({"code": code, "error": err.getvalue(), "torch": "torch" in sys.modules}))
    """
)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["visualize", "{missing}"], "image file {missing!r} does not exist"),
        (["visualize", "{folder}"], "image {folder!r} is a folder; give one image file"),
        (["benchmark", "--model", "{missing}"], "--model folder {missing!r} does not exist"),
        (["tune", "--dataset", "{missing}"], "--dataset folder {missing!r} does not exist"),
        (["calibrate", "--model", "{missing}"], "--model folder {missing!r} does not exist"),
        (["export", "{missing}", "{folder}/out"], "MODEL folder {missing!r} does not exist"),
        (["convert", "{missing}", "{folder}/out"], "SOURCE folder {missing!r} does not exist"),
        (["benchmark", "--output-dir", "{folder}"], "is not empty; pass --overwrite"),
    ],
)
def test_commands_check_paths_before_importing_torch(argv, message, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.txt").write_text("x")
    names = {"missing": str(tmp_path / "missing"), "folder": str(tmp_path / "folder")}
    argv = [part.format(**names) for part in argv]
    done = subprocess.run([sys.executable, "-c", IMPORTS_SCRIPT, *argv], capture_output=True, text=True, timeout=120,
                          env=subprocess_env())
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["code"] == 2 and message.format(**names) in seen["error"], seen
    assert not seen["torch"], "torch was imported before the path was checked"


def test_misleading_messages_name_the_real_problem(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert main(["convert", str(tmp_path / "notes"), str(tmp_path / "out")]) == 2
    assert "holds no config.json: it is not a transformers checkpoint folder" in one_error_line(capsys, "convert")


def test_export_reports_the_images_it_printed(tmp_path, capsys):
    assert main(["export", str(tmp_path / "onnx"), "--ats-capacity", "12", "--num-images", "3"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "onnx" / "onnx_verification.json").read_text())
    assert "3 images" in printed and report["images"] == 3


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("new-user")
    save_plain_vit(root / "vit", num_labels=3)
    save_plain_vit(root / "other-labels", num_labels=2)
    write_image_folder(root / "train", per_class=2)
    (root / "flat").mkdir()
    random_image(0).save(root / "flat" / "a.png")
    (root / "broken" / "cat").mkdir(parents=True)
    (root / "broken" / "cat" / "0.png").write_text("not an image")
    return root


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train_dir", "{root}/train", "--ats_layers", "7"], "ats_layers=[7] has indices [7] outside 0..3"),
        (["--train_dir", "{root}/missing"], "--train_dir '{root}/missing' is not a folder"),
        (["--train_dir", "{root}/flat"], "has no class sub-folders"),
        (["--train_dir", "{root}/broken"], "0.png cannot be read as an image"),
    ],
)
def test_the_example_reports_bad_sources_in_one_line(workspace, extra, message, tmp_path, capsys):
    example = load_example()
    argv = ["--model_name_or_path", str(workspace / "vit"), "--output_dir", str(tmp_path / "out"), "--do_train",
            "--report_to", "none", *[part.format(root=workspace) for part in extra]]
    with pytest.raises(SystemExit) as exited:
        example.parse_args(argv)
    error = capsys.readouterr().err
    assert exited.value.code == 2 and error.count("\n") == 1 and message.format(root=workspace) in error, error


def test_the_example_refuses_a_teacher_with_other_classes(workspace, tmp_path, capsys, monkeypatch):
    example = load_example()
    monkeypatch.setattr(sys, "argv", [
        "run_image_classification.py", "--model_name_or_path", str(workspace / "vit"), "--train_dir",
        str(workspace / "train"), "--distill_from", str(workspace / "other-labels"), "--output_dir",
        str(tmp_path / "out"), "--do_train", "--max_steps", "1", "--report_to", "none", "--use_cpu", "true",
    ])
    assert example.run_from_command_line() == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--distill_from" in error and "predicts 2 classes" in error and "the dataset has 3" in error
    assert not (tmp_path / "out" / "model.safetensors").exists()


# A core-only install: the tooling's extras are missing. The commands name the extra to install.
CORE_ONLY_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoExtras(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("matplotlib", "sklearn", "datasets", "onnx", "onnxscript", "onnxruntime"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoExtras())
    import importlib.util
    find_spec = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *rest: None if name.split(".")[0] in (
        "matplotlib", "sklearn", "datasets", "onnx", "onnxscript", "onnxruntime") else find_spec(name, *rest)
    from ats_hf_cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["tune", "--num-images", "8"], "ats_hf[benchmark]"),
        (["calibrate"], "ats_hf[benchmark]"),
        (["benchmark"], "ats_hf[benchmark]"),
        (["export", "OUT"], "ats_hf[export]"),
    ],
)
def test_a_core_only_install_names_the_extra_to_install(argv, extra, tmp_path):
    argv = [str(tmp_path / part) if part == "OUT" else part for part in argv]
    done = subprocess.run([sys.executable, "-c", CORE_ONLY_SCRIPT, *argv], capture_output=True, text=True,
                          timeout=180, env=subprocess_env(), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"pip install '{extra}'" in done.stderr.strip().splitlines()[-1]
