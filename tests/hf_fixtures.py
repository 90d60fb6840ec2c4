"""Builders for the HuggingFace-workflow tests (plain functions, no fixtures): tiny checkpoints with labels, image
folders, and the example script."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from conftest import peaky_weights_, tiny_model, tiny_plain_vit
from PIL import Image
from transformers import VideoMAEImageProcessorPil, ViTImageProcessorPil, VivitImageProcessor

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "run_image_classification.py"
CLASS_COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 220)}


def tiny_image_processor() -> ViTImageProcessorPil:
    return ViTImageProcessorPil(size={"height": 32, "width": 32})


def tiny_video_processor() -> VivitImageProcessor:
    """ViViT's processor (frames resized and cropped to 32 px), which its video-classification pipeline uses."""
    return VivitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def tiny_videomae_processor() -> VideoMAEImageProcessorPil:
    """VideoMAE's processor (frames resized and cropped to 32 px; the PIL backend, which needs no torchvision)."""
    return VideoMAEImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def write_video(path: Path, seed: int, num_frames: int = 10, size: tuple[int, int] = (40, 36)) -> Path:
    """An MPEG-4 file of `num_frames` noise frames of `size` (width, height), written with PyAV (`av`)."""
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(num_frames):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def save_plain_vit(directory: Path, num_labels: int = 3) -> Path:
    """A tiny plain ViT classifier (old weight names, as on the Hub) and its image processor."""
    torch.manual_seed(0)
    model = peaky_weights_(tiny_plain_vit(num_labels=num_labels), scale=6.0)
    model.save_pretrained(directory, save_original_format=True)
    tiny_image_processor().save_pretrained(directory)
    return directory


def tiny_ats_classifier(**overrides):
    """`tiny_model` with the named labels of `CLASS_COLOURS` (a classifier of the image folders below)."""
    labels = list(CLASS_COLOURS)
    return tiny_model(
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        **overrides,
    )


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


def subprocess_env(**extra) -> dict:
    """Environment for child Python processes: offline, one torch thread each."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


# The start of a child-process script: from then on `import ats_hf` fails, whatever sys.path or the installed packages
# say, so that the script can only use the code saved with a checkpoint (trust_remote_code).
BLOCK_ATS_HF = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockAtsHf(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ats_hf" or name.startswith("ats_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)

    sys.meta_path.insert(0, BlockAtsHf())
    """
)


def run_without_ats_hf(script: str, *args, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run `BLOCK_ATS_HF` + `script` in a child Python with `args` (as `sys.argv[1:]`), transformers' remote-code
    modules cached under `cwd / "modules"`."""
    return subprocess.run(
        [sys.executable, "-c", BLOCK_ATS_HF + textwrap.dedent(script), *map(str, args)],
        input=stdin, cwd=cwd, env=subprocess_env(HF_MODULES_CACHE=str(Path(cwd) / "modules")),
        capture_output=True, text=True, timeout=240,
    )
