"""Configuration of ATS-ViViT: a Video Vision Transformer (joint space-time attention) whose chosen encoder layers keep
an adaptive subset of its space-time tokens.

Self-contained for the Hub: imports only huggingface_hub, transformers and `.configuration_ats_core`.

ViViT cuts a video of `num_frames` frames into tubelets of `tubelet_size` = (frames, height, width): a patch token is
one tubelet, so the tokens form a (time, rows, columns) grid and ATS scores and samples over space and time at once.
The one special token is CLS.
"""

from huggingface_hub.dataclasses import strict
from transformers import VivitConfig

from .configuration_ats_core import ATS_CONFIG_DOC, AtsConfigMixin


@strict
class AtsVivitConfig(AtsConfigMixin, VivitConfig):
    model_type = "ats_vivit"
    ats_base_model_types = ("vivit",)

    def ats_patch_grid(self, input_size: int | tuple[int, ...] | None = None) -> tuple[int, int, int]:
        """(time, rows, columns) of tubelets in a video of `input_size`: (frames, height, width), or an image size
        (height or (height, width)) at `num_frames` frames; default: the config's."""
        size = self.image_size if input_size is None else input_size
        sizes = [size, size] if isinstance(size, int) else [int(length) for length in size]
        frames, height, width = sizes if len(sizes) == 3 else [self.num_frames, *sizes]
        tubelet_t, tubelet_h, tubelet_w = self.tubelet_size
        return frames // tubelet_t, height // tubelet_h, width // tubelet_w

    @property
    def ats_patch_values(self) -> int:
        """Input values one tubelet embeds: channels x frames x height x width."""
        tubelet_t, tubelet_h, tubelet_w = self.tubelet_size
        return self.num_channels * tubelet_t * tubelet_h * tubelet_w


AtsVivitConfig.__doc__ = (
    "A [`VivitConfig`] plus the settings of Adaptive Token Sampling (Fayyaz et al., ECCV 2022); the one special token "
    "is CLS, and the tokens ATS samples are space-time tubelets (K counts tokens of the whole video).\n"
    + ATS_CONFIG_DOC
)

__all__ = ["AtsVivitConfig"]
