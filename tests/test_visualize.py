"""Token maps: the picture of the patches each ATS layer keeps."""

import numpy as np
import pytest
import torch
from conftest import tiny_model
from PIL import Image
from transformers import ViTImageProcessorPil

from ats_hf.hub import checkpoint
from ats_hf.visualize import GAP, OUTLINE, kept_patch_grids, token_map
from ats_hf_cli import main


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def processor():
    return ViTImageProcessorPil(size={"height": 32, "width": 32})


@pytest.fixture
def picture():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))


def test_kept_patch_grids_match_the_token_counts(model):
    with torch.no_grad():
        output = model(torch.randn(1, 3, 32, 32))
    grids = kept_patch_grids(output.sampled_token_indices, (8, 8))
    assert len(grids) == 3 and grids[0].shape == (8, 8)
    for grid, count in zip(grids, output.num_tokens[0, 1:].tolist(), strict=True):
        assert grid.sum().item() == count - 1
    assert (grids[1] <= grids[0]).all(), "a later layer keeps a subset of an earlier one"


def layout(rendered: Image.Image, panel: tuple[int, int], columns: int, rows: int) -> tuple[int, int]:
    """(title height, header height) of a token map, from its size."""
    free = rendered.height - GAP - rows * (panel[1] + GAP)  # = header + rows * title; header = title + GAP // 2
    title = (free - GAP // 2) // (rows + 1)
    return title, free - rows * title


def test_token_map_keeps_the_aspect_ratio_and_shows_the_prediction(model, processor, picture):
    rendered = token_map(picture, model, processor, panel_size=128, columns=3)  # 4 panels in 2 rows of 3
    panel = (round(128 * 40 / 48), 128)  # the 40 x 48 image, its longer side 128 px
    assert rendered.width >= 3 * (panel[0] + GAP) + GAP  # wider when the header line is
    title, header = layout(rendered, panel, 3, 2)
    assert header == title + GAP // 2 and 10 <= title <= 30
    pixels = np.asarray(rendered).astype(int)
    assert pixels[GAP : GAP + title].min() < 100, "the header (prediction, settings) is drawn"

    def panel_pixels(index):
        left = GAP + (index % 3) * (panel[0] + GAP)
        top = GAP + header + (index // 3) * (panel[1] + title + GAP) + title
        return pixels[top : top + panel[1], left : left + panel[0]]

    first = pixels[GAP + header + title : GAP + header + title + panel[1]]
    assert (first[:, GAP + panel[0] : 2 * GAP + panel[0]] == 255).all(), "a gap follows the 107 px wide panel"
    assert (first[:, GAP + panel[0] - 1] != 255).any(), "the panel is 107 px wide, not square"
    unchanged = (panel_pixels(1) == panel_pixels(0)).all(axis=-1)
    assert 0.05 < unchanged.mean() < 0.95, "kept patches show the image as it is, dropped ones are veiled"
    assert (panel_pixels(1) == OUTLINE).all(axis=-1).any(), "kept patches are outlined"


def test_dropped_patches_stand_out_on_a_black_image(model, processor):
    black = Image.new("RGB", (32, 32))
    with model.ats_settings_applied(max_tokens=10):
        rendered = np.asarray(token_map(black, model, processor, panel_size=96, columns=5)).astype(int)
    title, header = layout(Image.fromarray(rendered.astype(np.uint8)), (96, 96), 4, 1)
    top = GAP + header + title
    kept_layer = rendered[top : top + 96, GAP + 96 + GAP : GAP + 2 * 96 + GAP]
    dark = (kept_layer < 40).all(axis=-1).mean()
    light = (kept_layer > 120).all(axis=-1).mean()
    assert dark > 0.02 and light > 0.5, "on black, kept patches stay black and dropped ones are clearly lighter"


def test_token_map_uses_the_model_settings_in_force(model, processor, picture):
    with model.ats_settings_applied(layers=[2], max_tokens=10):
        one_layer = token_map(picture, model, processor, panel_size=128, columns=5)
    three_layers = token_map(picture, model, processor, panel_size=128, columns=5)
    panel_width = round(128 * 40 / 48)
    assert one_layer.width < three_layers.width and three_layers.width >= 4 * (panel_width + GAP) + GAP
    assert one_layer.height == three_layers.height
    assert model.ats_settings.layers == (1, 2, 3)
    with pytest.raises(ValueError, match="panel_size=4"):
        token_map(picture, model, processor, panel_size=4)


def test_visualize_command_with_the_embedded_model(tmp_path, picture, capsys):
    image_path, output_path = tmp_path / "digit.png", tmp_path / "map.png"
    picture.save(image_path)
    assert main(["visualize", str(image_path), "--output", str(output_path), "--panel-size", "96",
                 "--ats-layers", "2", "4", "5", "--ats-max-tokens", "0.5"]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(output_path) as written:
        assert written.width > 3 * 80 and written.height > 96


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--panel-size", "8"], "--panel-size: 8 is not allowed: it must be an integer >= 16"),
        (["--columns", "0"], "--columns: 0 is not allowed"),
        (["--ats-layers", "5-3"], "reversed"),
    ],
)
def test_visualize_rejects_bad_options_in_one_line(tmp_path, picture, capsys, argv, message):
    picture.save(tmp_path / "digit.png")
    assert main(["visualize", str(tmp_path / "digit.png"), *argv]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("ats-hf visualize: error: ") and message in error


def test_visualize_checks_the_image_before_loading_a_model(tmp_path, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(checkpoint, "load_classifier_and_processor", no_loading)
    assert main(["visualize", str(tmp_path / "missing.png")]) == 2
    missing = str(tmp_path / "missing.png")
    assert capsys.readouterr().err == f"ats-hf visualize: error: image file {missing!r} does not exist\n"
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["visualize", str(tmp_path / "notes.png")]) == 2
    assert capsys.readouterr().err.startswith("ats-hf visualize: error: cannot read image")
    # The output is checked before the model too: a folder that does not exist, a name that is not a PNG.
    for output, message in ((tmp_path / "no-folder" / "map.png", "does not exist"), (tmp_path / "map.txt", ".png")):
        assert main(["visualize", str(tmp_path / "notes.png"), "--output", str(output)]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"ats-hf visualize: error: --output {str(output)!r}") and message in error
