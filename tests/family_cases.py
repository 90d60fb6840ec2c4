"""Tiny upstream checkpoints of every image-classifier family in the registry, for the family-contract suite: each
case builds transformers' own classifier (seeded; attention made peaky so that ATS drops many tokens, and special
tokens distinct, as in a trained model) and saves it with an image processor. A registry family with no case here
fails `test_every_classifier_family_has_a_contract_case`."""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from conftest import peaky_weights_
from hf_fixtures import tiny_image_processor
from transformers import (
    CLIPConfig,
    CLIPForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

GEOMETRY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=4, num_labels=5)
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=64)


@dataclass(frozen=True)
class FamilyCase:
    """One upstream classifier of a registry family: `family` is its name in `ats_hf.families`, `num_special` the
    tokens before the patches (CLS first), `build` makes the upstream model."""

    name: str
    family: str
    num_special: int
    build: object = field(repr=False)

    @property
    def num_tokens(self) -> int:
        return 64 + self.num_special

    def upstream(self):
        torch.manual_seed(0)
        model = self.build().eval()
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith(("cls_token", "distillation_token", "register_tokens", "class_embedding")):
                    parameter.copy_(torch.randn(parameter.shape, generator=generator))
        return peaky_weights_(model)

    def save(self, directory: Path) -> Path:
        """The upstream classifier and an image processor, saved as on the Hub."""
        self.upstream().save_pretrained(directory)
        tiny_image_processor().save_pretrained(directory)
        return directory


CASES = [
    FamilyCase("vit", "vit", 1, lambda: ViTForImageClassification(ViTConfig(intermediate_size=64, **GEOMETRY))),
    FamilyCase("deit-distilled", "deit", 2,
               lambda: DeiTForImageClassificationWithTeacher(DeiTConfig(intermediate_size=64, **GEOMETRY))),
    FamilyCase("dinov2", "dinov2", 1, lambda: Dinov2ForImageClassification(Dinov2Config(mlp_ratio=2, **GEOMETRY))),
    FamilyCase("dinov2-registers", "dinov2", 3, lambda: Dinov2WithRegistersForImageClassification(
        Dinov2WithRegistersConfig(mlp_ratio=2, num_register_tokens=2, **GEOMETRY))),
    FamilyCase("clip", "clip", 1, lambda: CLIPForImageClassification(CLIPConfig(
        vision_config={**GEOMETRY, "intermediate_size": 64}, text_config=TEXT, num_labels=GEOMETRY["num_labels"]))),
]
