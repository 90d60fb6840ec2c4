"""Configuration of ATS-ViT: a ViT whose chosen encoder layers keep an adaptive subset of tokens.

Self-contained for the Hub: imports only huggingface_hub, transformers and `.configuration_ats_core`.
"""

from huggingface_hub.dataclasses import strict
from transformers import ViTConfig

from .configuration_ats_core import ATS_CONFIG_DOC, AtsConfigMixin


@strict
class AtsViTConfig(AtsConfigMixin, ViTConfig):
    model_type = "ats_vit"
    ats_base_model_types = ("vit",)


AtsViTConfig.__doc__ = (
    "A [`ViTConfig`] plus the settings of Adaptive Token Sampling (Fayyaz et al., ECCV 2022); the one special token "
    "is CLS.\n" + ATS_CONFIG_DOC
)

__all__ = ["AtsViTConfig"]
