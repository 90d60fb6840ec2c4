"""Converting a plain ViT/DeiT checkpoint into a ready-to-share ATS checkpoint: function, CLI, upload (mocked)."""

import argparse
import json
from pathlib import Path

import pytest
import torch
from hf_fixtures import random_image, save_plain_vit, tiny_image_processor
from huggingface_hub import ModelCard
from transformers import BertConfig, ViTForImageClassification

from ats_hf import AtsViTForImageClassification
from ats_hf.hub import checkpoint
from ats_hf.hub.convert import convert_to_ats, measure_mean_gmacs
from ats_hf_cli import main
from ats_hf_cli.commands import convert

CHECKPOINT_FILES = {
    "README.md",
    "ats_sampling.py",
    "config.json",
    "configuration_ats_core.py",
    "configuration_ats_vit.py",
    "model.safetensors",
    "modeling_ats_core.py",
    "modeling_ats_vit.py",
    "preprocessor_config.json",
}


@pytest.fixture(scope="module")
def plain_vit(tmp_path_factory):
    return save_plain_vit(tmp_path_factory.mktemp("convert") / "vit")


@pytest.fixture
def pixel_values():
    images = [random_image(seed) for seed in range(4)]
    return tiny_image_processor()(images, return_tensors="pt")["pixel_values"]


