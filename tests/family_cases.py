"""Tiny upstream checkpoints of every classifier family in the registry (images, and videos), for the
family-contract suite: each case builds transformers' own classifier (seeded; attention made peaky so that ATS drops
many tokens, and special tokens distinct, as in a trained model) and saves it with its processor. A registry family
with no case here fails `test_every_classifier_family_has_a_contract_case`. `load_ats` loads the ATS classifier the
registry picks for a saved case."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import peaky_weights_
from hf_fixtures import random_image, tiny_image_processor, tiny_video_processor, tiny_videomae_processor, write_video
from transformers import (
    CLIPConfig,
    CLIPForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    VideoMAEConfig,
    VideoMAEForVideoClassification,
    ViTConfig,
    ViTForImageClassification,
    VivitConfig,
    VivitForVideoClassification,
)

from ats_hf.hub.checkpoint import load_ats_classifier

GEOMETRY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=4, num_labels=5)
# Videos of 8 frames of 32 px in tubelets of 2 frames x 8 x 8 px: 4 x 4 x 4 = 64 tubelets, as the images' 64 patches.
VIDEO_GEOMETRY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, image_size=32, num_frames=8,
                      tubelet_size=[2, 8, 8], intermediate_size=64, num_labels=5)
# VideoMAE's tubelets are tubelet_size frames x patch_size x patch_size: the same 64 tubelets, and no special token.
VIDEOMAE_GEOMETRY = {**{k: v for k, v in VIDEO_GEOMETRY.items() if k != "tubelet_size"}, "tubelet_size": 2,
                     "patch_size": 8}
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=64)


@dataclass(frozen=True)
class FamilyCase:
    """One upstream classifier of a registry family: `family` is its name in `ats_hf.families`, `num_special` the
    tokens before the patches (CLS first; none for VideoMAE), `build` makes the upstream model; `input_shape` is one
    input's (an image's (C, H, W), a video's (T, C, H, W)), `auto_class` and `task` are transformers' for it,
    `processor` makes its processor."""

    name: str
    family: str
    num_special: int
    build: object = field(repr=False)
    input_shape: tuple[int, ...] = (3, 32, 32)
    auto_class: str = "AutoModelForImageClassification"
    task: str = "image-classification"
    processor: Callable = field(default=tiny_image_processor, repr=False)

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

    @property
    def videos(self) -> bool:
        return len(self.input_shape) == 4

    def inputs(self, batch_size: int, seed: int) -> torch.Tensor:
        """(batch_size, *input_shape) random pixel values."""
        return torch.randn(batch_size, *self.input_shape, generator=torch.Generator().manual_seed(seed))

    def pipeline_inputs(self, folder: Path, count: int) -> list:
        """`count` inputs of the case's pipeline: PIL images, or video files (PyAV writes and the pipeline reads
        them; skipped without it)."""
        if not self.videos:
            return [random_image(seed) for seed in range(count)]
        pytest.importorskip("av", reason="the video-classification pipeline decodes files with PyAV")
        return [str(write_video(folder / f"{seed}.mp4", seed)) for seed in range(count)]

    def save(self, directory: Path) -> Path:
        """The upstream classifier and its processor, saved as on the Hub."""
        self.upstream().save_pretrained(directory)
        self.processor().save_pretrained(directory)
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
    FamilyCase("vivit", "vivit", 1, lambda: VivitForVideoClassification(VivitConfig(**VIDEO_GEOMETRY)),
               input_shape=(8, 3, 32, 32), auto_class="AutoModelForVideoClassification", task="video-classification",
               processor=tiny_video_processor),
    FamilyCase("videomae", "videomae", 0, lambda: VideoMAEForVideoClassification(VideoMAEConfig(**VIDEOMAE_GEOMETRY)),
               input_shape=(8, 3, 32, 32), auto_class="AutoModelForVideoClassification", task="video-classification",
               processor=tiny_videomae_processor),
]


def load_ats(folder, **settings):
    """The ATS classifier the registry picks for an upstream checkpoint, in eval mode, with `settings` applied."""
    model = load_ats_classifier(folder).eval()
    model.set_ats(**settings)
    return model
