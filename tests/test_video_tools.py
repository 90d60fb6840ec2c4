"""The evaluation tools on videos: benchmark, tune and calibrate take a ViViT classifier and stream its clips (the
embedded synthetic clips, or a dataset column of frame lists) through the shared loop, with GMACs per video."""

import json

import pytest
import torch
from transformers import VivitImageProcessor

from ats_hf import AtsSettings, AtsVivitConfig, AtsVivitForVideoClassification
from ats_hf.data import CLIPS_VIDEOMAE_DIR, synthetic_clips
from ats_hf.evaluation import evaluate_methods, open_images, tensor_images
from ats_hf.flops import dense_gmacs
from ats_hf.methods import AtsMethod, dense_method
from ats_hf_cli import main


def clips_processor() -> VivitImageProcessor:
    """What `synthetic_clips.to_pixel_values` computes, as a processor."""
    return VivitImageProcessor(do_resize=False, do_center_crop=False, rescale_factor=1 / 255, offset=False,
                               image_mean=0.5, image_std=0.5)


@pytest.fixture(scope="module")
def vivit(tmp_path_factory):
    """A tiny random ViViT classifier of the synthetic clips (8 frames of 64 px, tubelets 2 x 8 x 8: 257 tokens)."""
    folder = tmp_path_factory.mktemp("vivit") / "model"
    torch.manual_seed(0)
    names = synthetic_clips.CLASS_NAMES
    config = AtsVivitConfig(image_size=64, num_frames=8, tubelet_size=[2, 8, 8], hidden_size=32, num_hidden_layers=4,
                            num_attention_heads=4, intermediate_size=64, num_labels=len(names),
                            id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
                            ats_layers=[1, 2, 3], ats_max_tokens=0.5)
    AtsVivitForVideoClassification(config).save_pretrained(folder)
    clips_processor().save_pretrained(folder)
    return folder


def test_streamed_clips_equal_the_same_clips_in_memory(vivit):
    model = AtsVivitForVideoClassification.from_pretrained(vivit).eval()
    source = open_images(None, clips_processor(), model.config.id2label, num_images=10, videos=True)
    clips, labels = synthetic_clips.test_split(10)
    methods = [dense_method(), AtsMethod("ats", AtsSettings((1, 2, 3), 0.5))]
    streamed, _ = evaluate_methods(model, methods, source, batch_size=4)
    in_memory, _ = evaluate_methods(model, methods, tensor_images(synthetic_clips.to_pixel_values(clips), labels),
                                    batch_size=10)
    for a, b in zip(streamed, in_memory, strict=True):
        assert torch.equal(a.num_tokens, b.num_tokens) and torch.allclose(a.gmacs, b.gmacs)
    assert streamed[0].gmacs_mean == pytest.approx(dense_gmacs(model.config))  # per video, 257 tokens
    assert streamed[1].gmacs_mean < streamed[0].gmacs_mean and source.class_names == list(synthetic_clips.CLASS_NAMES)


def test_benchmark_of_a_video_classifier_on_the_embedded_clips(vivit, tmp_path, capsys):
    assert main(["benchmark", "--model", str(vivit), "--num-images", "12", "--batch-sizes", "--eval-batch-size", "5",
                 "--output-dir", str(tmp_path / "out")]) == 0
    assert "synthetic clips test split" in capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    rows = {row["method"]["name"]: row for row in result["methods"]}
    assert result["objective"] == "accuracy" and set(rows) >= {"dense", "ats", "top-k", "random"}
    assert any(name.startswith("tome") for name in rows)
    assert rows["ats"]["gmacs_mean"] < rows["dense"]["gmacs_mean"]


def test_onnxruntime_times_the_static_mode_of_a_video_classifier(vivit):
    """The benchmark's onnxruntime pass exports a video model with a dynamic batch (its example batch has two
    videos) and runs it."""
    pytest.importorskip("onnxruntime")
    from ats_hf.benchmark.runtimes import prepare_pass

    model = AtsVivitForVideoClassification.from_pretrained(vivit).eval()
    videos = synthetic_clips.to_pixel_values(synthetic_clips.test_split(3)[0])
    method = AtsMethod("ats", AtsSettings((1, 2, 3), 0.5, capacity=0.5))
    prepared = prepare_pass("onnxruntime", model, method, [videos[:1], videos])
    assert prepared.run([videos[:1], videos[1:]]) == 3 and prepared.preparation_seconds > 0


