"""ats_hf: Adaptive Token Sampling (Fayyaz et al., ECCV 2022) for HuggingFace transformers ViT-family models
(images, and ViViT's and VideoMAE's videos).

Importing the package registers every family of the registry (`ats_hf.families`: `ats_vit`, `ats_deit`, ...) with
AutoConfig, AutoModel and its task auto classes, and marks the classes so that `save_pretrained` writes the modeling
code and an `auto_map` for `trust_remote_code` users. Tooling (benchmark, tune, export, hub) is imported on use.
"""

from .ats_sampling import (
    ATS_SAMPLERS,
    inverse_transform_sampling,
    pack_kept_rows,
    random_sampling,
    select_tokens,
    significance_scores,
    top_k_sampling,
)
from .configuration_ats_clip import AtsCLIPConfig, AtsCLIPVisionConfig
from .configuration_ats_core import AtsSettings
from .configuration_ats_deit import AtsDeiTConfig
from .configuration_ats_dinov2 import AtsDinov2Config
from .configuration_ats_videomae import AtsVideoMAEConfig
from .configuration_ats_vit import AtsViTConfig
from .configuration_ats_vivit import AtsVivitConfig
from .families import FAMILIES, register_families
from .modeling_ats_clip import (
    AtsCLIPForImageClassification,
    AtsCLIPModel,
    AtsCLIPVisionModel,
    AtsCLIPVisionModelWithProjection,
)
from .modeling_ats_core import AtsImageClassifierOutput, AtsModelOutput, AtsPreTrainedMixin
from .modeling_ats_deit import AtsDeiTForImageClassification, AtsDeiTForImageClassificationWithTeacher, AtsDeiTModel
from .modeling_ats_dinov2 import AtsDinov2ForImageClassification, AtsDinov2Model
from .modeling_ats_videomae import AtsVideoMAEForVideoClassification, AtsVideoMAEModel
from .modeling_ats_vit import AtsViTForImageClassification, AtsViTModel, AtsViTModelOutput, AtsViTPreTrainedModel
from .modeling_ats_vivit import AtsVivitForVideoClassification, AtsVivitModel

__version__ = "0.2.0"

register_families()

# Tooling is imported on first use (PEP 562), so that `import ats_hf` loads only the model and its registration.
_LAZY_TOOLING = {
    "convert_to_ats": "ats_hf.hub.convert",
    "load_ats_classifier": "ats_hf.hub.checkpoint",
    "load_ats_model": "ats_hf.hub.checkpoint",
    "push_checkpoint": "ats_hf.hub.checkpoint",
    "save_ats_checkpoint": "ats_hf.hub.checkpoint",
}


def __getattr__(name: str):
    if name in _LAZY_TOOLING:
        import importlib

        return getattr(importlib.import_module(_LAZY_TOOLING[name]), name)
    raise AttributeError(f"module 'ats_hf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_TOOLING))


__all__ = [
    "ATS_SAMPLERS",
    "FAMILIES",
    "AtsCLIPConfig",
    "AtsCLIPForImageClassification",
    "AtsCLIPModel",
    "AtsCLIPVisionConfig",
    "AtsCLIPVisionModel",
    "AtsCLIPVisionModelWithProjection",
    "AtsDeiTConfig",
    "AtsDeiTForImageClassification",
    "AtsDeiTForImageClassificationWithTeacher",
    "AtsDeiTModel",
    "AtsDinov2Config",
    "AtsDinov2ForImageClassification",
    "AtsDinov2Model",
    "AtsImageClassifierOutput",
    "AtsModelOutput",
    "AtsPreTrainedMixin",
    "AtsSettings",
    "AtsViTConfig",
    "AtsViTForImageClassification",
    "AtsViTModel",
    "AtsViTModelOutput",
    "AtsViTPreTrainedModel",
    "AtsVideoMAEConfig",
    "AtsVideoMAEForVideoClassification",
    "AtsVideoMAEModel",
    "AtsVivitConfig",
    "AtsVivitForVideoClassification",
    "AtsVivitModel",
    "convert_to_ats",
    "inverse_transform_sampling",
    "load_ats_classifier",
    "load_ats_model",
    "pack_kept_rows",
    "push_checkpoint",
    "random_sampling",
    "save_ats_checkpoint",
    "select_tokens",
    "significance_scores",
    "top_k_sampling",
]
