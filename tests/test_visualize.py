"""Token maps: the picture of the patches each ATS layer keeps."""

import numpy as np
import pytest
import torch
from conftest import peaky_weights_, tiny_config
from PIL import Image
from transformers import ViTImageProcessorPil

from ats_hf import AtsViTForImageClassification
from ats_hf.benchmark import Method
from ats_hf.cli import main
from ats_hf.visualize import GAP, kept_patch_grids, token_map


@pytest.fixture
def model():
    return peaky_weights_(AtsViTForImageClassification(tiny_config()).eval())


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
    for grid, count in zip(grids, output.num_tokens[0, 1:].tolist()):
        assert grid.sum().item() == count - 1
    assert (grids[1] <= grids[0]).all(), "a later layer keeps a subset of an earlier one"


def test_token_map_size_and_content(model, processor, picture):
    rendered = token_map(picture, model, processor, panel_size=64, columns=3)
    title_height = (rendered.height - 3 * GAP) // 2 - 64  # 4 panels in 2 rows of 3
    assert rendered.size == (3 * (64 + GAP) + GAP, 2 * (64 + title_height + GAP) + GAP)
    pixels = np.asarray(rendered).astype(float)
    assert pixels.std() > 10, "the picture is not blank"

    def panel(index):
        left, top = GAP + (index % 3) * (64 + GAP), GAP + (index // 3) * (64 + title_height + GAP) + title_height
        return pixels[top : top + 64, left : left + 64]

    first_layer = panel(1)
    assert first_layer.mean() < panel(0).mean(), "dropped patches are dimmed"
    assert np.isclose(first_layer, panel(0)).all(axis=-1).mean() > 0.05, "kept patches show the image unchanged"


def test_token_map_uses_the_given_settings(model, processor, picture):
    one_layer = token_map(picture, model, processor, Method("ats", (2,), 10), panel_size=32, columns=5)
    three_layers = token_map(picture, model, processor, panel_size=32, columns=5)
    assert one_layer.width == 2 * (32 + GAP) + GAP and three_layers.width == 4 * (32 + GAP) + GAP
    with pytest.raises(ValueError, match="panel_size=4"):
        token_map(picture, model, processor, panel_size=4)


def test_visualize_command_with_the_embedded_model(tmp_path, picture, capsys):
    image_path, output_path = tmp_path / "digit.png", tmp_path / "map.png"
    picture.save(image_path)
    assert main(["visualize", str(image_path), "--output", str(output_path), "--panel-size", "96"]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(output_path) as written:
        assert written.width > 3 * 96 and written.height > 96
