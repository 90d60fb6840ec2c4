"""Shared builders for the HuggingFace-workflow tests: tiny checkpoints, image folders and the example script."""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import peaky_weights_, tiny_config
from PIL import Image
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from ats_hf import AtsViTForImageClassification

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "run_image_classification.py"
CLASS_COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 220)}


def tiny_image_processor() -> ViTImageProcessorPil:
    return ViTImageProcessorPil(size={"height": 32, "width": 32})


def save_plain_vit(directory: Path, num_labels: int = 3) -> Path:
    """A tiny plain ViT classifier (old weight names, as on the Hub) and its image processor."""
    fields = ViTConfig().to_dict()
    config = ViTConfig(**{k: v for k, v in tiny_config().to_dict().items() if k in fields})
    config.num_labels = num_labels
    torch.manual_seed(0)
    model = peaky_weights_(ViTForImageClassification(config), scale=6.0)
    model.save_pretrained(directory, save_original_format=True)
    tiny_image_processor().save_pretrained(directory)
    return directory


def tiny_ats_classifier(**overrides) -> AtsViTForImageClassification:
    """A tiny ATS classifier with named labels that drops a different number of tokens per image."""
    labels = list(CLASS_COLOURS)
    config = tiny_config(
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        **overrides,
    )
    torch.manual_seed(0)
    return peaky_weights_(AtsViTForImageClassification(config)).eval()


def random_image(seed: int, size: tuple[int, int] = (40, 36), colour: tuple[int, int, int] | None = None):
    """A PIL RGB image of `size` (width, height): noise, around `colour` if given."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3))
    if colour is not None:
        pixels = np.clip(np.asarray(colour) + (pixels - 128) // 4, 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def write_image_folder(directory: Path, per_class: int, seed: int = 0) -> Path:
    """`directory/<class>/<n>.png`: one noisy colour per class, so a few training steps can learn it."""
    for index, (label, colour) in enumerate(CLASS_COLOURS.items()):
        (directory / label).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            random_image(seed + 1000 * index + n, colour=colour).save(directory / label / f"{n}.png")
    return directory


def load_example():
    """examples/run_image_classification.py as a module."""
    spec = importlib.util.spec_from_file_location("run_image_classification", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models train ~100x slower when torch's threads fight other processes for 2 cores; use one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def subprocess_env(**extra) -> dict:
    """Environment for child Python processes: offline, one torch thread each."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}
