"""Data the tools cannot use, reported in one line: a corrupt image (also from a worker process), a column of the
wrong kind, a split that a single dataset does not have; and a label-free objective on classes that are not the
model's, which needs no matching."""

import numpy as np
import pytest
from conftest import image_folder
from PIL import Image
from transformers import AutoImageProcessor

from ats_hf.data import DEFAULT_MODEL_DIR, synthetic_clips
from ats_hf.evaluation import UnreadableImageError, open_images
from ats_hf_cli import main


@pytest.fixture
def processor():
    return AutoImageProcessor.from_pretrained(DEFAULT_MODEL_DIR)


@pytest.fixture
def corrupt_folder(tmp_path):
    """A flat (unlabelled) folder of three PNGs and a file named .png that is not an image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (30 + i, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "bad.png").write_bytes(b"not a png")
    return folder


@pytest.fixture
def saved_clips(tmp_path):
    clips, labels = synthetic_clips.generate("test", 4, seed=5)
    synthetic_clips.as_dataset(clips, labels).save_to_disk(str(tmp_path / "clips"))
    return tmp_path / "clips"


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_image_is_named_in_one_line_whatever_the_workers(processor, corrupt_folder, workers):
    source = open_images(corrupt_folder, processor)
    with pytest.raises(UnreadableImageError, match=r"cannot decode image\(s\) among numbers") as raised:
        list(source.batches(2, workers))
    message = str(raised.value)
    assert "\n" not in message and "Traceback" not in message
    assert f"cannot identify image file '{corrupt_folder / 'bad.png'}'" in message


def test_the_command_line_reports_a_corrupt_image_in_one_line(corrupt_folder, tmp_path, capsys):
    output = tmp_path / "calibrated"
    assert main(["calibrate", "--dataset", str(corrupt_folder), "--batch-size", "2", "--output", str(output)]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    last_line = error.strip().splitlines()[-1]
    assert last_line.startswith("ats-hf calibrate: error: ") and last_line.endswith("bad.png'")
    assert not output.exists()


def test_columns_of_the_wrong_kind_are_refused(processor, saved_clips, tmp_path):
    labelled = image_folder(tmp_path / "animals", ["cat", "dog"], per_class=2, size=32)
    with pytest.raises(ValueError, match=r"column 'video' holds lists of images, not images \(an Image feature\)"):
        open_images(saved_clips, processor, image_column="video")
    with pytest.raises(ValueError, match=r"column 'image' holds images, not frame lists \(a Sequence of Image\)"):
        open_images(labelled, processor, image_column="image", videos=True)
    with pytest.raises(ValueError, match=r"column 'image' holds images, not class ids \(a ClassLabel or integers\)"):
        open_images(labelled, processor, label_column="image")
    with pytest.raises(ValueError, match=r"column 'video' holds lists of images, not class ids"):
        open_images(saved_clips, processor, label_column="video", videos=True)


def test_a_split_of_a_dataset_without_splits_is_refused(processor, saved_clips):
    with pytest.raises(ValueError, match=r"split 'validation' is not in .*: it holds one dataset with no splits"):
        open_images(saved_clips, processor, split="validation", videos=True)
    assert len(open_images(saved_clips, processor, videos=True)) == 4


def test_a_label_free_objective_takes_classes_that_are_not_the_models(tmp_path, capsys):
    animals = str(image_folder(tmp_path / "animals", ["cat", "dog"], per_class=3, size=32))
    command = ["calibrate", "--dataset", animals, "--num-images", "6", "--batch-size", "3"]
    assert main([*command, "--output", str(tmp_path / "by-accuracy")]) == 2
    assert "the dataset's classes do not match the model's labels" in capsys.readouterr().err
    assert main([*command, "--objective", "agreement", "--output", str(tmp_path / "by-agreement")]) == 0
    assert (tmp_path / "by-agreement" / "config.json").exists()
