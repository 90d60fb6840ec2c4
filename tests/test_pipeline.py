"""pipeline("image-classification") on ATS checkpoints: from a directory and from Python objects."""

import pytest
import torch
from hf_fixtures import random_image, tiny_ats_classifier, tiny_image_processor
from transformers import pipeline

from ats_hf import AtsViTForImageClassification
from ats_hf.hub.checkpoint import save_ats_checkpoint

LABELS = {"cat", "dog", "fox"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pipeline") / "tiny-ats"
    save_ats_checkpoint(tiny_ats_classifier(), directory, tiny_image_processor())
    return directory


@pytest.fixture
def images():
    """Five RGB images of assorted sizes (the processor resizes them to 32 x 32)."""
    return [random_image(seed, size=(24 + 8 * seed, 40)) for seed in range(5)]


def expected_scores(model, image) -> dict[str, float]:
    pixel_values = tiny_image_processor()(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probabilities = model(pixel_values=pixel_values.to(model.device)).logits.softmax(dim=-1)[0]
    return {model.config.id2label[index]: float(p) for index, p in enumerate(probabilities)}


def test_pipeline_from_a_checkpoint_directory(checkpoint, images, tmp_path):
    classifier = pipeline("image-classification", model=str(checkpoint))
    assert isinstance(classifier.model, AtsViTForImageClassification)  # ats_hf's own code, no remote code
    assert type(classifier.image_processor).__name__.startswith("ViTImageProcessor")

    path = tmp_path / "image.png"
    images[0].save(path)
    result = classifier(str(path), top_k=2)
    assert len(result) == 2 and {entry["label"] for entry in result} <= LABELS
    assert result[0]["score"] >= result[1]["score"]
    expected = expected_scores(classifier.model, images[0])
    assert result[0]["label"] == max(expected, key=expected.get)
    for entry in result:
        assert entry["score"] == pytest.approx(expected[entry["label"]], abs=1e-6)
    assert {entry["label"] for entry in classifier(images[0], top_k=10)} == LABELS  # top_k is capped at the labels


def test_batched_pipeline_matches_one_image_at_a_time(checkpoint, images):
    classifier = pipeline("image-classification", model=str(checkpoint))
    pixel_values = tiny_image_processor()(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        kept = classifier.model(pixel_values=pixel_values.to(classifier.model.device)).num_tokens[:, -1]
    assert len(set(kept.tolist())) > 1, "the images should keep different numbers of tokens"

    batched = classifier(images, batch_size=3, top_k=3)
    for image, result in zip(images, batched, strict=True):
        alone = classifier(image, top_k=3)
        assert [entry["label"] for entry in result] == [entry["label"] for entry in alone]
        assert [entry["score"] for entry in result] == pytest.approx([entry["score"] for entry in alone], abs=1e-6)


@pytest.mark.parametrize("ats_layers", [[], [2], [1, 2, 3]], ids=["no-ats", "one-layer", "three-layers"])
@pytest.mark.parametrize("batch_size", [2, 4, 7])
def test_batched_pipeline_for_any_batch_size_and_layer_count(ats_layers, batch_size):
    """Batch sizes below, equal to, above and far above the number of ATS layers, with a ragged last batch."""
    classifier = pipeline(
        "image-classification", model=tiny_ats_classifier(ats_layers=ats_layers), image_processor=tiny_image_processor()
    )
    many = [random_image(seed, size=(20 + 4 * seed, 40)) for seed in range(9)]
    batched = classifier(many, batch_size=batch_size, top_k=3)
    assert len(batched) == len(many)
    for image, result in zip(many, batched, strict=True):
        alone = classifier(image, top_k=3)
        assert [entry["label"] for entry in result] == [entry["label"] for entry in alone]
        assert [entry["score"] for entry in result] == pytest.approx([entry["score"] for entry in alone], abs=1e-6)


def test_pipeline_from_python_objects(checkpoint, images):
    model = tiny_ats_classifier()
    classifier = pipeline("image-classification", model=model, image_processor=tiny_image_processor())
    from_directory = pipeline("image-classification", model=str(checkpoint))
    for image in images[:2]:
        result, expected = classifier(image, top_k=3), from_directory(image, top_k=3)
        assert [entry["label"] for entry in result] == [entry["label"] for entry in expected]
        assert [entry["score"] for entry in result] == pytest.approx([entry["score"] for entry in expected], abs=1e-6)
