"""`ats-hf tune`: the candidate grid, the Pareto front, the choice, and a search on a tiny model."""

import json

import pytest
import torch
from conftest import tiny_model

from ats_hf import AtsSettings
from ats_hf.evaluation import Objective
from ats_hf.methods import AtsMethod
from ats_hf.tune import (
    Score,
    SpeedSpec,
    Target,
    candidate_grid,
    choose,
    format_report,
    pareto_front,
    tune,
)


def score(accuracy: float, gmacs: float, name: str = "x") -> Score:
    return Score(AtsMethod(f"{name} {accuracy} {gmacs}", AtsSettings((1,))), total=int(accuracy * 10), images=1000,
                 gmacs=gmacs)


def test_grid_covers_contiguous_ranges_and_skips_top_k_at_all():
    grid = candidate_grid(4, max_tokens=(None, 0.5), samplers=("inverse_transform", "top_k"), merges=(None,))
    ranges = {c.layers for c in grid}
    assert ranges == {(1,), (1, 2), (1, 2, 3), (2,), (2, 3), (3,)}
    assert len(grid) == 6 * 3  # per range: ATS at K all, ATS at 0.5, top-K at 0.5
    assert not any(c.sampler == "top_k" and c.max_tokens is None for c in grid)
    assert {c.layers[0] for c in candidate_grid(6, first_layers=(4,))} == {4}


def test_front_keeps_only_undominated_scores():
    scores = [score(90, 1.0), score(95, 2.0), score(93, 2.5), score(96, 3.0), score(80, 0.5)]
    assert [(s.value, s.gmacs) for s in pareto_front(scores)] == [(80, 0.5), (90, 1.0), (95, 2.0), (96, 3.0)]


def test_choice_meets_the_target():
    front = pareto_front([score(80, 0.5), score(90, 1.0), score(95, 2.0), score(96, 3.0)])
    dense = score(96.5, 4.0)
    assert choose(front, Target(max_gmacs_fraction=0.5), dense, 4.0).gmacs == 2.0
    assert choose(front, Target(max_accuracy_drop=2.0), dense, 4.0).gmacs == 2.0
    assert choose(front, Target(max_accuracy_drop=0.1), dense, 4.0) is None
    for bad in (dict(), dict(max_gmacs_fraction=0.5, max_accuracy_drop=1.0), dict(max_gmacs_fraction=1.5),
                dict(max_accuracy_drop=-1.0), dict(min_speedup=0.0), dict(min_speedup=1.2, max_accuracy_drop=1.0)):
        with pytest.raises(ValueError):
            Target(**bad)


def test_a_speed_up_target_picks_the_most_accurate_point_measured_fast_enough():
    front = pareto_front([score(80, 0.5, "a"), score(90, 1.0, "b"), score(95, 2.0, "c"), score(96, 3.0, "d")])
    dense = score(96.5, 4.0)
    speedups = {front[0].label: 2.5, front[1].label: 1.4, front[2].label: 1.6, front[3].label: 1.1}
    # Measured speed need not follow GMACs: "c" (more GMACs than "b") is faster and more accurate.
    assert choose(front, Target(min_speedup=1.5), dense, 4.0, speedups) is front[2]
    assert choose(front, Target(min_speedup=3.0), dense, 4.0, speedups) is None
    assert choose(front, Target(min_speedup=1.5), dense, 4.0, {}) is None, "an unmeasured point never qualifies"


@pytest.mark.parametrize(
    ("bad", "message"),
    [(dict(runtime="tensorrt"), "runtime='tensorrt' is unknown"), (dict(batch_size=0), "batch_size=0 must be >= 1"),
     (dict(capacity_quantile=1.5), r"capacity_quantile=1.5 must be in \(0, 1\]")],
)
def test_speed_spec_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        SpeedSpec(**bad)


@pytest.mark.parametrize("runtime", ["eager", "compile"])
def test_tune_times_the_front_and_meets_a_speed_up_target(images, runtime):
    model = tiny_model(ats_max_tokens=[0.5, 20, None])
    pixel_values = torch.cat([images] * 2)  # 6 calibration, 6 held out
    with torch.no_grad():
        labels = model(pixel_values).logits.argmax(-1)
    candidates = candidate_grid(4, first_layers=(1, 3), max_tokens=(0.25,), merges=(None,))
    speed = SpeedSpec(runtime, batch_size=2, images=4, repeats=1)
    with pytest.raises(ValueError, match="a speed-up target needs a SpeedSpec"):
        tune(model, pixel_values, labels, Target(min_speedup=0.01), candidates, batch_size=3)
    result = tune(model, pixel_values, labels, Target(min_speedup=0.01), candidates, batch_size=3,
                  tome_r=(4,), speed=speed)
    assert set(result.speedups) == {s.label for s in result.front} | {"ToMe r=4"}
    assert all(value > 0 for value in result.speedups.values())
    assert result.chosen is not None and result.chosen in result.front
    assert result.chosen.value == max(s.value for s in result.front)
    report = format_report(result)
    assert f"{runtime}, {'static' if runtime == 'compile' else 'adaptive'} mode, batch 2" in report
    assert f"{result.speedups[result.chosen.label]:8.2f}x" in report
    assert json.loads(json.dumps(result.to_dict()))["speed"]["speedups"] == result.speedups


