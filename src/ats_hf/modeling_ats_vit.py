"""ATS-ViT: Vision Transformer with Adaptive Token Sampling (Fayyaz et al., ECCV 2022) for transformers.

Self-contained for the Hub: imports only torch, transformers and the ATS core beside it. The core does the scoring,
sampling, packing, layer loop and heads; this file names ViT's classes. The one special token is CLS.
"""

from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.vit.modeling_vit import (
    ViTAttention,
    ViTEmbeddings,
    ViTForImageClassification,
    ViTLayer,
    ViTModel,
    ViTPooler,
    ViTPreTrainedModel,
)

from .configuration_ats_vit import AtsViTConfig
from .modeling_ats_core import (
    AtsAttentionMixin,
    AtsClassifierMixin,
    AtsImageClassifierOutput,
    AtsModelOutput,
    AtsPreTrainedMixin,
    AtsViTStyleLayerMixin,
    AtsViTStyleModelMixin,
)

# ATS-ViT's outputs are the core's (the names are ATS-ViT's public API since its first release).
AtsViTModelOutput = AtsModelOutput


class AtsViTAttention(AtsAttentionMixin, ViTAttention):
    """ViT self-attention that, in an ATS layer, scores and samples tokens and attends only from the kept rows."""


class AtsViTLayer(AtsViTStyleLayerMixin, ViTLayer):
    """A ViT encoder layer; in an ATS layer the attention samples tokens and the rest runs on kept rows only."""

    ats_attention_class = AtsViTAttention


class AtsViTPreTrainedModel(AtsPreTrainedMixin, ViTPreTrainedModel):
    config_class = AtsViTConfig
    config: AtsViTConfig
    _no_split_modules = ["ViTEmbeddings", "AtsViTLayer"]
    _ats_optional_weights = ("classifier.", "pooler.", "vit.pooler.")
    _ats_expected_checkpoints = "a ViT/DeiT (non-distilled) or ATS-ViT checkpoint of the same architecture"


class AtsViTModel(AtsViTStyleModelMixin, AtsViTPreTrainedModel, ViTModel):
    """[`ViTModel`] with Adaptive Token Sampling in `config.ats_layers`."""

    ats_embeddings_class = ViTEmbeddings
    ats_layer_class = AtsViTLayer
    ats_pooler_class = ViTPooler


class AtsViTForImageClassification(AtsClassifierMixin, AtsViTPreTrainedModel, ViTForImageClassification):
    """[`ViTForImageClassification`] with Adaptive Token Sampling in `config.ats_layers`: a linear head on the final
    CLS token."""

    ats_base_model_class = AtsViTModel
    ats_base_model_options = {"add_pooling_layer": False}


# Plain ViT/DeiT checkpoints on the Hub use the old weight names (`encoder.layer.N.attention.attention.query`).
# transformers renames them through a mapping keyed by class name, which subclasses do not inherit: register it.
register_checkpoint_conversion_mapping("AtsViTModel", get_checkpoint_conversion_mapping("ViTModel"), overwrite=True)

__all__ = [
    "AtsImageClassifierOutput",
    "AtsViTForImageClassification",
    "AtsViTModel",
    "AtsViTModelOutput",
    "AtsViTPreTrainedModel",
]
