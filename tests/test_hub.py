"""Sharing on the Hub: auto classes and code in saved checkpoints, loading without ats_hf, model cards."""

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
from hf_fixtures import (
    random_image,
    run_without_ats_hf,
    tiny_ats_classifier,
    tiny_image_processor,
)
from huggingface_hub import ModelCard
from transformers import AutoModelForImageClassification, pipeline

import ats_hf
from ats_hf.flops import dense_gmacs
from ats_hf.hub.checkpoint import save_ats_checkpoint
from ats_hf.hub.model_card import build_model_card, write_model_card

PACKAGE_DIR = Path(ats_hf.__file__).parent
AUTO_CLASSES = {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}

# Runs in a child process in which `import ats_hf` fails, whatever sys.path or the installed packages say.
REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    try:
        import ats_hf
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("ats_hf is still importable")

    import torch
    from transformers import AutoModel, AutoModelForImageClassification, pipeline

    checkpoint = sys.argv[1]
    model = AutoModelForImageClassification.from_pretrained(checkpoint, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(checkpoint, trust_remote_code=True)
    with torch.no_grad():
        outputs = model(pixel_values=torch.load("pixel_values.pt"))
    torch.save({"logits": outputs.logits, "num_tokens": outputs.num_tokens,
                "sampled_token_indices": outputs.sampled_token_indices}, "remote_outputs.pt")
    classifier = pipeline("image-classification", model=checkpoint, trust_remote_code=True)
    card_namespace = {}
    exec(sys.stdin.read(), card_namespace)  # the model card's snippets for users without ats_hf
    json.dump({
        "model_module": type(model).__module__,
        "base_class": type(base).__name__,
        "pipeline": classifier("image.png", top_k=3),
        "card_pipeline": card_namespace["classifier"]("image.png", top_k=3),
        "card_num_tokens": card_namespace["outputs"].num_tokens.tolist(),
        "loaded": sorted(name for name in sys.modules if name.split(".")[0] == "ats_hf"),
    }, open("remote.json", "w"))
    """
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hub") / "tiny-ats"
    model = tiny_ats_classifier(ats_max_tokens=[0.5, 20, None])
    save_ats_checkpoint(model, directory, tiny_image_processor(), license="apache-2.0")
    return directory


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_save_pretrained_ships_the_package_code(tmp_path):
    tiny_ats_classifier().save_pretrained(tmp_path)
    for name in ("ats_sampling.py", "configuration_ats_core.py", "configuration_ats_vit.py", "modeling_ats_core.py",
                 "modeling_ats_vit.py"):
        assert (tmp_path / name).read_bytes() == (PACKAGE_DIR / name).read_bytes(), name
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_ats_vit.AtsViTConfig"
    assert auto_map["AutoModelForImageClassification"] == "modeling_ats_vit.AtsViTForImageClassification"


def test_plain_save_pretrained_auto_map_covers_automodel(tmp_path):
    tiny_ats_classifier().save_pretrained(tmp_path)
    assert set(json.loads((tmp_path / "config.json").read_text())["auto_map"]) == AUTO_CLASSES


def test_saved_checkpoint_auto_map_covers_all_auto_classes(checkpoint):
    auto_map = json.loads((checkpoint / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_ats_vit.AtsViTConfig",
        "AutoModel": "modeling_ats_vit.AtsViTModel",
        "AutoModelForImageClassification": "modeling_ats_vit.AtsViTForImageClassification",
    }


def test_loads_with_trust_remote_code_where_ats_hf_cannot_be_imported(checkpoint, tmp_path, monkeypatch):
    images = [random_image(seed, size=(36, 30)) for seed in range(4)]
    pixel_values = tiny_image_processor()(images, return_tensors="pt")["pixel_values"]
    torch.save(pixel_values, tmp_path / "pixel_values.pt")
    images[0].save(tmp_path / "image.png")
    card = (checkpoint / "README.md").read_text()
    without_ats_hf = [block for block in python_blocks(card) if "trust_remote_code=True" in block]
    assert len(without_ats_hf) == 2
    snippets = "\n".join(without_ats_hf).replace('"image.jpg"', '"image.png"')

    run = run_without_ats_hf(REMOTE_SCRIPT, str(checkpoint), cwd=tmp_path, stdin=snippets)
    assert run.returncode == 0, run.stderr[-4000:]
    remote = json.loads((tmp_path / "remote.json").read_text())
    assert remote["model_module"].startswith("transformers_modules.") and remote["loaded"] == []
    assert remote["base_class"] == "AtsViTModel"

    local = tiny_ats_classifier(ats_max_tokens=[0.5, 20, None])
    with torch.no_grad():
        expected = local(pixel_values=pixel_values)
    outputs = torch.load(tmp_path / "remote_outputs.pt")
    assert torch.equal(outputs["logits"], expected.logits)
    assert torch.equal(outputs["num_tokens"], expected.num_tokens)
    assert expected.sampled_token_indices.shape[1] == 3
    assert torch.equal(outputs["sampled_token_indices"], expected.sampled_token_indices)
    assert len(set(expected.num_tokens[:, -1].tolist())) > 1  # the batch really had different kept counts
    dense_plain = dense_gmacs(tiny_ats_classifier().config)  # same geometry; a per-layer K list must not matter
    assert f"| dense (same weights, no token sampling) | {dense_plain:.4g} |" in card

    monkeypatch.chdir(tmp_path)
    local_result = pipeline("image-classification", model=str(checkpoint))("image.png", top_k=3)
    for result in (remote["pipeline"], remote["card_pipeline"]):
        assert [entry["label"] for entry in result] == [entry["label"] for entry in local_result]
        expected_scores = [entry["score"] for entry in local_result]
        assert [entry["score"] for entry in result] == pytest.approx(expected_scores, abs=1e-6)
    assert remote["card_num_tokens"] == expected.num_tokens[:1].tolist()


def test_card_snippet_for_ats_hf_users_runs(checkpoint, tmp_path, monkeypatch):
    random_image(0, size=(36, 30)).save(tmp_path / "image.png")
    monkeypatch.chdir(tmp_path)
    with_ats_hf = [block for block in python_blocks((checkpoint / "README.md").read_text()) if "import ats_hf" in block]
    assert len(with_ats_hf) == 1
    namespace = {}
    exec(with_ats_hf[0].replace('"image.jpg"', '"image.png"'), namespace)
    result = namespace["classifier"]("image.png", top_k=3)
    assert {entry["label"] for entry in result} == {"cat", "dog", "fox"}
    assert type(namespace["classifier"].model).__module__ == "ats_hf.modeling_ats_vit"
    # With ats_hf imported, its own code wins over the repository's, even when remote code is allowed.
    model = AutoModelForImageClassification.from_pretrained(checkpoint, trust_remote_code=True)
    assert type(model).__module__ == "ats_hf.modeling_ats_vit"


def test_model_card_has_hub_metadata_settings_gmacs_and_usage(tmp_path):
    config = tiny_ats_classifier(ats_max_tokens=0.5).config
    path = write_model_card(
        tmp_path, config, model_id="someone/vit-ats", base_model="google/vit-base-patch16-224",
        license="apache-2.0", ats_gmacs=0.0021, gmacs_measured_on="9 evaluation images of `beans`",
        metrics={"accuracy": 0.875}, datasets=["beans"],
    )
    assert path == tmp_path / "README.md"
    card = ModelCard.load(path)
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "image-classification"
    assert card.data.base_model == "google/vit-base-patch16-224"
    assert card.data.license == "apache-2.0"
    assert card.data.datasets == ["beans"]
    assert "adaptive-token-sampling" in card.data.tags
    text = card.text
    assert "[1, 2, 3] of 4 layers" in text and "layer 1: 33, layer 2: 33, layer 3: 33" in text
    assert "`inverse_transform`" in text
    dense = dense_gmacs(config)
    assert f"| dense (google/vit-base-patch16-224) | {dense:.4g} |" in text
    assert f"| ATS (mean over 9 evaluation images of `beans`) | 0.0021 | {100 * (0.0021 / dense - 1):+.1f}% |" in text
    assert "| accuracy | 0.875 |" in text
    blocks = python_blocks(text)
    assert len(blocks) == 3 and all('"someone/vit-ats"' in block for block in blocks)
    for block in blocks:
        compile(block, "card snippet", "exec")
    assert "trust_remote_code=True" in text and 'revision="<commit sha>"' in text


def test_model_card_without_known_ats_cost_or_license(tmp_path):
    config = tiny_ats_classifier().config
    card = build_model_card(config, model_id=str(tmp_path))
    assert card.data.license == "unknown" and card.data.base_model is None
    assert "not measured" in card.text and "| ATS (mean" not in card.text
    with pytest.raises(ValueError, match="gmacs_measured_on"):
        build_model_card(config, model_id="x", ats_gmacs=1.0)


def test_model_card_states_the_static_mode_and_merging(tmp_path):
    config = tiny_ats_classifier(ats_capacity=[30, 20, 10], ats_merge=0.8).config
    text = write_model_card(tmp_path, config, model_id="someone/vit-ats-static").read_text()
    assert "static mode, rows per ATS layer: layer 1: 30, layer 2: 20, layer 3: 10" in text
    assert "cosine similarity >= 0.8" in text
    assert "adaptive mode (None)" in write_model_card(tmp_path, tiny_ats_classifier().config, model_id="x").read_text()


def test_model_card_names_the_family_its_special_tokens_and_its_code_files():
    from ats_hf import AtsDinov2Config
    from ats_hf.hub.model_card import build_model_card

    config = AtsDinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
                             num_register_tokens=2, ats_layers=[1])
    card = str(build_model_card(config, model_id="me/tiny-dinov2"))
    assert "A DINOv2 model with **Adaptive Token Sampling**" in card
    assert "| input tokens | 19: 3 special (CLS and the register tokens), 16 patches |" in card
    assert "`configuration_ats_dinov2.py` and `modeling_ats_dinov2.py`" in card
    assert "registers the ats_dinov2 model type" in card
    plain = str(build_model_card(AtsDinov2Config(num_hidden_layers=2, ats_layers=[]), model_id="me/x"))
    assert "runs as a plain DINOv2" in plain