def test_tune_on_a_tiny_model(images):
    model = tiny_model(ats_max_tokens=[0.5, 20, None])
    pixel_values = torch.cat([images] * 4)  # 24 images: 12 calibration, 12 held out
    pixel_values = pixel_values + 0.3 * torch.randn(pixel_values.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model.ats_settings
        model.set_ats(layers=[], max_tokens=None)
        labels = model(pixel_values).logits.argmax(-1)  # the dense model is right by construction
        model.set_ats(**before)
    candidates = candidate_grid(4, max_tokens=(None, 0.25), merges=(None, 0.8))
    result = tune(model, pixel_values, labels, Target(max_gmacs_fraction=0.9), candidates, batch_size=5,
                  tome_r=(4,))
    assert model.ats_settings == before, "the model's own settings come back"
    assert result.dense_calibration.value == result.dense_held_out.value == 100.0
    assert result.dense_calibration.images == result.dense_held_out.images == 12
    assert result.front == pareto_front(result.calibration)
    assert result.chosen is not None and result.chosen.gmacs <= 0.9 * result.dense_gmacs
    # The prefix cache gives what the model gives when it runs from the pixels.
    chosen = result.chosen
    with torch.no_grad(), model.ats_settings_applied(chosen.method.settings):
        direct = model(pixel_values[12:]).logits.argmax(-1)
    assert result.held_out[chosen.label].total == int((direct == labels[12:]).sum())
    assert {entry["calibration"]["setting"] for entry in result.to_dict()["front"]} == {s.label for s in result.front}
    assert json.dumps(result.to_dict())  # JSON-serialisable


def test_command_on_the_embedded_model(tmp_path, capsys):
    from ats_hf_cli import main

    code = main(["tune", "--num-images", "40", "--first-layers", "4", "--tome-r", "8", "--gmacs-budget", "0.95",
                 "--output", str(tmp_path / "tuned")])
    report = capsys.readouterr().out
    assert code == 0 and "chosen (*): layers 4" in report and "ToMe r=8" in report
    assert "speed-up: measured throughput / dense's (eager, adaptive mode, batch 1" in report
    written = {path.name for path in (tmp_path / "tuned").iterdir()}
    assert {"tune.json", "tune.png", "config.json", "model.safetensors", "README.md"} <= written
    saved = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert saved["ats_layers"][0] == 4


def test_command_rejects_a_first_layer_beyond_the_model(capsys):
    from ats_hf_cli import main

    assert main(["tune", "--num-images", "8", "--first-layers", "9"]) == 2
    assert "--first-layers 9 is outside 0..5" in capsys.readouterr().err
    assert main(["tune", "--num-images", "8", "--min-speedup", "1.2", "--no-speed"]) == 2
    assert "--min-speedup needs the front timed" in capsys.readouterr().err
    assert main(["tune", "--min-speedup", "0"]) == 2
    assert "argument --min-speedup: '0' is not a number > 0" in capsys.readouterr().err


def test_command_on_a_user_checkpoint_and_image_folder(tmp_path, capsys):
    from hf_fixtures import tiny_ats_classifier, tiny_image_processor, write_image_folder

    from ats_hf.hub.checkpoint import save_ats_checkpoint
    from ats_hf_cli import main

    save_ats_checkpoint(tiny_ats_classifier(), tmp_path / "model", tiny_image_processor(), model_id="tiny")
    folder = write_image_folder(tmp_path / "images", per_class=6)
    code = main(["tune", "--model", str(tmp_path / "model"), "--dataset", str(folder), "--first-layers", "2",
                 "--tome-r", "2", "--max-accuracy-drop", "100", "--no-speed"])
    report = capsys.readouterr().out
    assert code == 0, report
    assert "held out: 9 images" in report and "chosen (*): layers 2" in report


def test_tune_refuses_what_is_no_classifier(images):
    from ats_hf import AtsDinov2Config, AtsDinov2Model

    config = AtsDinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    model = AtsDinov2Model(config).eval()
    with pytest.raises(ValueError, match=r"AtsDinov2Model has no classifier head"):
        tune(model, torch.cat([images] * 2), torch.zeros(12, dtype=torch.long), Target(max_gmacs_fraction=0.5),
             objective=Objective("accuracy"))
