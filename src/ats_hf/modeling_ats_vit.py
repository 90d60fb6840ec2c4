"""ATS-ViT: Vision Transformer with Adaptive Token Sampling (Fayyaz et al., ECCV 2022) for transformers.

Self-contained for the Hub: imports only torch, transformers and the ATS core beside it (`.modeling_ats_core`,
`.configuration_ats_vit`). The core does the scoring, sampling and packing; this file adds ViT's layer layout. The
one special token is CLS.

Shapes: B = batch, L = tokens entering a layer (CLS first), M = rows a layer outputs, D = hidden size.
"""

from torch import nn
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
    AtsCLSClassifierMixin,
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
    _ats_auto_map = {
        "AutoConfig": "configuration_ats_vit.AtsViTConfig",
        "AutoModel": "modeling_ats_vit.AtsViTModel",
        "AutoModelForImageClassification": "modeling_ats_vit.AtsViTForImageClassification",
    }


class AtsViTModel(AtsViTStyleModelMixin, AtsViTPreTrainedModel, ViTModel):
    """[`ViTModel`] with Adaptive Token Sampling in `config.ats_layers` (forward: see `AtsViTStyleModelMixin`)."""

    ats_embeddings_class = ViTEmbeddings
    ats_layer_class = AtsViTLayer
    ats_pooler_class = ViTPooler


class AtsViTForImageClassification(AtsCLSClassifierMixin, AtsViTPreTrainedModel, ViTForImageClassification):
    """[`ViTForImageClassification`] with Adaptive Token Sampling in `config.ats_layers`."""

    def __init__(self, config: AtsViTConfig):
        AtsViTPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.vit = AtsViTModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()


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
