"""Configuration of ATS-CLIP: a CLIP whose vision tower keeps an adaptive subset of tokens in chosen layers.

Self-contained for the Hub: imports only huggingface_hub, transformers and `.configuration_ats_core`. The ATS settings
live on the vision config (`AtsCLIPVisionConfig`); `AtsCLIPConfig` is CLIP's composite config with that vision part
and CLIP's own text part.
"""

from huggingface_hub.dataclasses import strict
from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

from .configuration_ats_core import ATS_CONFIG_DOC, AtsBaseModelTypesMixin, AtsConfigMixin

# Labels of an image classifier sit on the top level of a composite CLIP config (`CLIPForImageClassification`).
_CLASSIFIER_FIELDS = ("id2label", "label2id", "problem_type")


@strict
class AtsCLIPVisionConfig(AtsConfigMixin, CLIPVisionConfig):
    model_type = "ats_clip_vision_model"
    ats_base_model_types = ("clip_vision_model",)
    # Composite configs whose `vision_config` this reads, as `CLIPVisionConfig` does.
    ats_composite_model_types = ("clip", "ats_clip")

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """Read a config; of a full CLIP config (`clip`, `ats_clip`) the vision part, with the classifier labels of
        the top level (where `CLIPForImageClassification` keeps them)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") in cls.ats_composite_model_types and cls.base_config_key in config_dict:
            labels = {key: config_dict[key] for key in _CLASSIFIER_FIELDS if config_dict.get(key) is not None}
            config_dict = {**config_dict[cls.base_config_key], **labels, "model_type": cls.model_type}
        return config_dict, kwargs


@strict
class AtsCLIPConfig(AtsBaseModelTypesMixin, CLIPConfig):
    model_type = "ats_clip"
    sub_configs_defaults = {"vision_config": AtsCLIPVisionConfig, "text_config": CLIPTextConfig}
    ats_base_model_types = ("clip",)
    keys_to_ignore_at_inference = ["vision_model_output", "text_model_output"]


AtsCLIPVisionConfig.__doc__ = (
    "A [`CLIPVisionConfig`] plus the settings of Adaptive Token Sampling (Fayyaz et al., ECCV 2022); the one special "
    "token is CLS (the class embedding). Reading a full CLIP config gives its vision part.\n" + ATS_CONFIG_DOC
)
AtsCLIPConfig.__doc__ = (
    "A [`CLIPConfig`] whose `vision_config` is an [`AtsCLIPVisionConfig`], which holds the ATS settings; the text "
    "tower is CLIP's own."
)

__all__ = ["AtsCLIPConfig", "AtsCLIPVisionConfig"]
