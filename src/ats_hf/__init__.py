"""ats_hf: Adaptive Token Sampling (Fayyaz et al., ECCV 2022) for HuggingFace transformers ViT models.

Importing the package registers `ats_vit` with AutoConfig, AutoModel and AutoModelForImageClassification, and marks
the classes so that `save_pretrained` writes the modeling code and an `auto_map` for `trust_remote_code` users.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_ats_vit import ATS_SAMPLERS, AtsViTConfig
from .modeling_ats_vit import (
    AtsImageClassifierOutput,
    AtsViTForImageClassification,
    AtsViTModel,
    AtsViTModelOutput,
    AtsViTPreTrainedModel,
    inverse_transform_sampling,
    pack_kept_tokens,
    random_sampling,
    significance_scores,
    top_k_sampling,
)

from .convert import convert_to_ats, push_checkpoint, save_ats_checkpoint

__version__ = "0.1.0"

AutoConfig.register(AtsViTConfig.model_type, AtsViTConfig, exist_ok=True)
AutoModel.register(AtsViTConfig, AtsViTModel, exist_ok=True)
AutoModelForImageClassification.register(AtsViTConfig, AtsViTForImageClassification, exist_ok=True)
AtsViTConfig.register_for_auto_class()
AtsViTModel.register_for_auto_class("AutoModel")
AtsViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "ATS_SAMPLERS",
    "AtsImageClassifierOutput",
    "AtsViTConfig",
    "AtsViTForImageClassification",
    "AtsViTModel",
    "AtsViTModelOutput",
    "AtsViTPreTrainedModel",
    "convert_to_ats",
    "inverse_transform_sampling",
    "pack_kept_tokens",
    "push_checkpoint",
    "random_sampling",
    "save_ats_checkpoint",
    "significance_scores",
    "top_k_sampling",
]
