"""The embedded default model and its reproducible data (ats_hf.data.synthetic_digits)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoImageProcessor

from ats_hf import AtsViTForImageClassification
from ats_hf.benchmark import default_ats_method, evaluate_method
from ats_hf.data import DEFAULT_MODEL_DIR
from ats_hf.data import synthetic_digits as digits
from ats_hf.methods import dense_method


def test_generator_is_a_pure_function_of_its_arguments():
    first, first_labels = digits.generate("test", 16, seed=5)
    again, again_labels = digits.generate("test", 16, seed=5)
    other, _ = digits.generate("test", 16, seed=6)
    assert first.shape == (16, 64, 64, 3) and first.dtype == torch.uint8 and first_labels.shape == (16,)
    assert torch.equal(first, again) and torch.equal(first_labels, again_labels)
    assert not torch.equal(first, other)
    prefix, prefix_labels = digits.test_split(10)
    full, full_labels = digits.test_split()
    assert len(full) == digits.TEST_SIZE and torch.equal(prefix, full[:10])
    assert torch.equal(prefix_labels, full_labels[:10])
    assert torch.bincount(full_labels, minlength=10).min() > 150, "every class is in the test split"


def test_images_are_mostly_background():
    images, _ = digits.test_split(200)
    patches = images.float().unfold(1, 8, 8).unfold(2, 8, 8)  # (N, 8, 8, 3, 8, 8)
    background = images.float().median(dim=1).values.median(dim=1).values  # (N, 3)
    ink = (patches - background[:, None, None, :, None, None]).abs().amax(dim=(3, 4, 5)) > 100
    assert 0.05 < ink.float().mean() < 0.4, "a digit covers a minority of the 64 patches"


def test_train_and_test_digits_are_disjoint():
    train, _ = digits.source_digits("train")
    test, _ = digits.source_digits("test")
    assert len(train) + len(test) == 1797
    flat_train = {tuple(image.flatten().tolist()) for image in train}
    assert sum(tuple(image.flatten().tolist()) in flat_train for image in test) <= 5  # exact duplicates exist in UCI


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(split="validation", num_images=1, seed=0), "split='validation'"),
        (dict(split="test", num_images=0, seed=0), "num_images=0"),
        (dict(split="test", num_images=1, seed=0, digit_size=(2.0, 8.0)), "digit_size"),
        (dict(split="test", num_images=1, seed=0, spread=1.5), "spread=1.5"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        digits.generate(**kwargs)


def test_as_dataset_has_image_and_class_label_columns():
    images, labels = digits.generate("test", 4, seed=1)
    dataset = digits.as_dataset(images, labels)
    assert dataset.features["label"].names == [str(i) for i in range(10)]
    assert dataset[0]["image"].size == (64, 64) and dataset[0]["label"] == labels[0].item()


def test_shipped_files_and_settings():
    files = {path.name: path.stat().st_size for path in DEFAULT_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(files)
    assert files["model.safetensors"] <= 10 * 2**20
    model = AtsViTForImageClassification.from_pretrained(DEFAULT_MODEL_DIR)
    assert model.config.image_size == 64 and model.config.patch_size == 8 and model.config.num_labels == 10
    assert model.config.ats_layers and model.config.ats_sampler == "inverse_transform"


def test_shipped_settings_are_the_training_scripts():
    """config.json carries SHIPPED_ATS_* of scripts/train_default_model.py: the `ats-hf tune --gmacs-budget 0.5`
    choice written there (docs/tuning.md), so a retrained model ships the same settings."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_default_model.py"
    spec = importlib.util.spec_from_file_location("train_default_model", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    shipped = (module.SHIPPED_ATS_LAYERS, module.SHIPPED_ATS_MAX_TOKENS, "inverse_transform")
    assert (config["ats_layers"], config["ats_max_tokens"], config["ats_sampler"]) == shipped
    assert "ats-hf tune --gmacs-budget 0.5" in script.read_text()


def test_shipped_model_accuracy_on_a_slice_of_the_test_split():
    model = AtsViTForImageClassification.from_pretrained(DEFAULT_MODEL_DIR).eval()
    processor = AutoImageProcessor.from_pretrained(DEFAULT_MODEL_DIR)
    images, labels = digits.test_split(400)
    pixel_values = processor(images=list(images.numpy()), return_tensors="pt")["pixel_values"]
    assert torch.equal(pixel_values, (images.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5)
    dense = evaluate_method(model, dense_method(), pixel_values, labels, batch_size=200)
    ats = evaluate_method(model, default_ats_method(model.config), pixel_values, labels, batch_size=200)
    assert dense.score >= 95.0
    assert ats.score >= dense.score - 1.5
    assert ats.gmacs_mean <= 0.7 * dense.gmacs_mean
