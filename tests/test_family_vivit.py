"""The ViViT family: videos (B, T, C, H, W) cut into space-time tubelets, against transformers' own ViViT.

What every classifier family keeps (equal to upstream without ATS, batch invariance under three settings, static =
adaptive, the dense grid, save and load, the Auto class, the pipeline in batches, remote code without ats_hf, GMACs
of the base model) is checked by tests/test_family_contract.py, whose cases include ViViT (`family_cases.py`), and
ToMe by tests/test_tome.py, and what both video families keep (the default settings, GMACs per video with the head,
the static mode compiled and in ONNX, the dense grid's rows) by tests/test_video_families.py. Here: the tubelet
geometry, `ats-hf convert` of a checkpoint with the Hub's old weight names, ToMe's GMACs per video, the pipeline on
frames and on a video file, and the image tools (visualize, export) refusing a video model."""

import json

import numpy as np
import pytest
import torch
from family_cases import CASES
from hf_fixtures import write_video
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoImageProcessor, AutoModelForVideoClassification

from ats_hf import AtsVivitConfig, AtsVivitForVideoClassification
from ats_hf.configuration_ats_core import num_input_tokens
from ats_hf.flops import dense_gmacs, tome_gmacs
from ats_hf.hub.checkpoint import load_classifier_and_processor, load_model_and_processor
from ats_hf.hub.convert import convert_to_ats
from ats_hf.tome import tome_forward
from ats_hf_cli import main

VIVIT = next(case for case in CASES if case.family == "vivit")
NUM_TOKENS = 65  # CLS + 4 x 4 x 4 tubelets


@pytest.fixture(scope="module")
def upstream():
    return VIVIT.upstream()


@pytest.fixture(scope="module")
def upstream_folder(upstream, tmp_path_factory):
    """transformers' ViViT classifier saved with the old weight names (`encoder.layer.N.attention.attention.query`),
    as google/vivit-b-16x2-kinetics400 is on the Hub, and its processor."""
    folder = tmp_path_factory.mktemp("vivit") / "upstream"
    upstream.save_pretrained(folder, save_original_format=True)
    VIVIT.processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def converted(upstream_folder, tmp_path_factory):
    """`ats-hf convert` of the upstream checkpoint, default settings."""
    folder = tmp_path_factory.mktemp("vivit") / "ats"
    assert main(["convert", str(upstream_folder), str(folder)]) == 0
    return folder


@pytest.fixture
def videos():
    return VIVIT.inputs(4, seed=11)


def load(folder, **settings) -> AtsVivitForVideoClassification:
    model = AutoModelForVideoClassification.from_pretrained(folder).eval()
    model.set_ats(**settings)
    return model


def test_tubelets_set_the_token_grid_and_the_patch_embedding_size():
    config = AtsVivitConfig(**{key: value for key, value in VIVIT.build().config.to_dict().items()
                               if key in AtsVivitConfig().to_dict()})
    assert config.ats_patch_grid() == (4, 4, 4) and config.ats_num_input_tokens() == NUM_TOKENS
    # The image tools pass (height, width): the configured frames; a video family also takes (frames, height, width).
    assert num_input_tokens(config, (32, 32)) == NUM_TOKENS and num_input_tokens(config, 32) == NUM_TOKENS
    assert num_input_tokens(config, (16, 48, 32)) == 1 + 8 * 6 * 4
    assert config.ats_patch_values == 3 * 2 * 8 * 8
    assert config.ats_layers == [1, 2, 3] and config.ats_num_special_tokens == 1


def test_convert_reads_the_old_weight_names_and_equals_upstream_without_ats(converted, upstream, videos):
    saved = json.loads((converted / "config.json").read_text())
    assert saved["model_type"] == "ats_vivit" and saved["architectures"] == ["AtsVivitForVideoClassification"]
    assert saved["auto_map"]["AutoModelForVideoClassification"] == (
        "modeling_ats_vivit.AtsVivitForVideoClassification")
    assert {"modeling_ats_vivit.py", "configuration_ats_vivit.py", "modeling_ats_core.py", "ats_sampling.py",
            "preprocessor_config.json"} <= {path.name for path in converted.iterdir()}
    assert "pipeline_tag: video-classification" in (converted / "README.md").read_text()
    model = load(converted, layers=[])
    assert type(model) is AtsVivitForVideoClassification
    with torch.no_grad():
        ours, theirs = model(videos, output_hidden_states=True), upstream(videos, output_hidden_states=True)
    assert (ours.logits - theirs.logits).abs().max() <= 1e-5
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 5
    for mine, upstreams in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        assert (mine - upstreams).abs().max() <= 1e-5


def test_tome_gmacs_per_video_count_what_runs(converted):
    model = load(converted)
    model.set_attn_implementation("eager")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tome_forward(model, VIVIT.inputs(1, seed=3), 8)
    assert counter.get_total_flops() / 2 / 1e9 == pytest.approx(tome_gmacs(model.config, 8), rel=1e-9)
    assert tome_gmacs(model.config, 8) < dense_gmacs(model.config)


def test_the_pipeline_preprocessing_of_frames_and_a_video_file(converted, upstream, tmp_path):
    """Frames through the checkpoint's processor (the pipeline's path after decoding) give upstream's logits without
    ATS; with PyAV, `pipeline("video-classification")` on a file gives the model's top classes on its frames."""
    processor = AutoImageProcessor.from_pretrained(converted)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (36, 40, 3), dtype=np.uint8) for _ in range(8)]
    pixel_values = processor(frames, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 8, 3, 32, 32)
    model = load(converted)
    with torch.no_grad(), model.ats_settings_applied(layers=[]):
        assert (model(pixel_values).logits - upstream(pixel_values).logits).abs().max() <= 1e-5

    av = pytest.importorskip("av", reason="the video-classification pipeline decodes files with PyAV")
    from transformers import pipeline
    from transformers.pipelines.video_classification import read_video_pyav

    path = write_video(tmp_path / "clip.mp4", seed=5)
    classifier = pipeline("video-classification", model=str(converted))
    assert isinstance(classifier.model, AtsVivitForVideoClassification)
    predictions = classifier(str(path), top_k=3)
    with av.open(str(path)) as container:
        decoded = list(read_video_pyav(container, list(range(8))))
    with torch.no_grad():
        probabilities = model(**processor(decoded, return_tensors="pt")).logits[0].softmax(-1)
    scores, ids = probabilities.topk(3)
    assert [p["label"] for p in predictions] == [model.config.id2label[i] for i in ids.tolist()]
    assert [p["score"] for p in predictions] == pytest.approx(scores.tolist(), abs=1e-6)


def test_the_image_tools_refuse_a_video_model(converted, tmp_path):
    """visualize and export take images; benchmark, tune and calibrate take videos too (tests/test_video_tools.py)."""
    with pytest.raises(ValueError, match="is a ViViT model, which takes videos; this tool takes image models"):
        load_classifier_and_processor(converted)
    assert type(load_model_and_processor(converted)[0]) is AtsVivitForVideoClassification
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(images / "0.png")
    with pytest.raises(ValueError, match="measure_gmacs_on takes images, and ViViT takes videos"):
        convert_to_ats(converted, tmp_path / "out", measure_gmacs_on=images)
