import contextlib
import importlib.util
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from ats_hf import AtsViTConfig, AtsViTForImageClassification

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    """scripts/<name>.py imported as a module (the scripts are files, not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=32,
    patch_size=4,
    num_labels=5,
)


def tiny_config(**overrides) -> AtsViTConfig:
    """A 4-layer ViT on 32 px images with 4 px patches: 65 tokens, ATS in layers 1..3 by default."""
    return AtsViTConfig(**{**TINY, **overrides})


def peaky_weights_(model: torch.nn.Module, scale: float = 12.0) -> torch.nn.Module:
    """Make attention peaky so that ATS drops many tokens with random weights (a stand-in for a trained model)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", ".query.weight", ".key.weight")):  # VideoMAE's names
                parameter.mul_(scale)
    return model


def tiny_model(attn_implementation: str = "sdpa", peaky: bool = True, **overrides) -> AtsViTForImageClassification:
    """A tiny ATS classifier in eval mode (`tiny_config(**overrides)`), seeded; peaky attention by default, so that
    images keep different numbers of tokens."""
    torch.manual_seed(0)
    model = AtsViTForImageClassification(tiny_config(**overrides)).eval()
    model.set_attn_implementation(attn_implementation)
    return peaky_weights_(model) if peaky else model


def plain_vit_config(**overrides) -> ViTConfig:
    """The ViTConfig of `tiny_config(**overrides)`'s geometry, for plain ViT models."""
    vit_fields = ViTConfig().to_dict()
    return ViTConfig(**{k: v for k, v in tiny_config(**overrides).to_dict().items() if k in vit_fields})


def tiny_plain_vit(**overrides) -> ViTForImageClassification:
    """A plain transformers ViT classifier of the tiny geometry, in eval mode."""
    return ViTForImageClassification(plain_vit_config(**overrides)).eval()


@contextlib.contextmanager
def counting_host_reads(monkeypatch):
    """Inside the block, record the name of every tensor method call that reads data back to the host."""
    reads = []
    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    try:
        yield reads
    finally:
        monkeypatch.undo()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test runs with one torch thread: tiny models train ~100x slower when torch's threads fight other
    processes for 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def images():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def image_folder(root, classes, per_class=3, size=40, seed=0):
    """Random RGB PNGs of `size` px under root/<class>/ for each class name (an image folder dataset)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root
