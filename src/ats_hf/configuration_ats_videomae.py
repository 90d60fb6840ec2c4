"""Configuration of ATS-VideoMAE: a VideoMAE video transformer whose chosen encoder layers keep an adaptive subset of
its space-time tokens.

Self-contained for the Hub: imports only huggingface_hub, transformers and `.configuration_ats_core`.

VideoMAE cuts a video of `num_frames` frames into tubelets of `tubelet_size` frames x `patch_size` x `patch_size`
pixels: a token is one tubelet, so the tokens form a (time, rows, columns) grid. It has no special token (no CLS:
its classifier mean-pools), so K counts tubelets only, and the attention row of the tokens' mean query scores them.
"""

from huggingface_hub.dataclasses import strict
from transformers import VideoMAEConfig

from .configuration_ats_core import ATS_CONFIG_DOC, AtsConfigMixin, patch_shape


@strict
class AtsVideoMAEConfig(AtsConfigMixin, VideoMAEConfig):
    model_type = "ats_videomae"
    ats_base_model_types = ("videomae",)

    @property
    def ats_num_special_tokens(self) -> int:
        """No special token: every token is a tubelet, scored by the mean query's attention and sampled."""
        return 0

    def ats_patch_grid(self, input_size: int | tuple[int, ...] | None = None) -> tuple[int, int, int]:
        """(time, rows, columns) of tubelets in a video of `input_size`: (frames, height, width), or an image size
        (height or (height, width)) at `num_frames` frames; default: the config's."""
        size = self.image_size if input_size is None else input_size
        sizes = [size, size] if isinstance(size, int) else [int(length) for length in size]
        frames, height, width = sizes if len(sizes) == 3 else [self.num_frames, *sizes]
        patch_h, patch_w = patch_shape(self)
        return frames // self.tubelet_size, height // patch_h, width // patch_w

    @property
    def ats_patch_values(self) -> int:
        """Input values one tubelet embeds: channels x frames x patch height x patch width."""
        patch_h, patch_w = patch_shape(self)
        return self.num_channels * self.tubelet_size * patch_h * patch_w


AtsVideoMAEConfig.__doc__ = (
    "A [`VideoMAEConfig`] plus the settings of Adaptive Token Sampling (Fayyaz et al., ECCV 2022). VideoMAE has no "
    "special token: K (and the capacity) count tubelets of the whole video, at least one, and the attention row of "
    "the tokens' mean query, times each value norm, scores them (the paper reads the CLS row).\n"
    + ATS_CONFIG_DOC
)

__all__ = ["AtsVideoMAEConfig"]