def test_tune_and_calibrate_on_a_dataset_of_frame_lists(vivit, tmp_path, capsys):
    clips, labels = synthetic_clips.generate("test", 16, seed=5)
    synthetic_clips.as_dataset(clips, labels).save_to_disk(tmp_path / "clips")
    tuned = tmp_path / "tuned"
    assert main(["tune", "--model", str(vivit), "--dataset", str(tmp_path / "clips"), "--gmacs-budget", "0.8",
                 "--no-speed", "--first-layers", "1", "--tome-r", "16", "--batch-size", "4", "--output",
                 str(tuned)]) == 0
    config = json.loads((tuned / "config.json").read_text())
    assert config["architectures"] == ["AtsVivitForVideoClassification"] and config["ats_layers"][0] == 1
    assert json.loads((tuned / "tune.json").read_text())["search"]["images"] == 16
    calibrated = tmp_path / "calibrated"
    assert main(["calibrate", "--model", str(tuned), "--dataset", str(tmp_path / "clips"), "--output",
                 str(calibrated)]) == 0
    saved = json.loads((calibrated / "calibration.json").read_text())
    assert saved["num_images"] == 16 and len(saved["settings"]["capacity"]) == len(config["ats_layers"])
    assert "ats-hf calibrate" in capsys.readouterr().out


def test_benchmark_and_calibrate_take_the_shipped_videomae(tmp_path, capsys):
    """A model without a CLS token through the same tools: the mean query samples, ToMe merges every token."""
    assert main(["benchmark", "--model", str(CLIPS_VIDEOMAE_DIR), "--num-images", "12", "--batch-sizes",
                 "--eval-batch-size", "5", "--output-dir", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    rows = {row["method"]["name"]: row for row in result["methods"]}
    assert set(rows) >= {"dense", "ats", "top-k", "random"} and any(name.startswith("tome") for name in rows)
    assert rows["ats"]["gmacs_mean"] < 0.5 * rows["dense"]["gmacs_mean"]
    assert rows["ats"]["tokens_per_layer"][0] == 256 and rows["ats"]["tokens_per_layer"][-1] < 64
    assert main(["calibrate", "--model", str(CLIPS_VIDEOMAE_DIR), "--num-images", "12", "--output",
                 str(tmp_path / "calibrated")]) == 0
    out = capsys.readouterr().out
    assert "special tokens included" in out and "ats_hf.export.export_folder(model, OUT, videos)" in out
    saved = json.loads((tmp_path / "calibrated" / "calibration.json").read_text())
    assert saved["settings"]["layers"] == [2, 3, 4] and all(count >= 1 for count in saved["settings"]["capacity"])


def test_the_video_token_map_has_a_row_of_frames_and_one_per_ats_layer(vivit):
    from ats_hf.visualize import video_token_map

    model = AtsVivitForVideoClassification.from_pretrained(vivit).eval()
    clip = list(synthetic_clips.test_split(1)[0][0].numpy())
    three = video_token_map(clip, model, clips_processor(), panel_size=64)
    with model.ats_settings_applied(layers=[2]):
        one = video_token_map(clip, model, clips_processor(), panel_size=64)
    row = (three.height - one.height) / 2  # two more ATS layers: two more rows of the same height
    assert row > 64 and min(three.width, one.width) > 4 * 64  # 4 tubelet time steps across
    with pytest.raises(ValueError, match="panel_size=8 must be >= 16"):
        video_token_map(clip, model, clips_processor(), panel_size=8)


@pytest.mark.parametrize("family, tubelets, special", [("vivit", dict(tubelet_size=[2, 8, 8]), 1),
                                                      ("videomae", dict(tubelet_size=2, patch_size=8), 0)])
def test_speed_mode_times_a_video_geometry(family, tubelets, special):
    from ats_hf.benchmark import run_speed_benchmark

    geometry = dict(family=family, image_size=32, num_frames=4, **tubelets, hidden_size=32, num_hidden_layers=4,
                    num_attention_heads=4, intermediate_size=64)
    result = run_speed_benchmark(geometry, batch_sizes=(2,), timing_images=2, repeats=1)
    names = [method.method.name for method in result.methods]
    assert names[0] == "dense" and any(name.startswith("tome") for name in names)
    assert result.data == "2 random videos" and result.methods[0].tokens_per_layer[0] == special + 2 * 4 * 4
    assert result.methods[1].gmacs_mean < result.dense_gmacs and result.methods[1].timings[2].images_per_second > 0
