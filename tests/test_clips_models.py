"""The two tiny video classifiers shipped with the synthetic clips: the ATS-ViViT (src/ats_hf/data/clips_vivit) and
the ATS-VideoMAE (src/ats_hf/data/clips_videomae), each trained dense by `python scripts/train_clips_vivit.py
--threads 1 [--family videomae]`, ATS settings chosen by `ats_hf.tune.tune` (its --tune-only)."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script
from transformers import AutoImageProcessor, AutoModelForVideoClassification

import ats_hf  # noqa: F401  (registers the ATS classes with the Auto classes)
from ats_hf import AtsVideoMAEForVideoClassification, AtsVivitForVideoClassification
from ats_hf.data import CLIPS_VIDEOMAE_DIR, CLIPS_VIVIT_DIR
from ats_hf.data import synthetic_clips as clips
from ats_hf.flops import dense_gmacs, gmacs_per_image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_clips_vivit.py"
NUM_CLIPS = 200
# family -> (folder, class, (frames, image size, tubelets), tubelet tokens, dense top-1 at least,
#            (width, heads, MLP), most MiB of weights)
SHIPPED = {
    "vivit": (CLIPS_VIVIT_DIR, AtsVivitForVideoClassification, (8, 64, [2, 8, 8]), 257, 90.0, (192, 3, 768), 12),
    "videomae": (CLIPS_VIDEOMAE_DIR, AtsVideoMAEForVideoClassification, (8, 64, 2), 256, 85.0, (64, 4, 128), 1),
}


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def model(family):
    return AutoModelForVideoClassification.from_pretrained(SHIPPED[family][0]).eval()


@pytest.fixture(scope="module")
def test_clips():
    return clips.test_split(NUM_CLIPS)


def _evaluate(model, pixel_values, labels, **settings):
    """Top-1 (%), mean GMACs per video and mean tokens out of the last layer, with `settings` applied."""
    with torch.no_grad(), model.ats_settings_applied(**settings):  # GMACs read the settings from the config
        output = model(pixel_values)
        gmacs = gmacs_per_image(model.config, output.num_tokens).mean().item()
    accuracy = 100.0 * (output.logits.argmax(-1) == labels).float().mean().item()
    return accuracy, gmacs, output.num_tokens


def test_the_folder_loads_through_the_auto_class_as_a_small_video_model(family, model):
    folder, model_class, geometry, tokens, _, width, mebibytes = SHIPPED[family]
    assert type(model) is model_class
    config = model.config
    tubelets = config.tubelet_size if isinstance(config.tubelet_size, int) else list(config.tubelet_size)
    assert (config.num_frames, config.image_size, tubelets) == geometry
    assert config.ats_num_input_tokens() == tokens
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size) == width
    assert [config.id2label[i] for i in range(4)] == list(clips.CLASS_NAMES)
    assert (folder / "model.safetensors").stat().st_size < mebibytes * 2**20
    assert (folder / "README.md").read_text().startswith("---\nlibrary_name: transformers\n")


def _training_script():
    return load_script("train_clips_vivit")


def test_the_shipped_settings_are_the_training_scripts(family):
    """config.json carries SHIPPED_ATS of scripts/train_clips_vivit.py (the tune choice written there)."""
    module = _training_script()
    config = json.loads((SHIPPED[family][0] / "config.json").read_text())
    shipped = module.SHIPPED_ATS[family]
    assert shipped["layers"], "the shipped config samples tokens"
    assert (config["ats_layers"], config["ats_max_tokens"], config["ats_sampler"], config["ats_merge"]) == (
        shipped["layers"], shipped["max_tokens"], shipped["sampler"], shipped["merge"])
    assert module.DEFAULT_OUTPUT[family] == SHIPPED[family][0]
    assert {name: config[name] for name in module.WIDTH[family]} == module.WIDTH[family]
    assert "tune(" in SCRIPT.read_text()


def test_the_training_script_takes_each_familys_learning_rate_and_refuses_a_non_positive_one(monkeypatch, capsys):
    module = _training_script()
    for argv, rate in ((["--family", "vivit"], 5e-4), (["--family", "videomae"], 1e-3), (["--lr", "2e-4"], 2e-4)):
        monkeypatch.setattr(sys, "argv", ["train_clips_vivit.py", *argv])
        assert module.parse_args().lr == rate
    monkeypatch.setattr(sys, "argv", ["train_clips_vivit.py", "--lr", "-0.001"])
    with pytest.raises(SystemExit):
        module.parse_args()
    assert "--lr -0.001 must be a positive learning rate" in capsys.readouterr().err


def test_dense_and_shipped_ats_accuracy_and_cost(family, model, test_clips):
    videos, labels = test_clips
    pixel_values = clips.to_pixel_values(videos)
    dense_accuracy, dense_mean, dense_tokens = _evaluate(model, pixel_values, labels, layers=[])
    ats_accuracy, ats_mean, ats_tokens = _evaluate(model, pixel_values, labels)  # the shipped settings
    assert dense_accuracy >= SHIPPED[family][4]
    assert dense_mean == pytest.approx(dense_gmacs(model.config), rel=1e-6)
    assert (ats_tokens <= dense_tokens).all() and ats_tokens.float().mean() < dense_tokens.float().mean()
    assert ats_mean < 0.5 * dense_gmacs(model.config)
    assert ats_accuracy >= dense_accuracy - 3.0


def test_the_saved_processor_on_frames_equals_to_pixel_values(family, test_clips):
    processor = AutoImageProcessor.from_pretrained(SHIPPED[family][0])
    videos = test_clips[0][:4]
    processed = processor([list(video.numpy()) for video in videos], return_tensors="pt")["pixel_values"]
    assert processed.shape == (4, 8, 3, 64, 64)
    torch.testing.assert_close(processed, clips.to_pixel_values(videos), atol=1e-5, rtol=0)
