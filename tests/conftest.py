import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest
import torch

from ats_hf import AtsViTConfig

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
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                parameter.mul_(scale)
    return model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def images():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