def run_cli(*argv: str) -> int:
    """`ats-hf convert ARGV` through the subcommand's own parser and runner."""
    parser = argparse.ArgumentParser(prog="ats-hf convert")
    convert.add_arguments(parser)
    return convert.run(parser.parse_args(list(argv)))


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records calls and what the folder held when it was uploaded."""

    calls: list = []

    def __init__(self, token=None):
        FakeHfApi.calls.append(("HfApi", token))

    def create_repo(self, repo_id, private=None, exist_ok=False):
        FakeHfApi.calls.append(("create_repo", repo_id, private, exist_ok))
        return type("RepoUrl", (), {"repo_id": repo_id if "/" in repo_id else f"someone/{repo_id}"})()

    def upload_folder(self, repo_id, folder_path, commit_message, ignore_patterns):
        folder = Path(folder_path)
        files = {path.name: path.read_bytes() for path in folder.iterdir()}
        FakeHfApi.calls.append(("upload_folder", repo_id, folder, files, ignore_patterns))


@pytest.fixture
def fake_hub(monkeypatch):
    FakeHfApi.calls = []
    monkeypatch.setattr(checkpoint, "HfApi", FakeHfApi)
    return FakeHfApi.calls


def test_convert_writes_a_ready_to_share_checkpoint(plain_vit, tmp_path, pixel_values):
    images = tmp_path / "images"
    images.mkdir()
    for seed in range(3):
        random_image(seed).save(images / f"{seed}.png")
    output = convert_to_ats(
        plain_vit, tmp_path / "out", ats_layers=[1, 2, 3], ats_max_tokens=0.5, measure_gmacs_on=images
    )
    assert {path.name for path in output.iterdir()} == CHECKPOINT_FILES
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "ats_vit"
    assert config["ats_layers"] == [1, 2, 3] and config["ats_max_tokens"] == 0.5
    assert config["ats_sampler"] == "inverse_transform"
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}

    converted = AtsViTForImageClassification.from_pretrained(output).eval()
    direct = AtsViTForImageClassification.from_pretrained(plain_vit, ats_layers=[1, 2, 3], ats_max_tokens=0.5).eval()
    plain = ViTForImageClassification.from_pretrained(plain_vit).eval()
    as_dense = AtsViTForImageClassification.from_pretrained(output, ats_layers=[]).eval()
    with torch.no_grad():
        assert torch.equal(converted(pixel_values).logits, direct(pixel_values).logits)
        assert (as_dense(pixel_values).logits - plain(pixel_values).logits).abs().max() <= 1e-5

    card = ModelCard.load(output / "README.md")
    assert card.data.base_model is None and card.data.license == "unknown"  # a local source names neither
    measured = measure_mean_gmacs(converted, tiny_image_processor(), sorted(images.iterdir()))
    assert f"| ATS (mean over 3 images of `images`) | {measured:.4g} |" in card.text
    assert json.loads((output / "preprocessor_config.json").read_text())["size"] == {"height": 32, "width": 32}


def test_cli_options_reach_the_config_and_the_card(plain_vit, tmp_path):
    code = run_cli(
        str(plain_vit), str(tmp_path / "out"), "--ats-layers", "1,3", "--ats-max-tokens", "20,0.5",
        "--ats-sampler", "top_k", "--base-model", "google/vit-base-patch16-224", "--license", "apache-2.0",
    )
    assert code == 0
    model = AtsViTForImageClassification.from_pretrained(tmp_path / "out")
    settings = (model.config.ats_layers, model.config.ats_max_tokens, model.config.ats_sampler)
    assert settings == ([1, 3], [20, 0.5], "top_k")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert (card.data.base_model, card.data.license) == ("google/vit-base-patch16-224", "apache-2.0")

    # Re-converting an ATS checkpoint keeps what is not overridden, including the card's base model and license.
    assert run_cli(str(tmp_path / "out"), str(tmp_path / "again"), "--ats-max-tokens", "all") == 0
    again = AtsViTForImageClassification.from_pretrained(tmp_path / "again")
    assert (again.config.ats_layers, again.config.ats_max_tokens, again.config.ats_sampler) == ([1, 3], None, "top_k")
    card = ModelCard.load(tmp_path / "again" / "README.md")
    assert (card.data.base_model, card.data.license) == ("google/vit-base-patch16-224", "apache-2.0")


def test_ats_hf_command_line_dispatches_convert(plain_vit, tmp_path):
    assert main(["convert", str(plain_vit), str(tmp_path / "out"), "--ats-layers", "none"]) == 0
    assert AtsViTForImageClassification.from_pretrained(tmp_path / "out").config.ats_layers == []


def test_push_to_hub_uploads_the_finished_directory(plain_vit, tmp_path, fake_hub):
    assert run_cli(str(plain_vit), str(tmp_path / "out"), "--push-to-hub", "tiny-ats", "--private") == 0
    (_, token), (create, name, private, exist_ok), upload = fake_hub
    assert token is None  # huggingface_hub's saved login or HF_TOKEN
    assert (create, name, private, exist_ok) == ("create_repo", "tiny-ats", True, True)
    _, repo_id, folder, files, ignore_patterns = upload
    assert repo_id == "someone/tiny-ats" and folder == tmp_path / "out"
    assert set(files) == CHECKPOINT_FILES and "checkpoint-*" in ignore_patterns
    # The card was rewritten with the repo id the Hub assigned, before the upload.
    assert b'model="someone/tiny-ats"' in files["README.md"]
    assert 'model="someone/tiny-ats"' in (tmp_path / "out" / "README.md").read_text()


def test_push_to_hub_from_python_keeps_a_full_repo_id(plain_vit, tmp_path, fake_hub):
    convert_to_ats(plain_vit, tmp_path / "out", push_to_hub="org/tiny-ats")
    assert [call[0] for call in fake_hub] == ["HfApi", "create_repo", "upload_folder"]
    assert fake_hub[1][2] is None  # visibility left to the Hub's default
    assert b'model="org/tiny-ats"' in fake_hub[2][3]["README.md"]


def test_convert_refuses_what_it_cannot_do(plain_vit, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_to_ats(plain_vit, tmp_path / "full")

    bert = BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    bert.save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="model_type 'bert' is not supported"):
        convert_to_ats(tmp_path / "bert", tmp_path / "out")

    ViTForImageClassification.from_pretrained(plain_vit).save_pretrained(tmp_path / "no-processor")
    with pytest.raises(ValueError, match="--image-processor"):
        convert_to_ats(tmp_path / "no-processor", tmp_path / "out")
    output = convert_to_ats(tmp_path / "no-processor", tmp_path / "out2", image_processor=plain_vit)
    assert (output / "preprocessor_config.json").exists()


@pytest.mark.parametrize("layers", [["1-3"], ["1", "2", "3"], ["1,2", "3"]])
def test_convert_takes_every_form_of_the_settings_grammar(layers):
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    args = parser.parse_args(["src", "out", "--ats-layers", *layers, "--ats-max-tokens", "all"])
    assert (args.ats_layers, args.ats_max_tokens) == ([1, 2, 3], None)
    assert not hasattr(parser.parse_args(["src", "out"]), "ats_layers"), "left out: keep the source's"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ats-layers", "5-3"], "reversed"),  # used to mean "no ATS" and write a plain ViT
        (["--ats-max-tokens", "0"], "'0' is not 'all'"),
        (["--ats-sampler", "nearest"], "unknown"),
    ],
)
def test_convert_rejects_bad_settings_before_loading_anything(plain_vit, tmp_path, capsys, argv, message):
    assert main(["convert", str(plain_vit), str(tmp_path / "out"), *argv]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("ats-hf convert: error: ") and message in error
    assert not (tmp_path / "out").exists()


def test_a_count_the_grammar_takes_but_the_model_refuses_is_one_line_and_writes_nothing(plain_vit, tmp_path, capsys):
    assert main(["convert", str(plain_vit), str(tmp_path / "out"), "--ats-max-tokens", "1"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("ats-hf convert: error: ") and "ats_max_tokens=1 is too small: an int must be >= 2" in error
    assert not (tmp_path / "out").exists()


def test_convert_reports_user_errors_in_one_line(plain_vit, tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error == f"ats-hf convert: error: SOURCE folder {str(tmp_path / 'missing')!r} does not exist\n"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main(["convert", str(plain_vit), str(tmp_path / "full")]) == 2
    assert "is not empty; pass --overwrite to replace what is there" in capsys.readouterr().err.splitlines()[-1]
    assert main(["convert", str(plain_vit), str(tmp_path / "out"), "--ats-layers", "7"]) == 2
    assert "outside 0..3" in capsys.readouterr().err.splitlines()[-1]
