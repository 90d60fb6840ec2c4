"""ats_hf: Adaptive Token Sampling (Fayyaz et al., ECCV 2022) for HuggingFace transformers ViT-family models.

Importing the package registers every family (`ats_vit`, ...) with AutoConfig, AutoModel and its task auto classes,
and marks the classes so that `save_pretrained` writes the modeling code and an `auto_map` for `trust_remote_code`
users.
"""

import transformers
from transformers import AutoConfig, AutoModel

from .configuration_ats_clip import AtsCLIPConfig, AtsCLIPVisionConfig
from .configuration_ats_deit import AtsDeiTConfig
from .configuration_ats_dinov2 import AtsDinov2Config
from .configuration_ats_vit import ATS_SAMPLERS, AtsViTConfig
from .modeling_ats_clip import (
    AtsCLIPForImageClassification,
    AtsCLIPModel,
    AtsCLIPVisionModel,
    AtsCLIPVisionModelWithProjection,
)
from .modeling_ats_core import (
    inverse_transform_sampling,
    pack_kept_tokens,
    random_sampling,
    significance_scores,
    top_k_sampling,
)
from .modeling_ats_deit import (
    AtsDeiTForImageClassification,
    AtsDeiTForImageClassificationWithTeacher,
    AtsDeiTModel,
)
from .modeling_ats_dinov2 import AtsDinov2ForImageClassification, AtsDinov2Model
from .modeling_ats_vit import (
    AtsImageClassifierOutput,
    AtsViTForImageClassification,
    AtsViTModel,
    AtsViTModelOutput,
    AtsViTPreTrainedModel,
)

__version__ = "0.1.0"

# Each family: its config, its base model, and its task models by auto class. Registering makes the Auto classes
# build them, and marks them so that `save_pretrained` writes the code and an `auto_map` for `trust_remote_code`.
# A tuple of task models (DeiT's two heads) is transformers' own convention: the Auto class picks the one the
# checkpoint's `config.architectures` names, the first by default.
_FAMILIES = [
    (AtsViTConfig, AtsViTModel, {"AutoModelForImageClassification": AtsViTForImageClassification}),
    (
        AtsDeiTConfig,
        AtsDeiTModel,
        {"AutoModelForImageClassification": (AtsDeiTForImageClassificationWithTeacher, AtsDeiTForImageClassification)},
    ),
    # CLIP: the vision tower (and an image classifier on it), and the full image-text model for zero-shot.
    (AtsCLIPVisionConfig, AtsCLIPVisionModel, {"AutoModelForImageClassification": AtsCLIPForImageClassification}),
    (AtsCLIPConfig, AtsCLIPModel, {"AutoModelForZeroShotImageClassification": AtsCLIPModel}),
    # DINOv2 with and without registers: one config (num_register_tokens) and one pair of models.
    (AtsDinov2Config, AtsDinov2Model, {"AutoModelForImageClassification": AtsDinov2ForImageClassification}),
]
for _config_class, _base_model, _task_models in _FAMILIES:
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    AutoModel.register(_config_class, _base_model, exist_ok=True)
    _config_class.register_for_auto_class()
    _base_model.register_for_auto_class("AutoModel")
    for _auto_name, _model_classes in _task_models.items():
        getattr(transformers, _auto_name).register(_config_class, _model_classes, exist_ok=True)
        for _model_class in _model_classes if isinstance(_model_classes, tuple) else (_model_classes,):
            _model_class.register_for_auto_class(_auto_name)

# Tooling is imported on first use (PEP 562), so that `import ats_hf` loads only the model and its registration.
_LAZY_TOOLING = {
    "convert_to_ats": "ats_hf.hub.convert",
    "load_ats_classifier": "ats_hf.hub.checkpoint",
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
    "AtsViTConfig",
    "AtsViTForImageClassification",
    "AtsViTModel",
    "AtsViTModelOutput",
    "AtsViTPreTrainedModel",
    "convert_to_ats",
    "inverse_transform_sampling",
    "load_ats_classifier",
    "pack_kept_tokens",
    "push_checkpoint",
    "random_sampling",
    "save_ats_checkpoint",
    "significance_scores",
    "top_k_sampling",
]
