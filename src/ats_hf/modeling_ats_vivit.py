"""ATS-ViViT: the Video Vision Transformer (joint space-time attention) with Adaptive Token Sampling (Fayyaz et al.,
ECCV 2022) for transformers.

Self-contained for the Hub: imports only torch, transformers and the ATS core beside it. The core does the scoring,
sampling, packing, layer loop and heads; ViViT's layers are ViT's layout, so the ViT-style mixins serve and this file
names ViViT's classes. Its input is a video, `pixel_values` of shape (B, T, C, H, W), embedded as tubelets (a Conv3d):
every patch token is a space-time tubelet, and ATS keeps an adaptive subset of them over the whole video. The one
special token is CLS; `sampled_token_indices` are positions in the (time, rows, columns) tubelet grid, flattened.
"""

import torch
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.vivit.modeling_vivit import (
    VivitAttention,
    VivitEmbeddings,
    VivitForVideoClassification,
    VivitLayer,
    VivitModel,
    VivitPooler,
    VivitPreTrainedModel,
)

from .configuration_ats_vivit import AtsVivitConfig
from .modeling_ats_core import (
    AtsAttentionMixin,
    AtsClassifierMixin,
    AtsModelOutput,
    AtsPreTrainedMixin,
    AtsViTStyleLayerMixin,
    AtsViTStyleModelMixin,
)


class AtsVivitAttention(AtsAttentionMixin, VivitAttention):
    """ViViT self-attention that, in an ATS layer, scores and samples tubelets and attends only from the kept rows."""


class AtsVivitLayer(AtsViTStyleLayerMixin, VivitLayer):
    """A ViViT encoder layer; in an ATS layer the attention samples tokens and the rest runs on kept rows only."""

    ats_attention_class = AtsVivitAttention


class AtsVivitPreTrainedModel(AtsPreTrainedMixin, VivitPreTrainedModel):
    config_class = AtsVivitConfig
    config: AtsVivitConfig
    _no_split_modules = ["VivitEmbeddings", "AtsVivitLayer"]
    _ats_optional_weights = ("classifier.", "pooler.", "vivit.pooler.")
    _ats_expected_checkpoints = "a ViViT (model_type 'vivit') or ATS-ViViT checkpoint of the same architecture"


class AtsVivitModel(AtsViTStyleModelMixin, AtsVivitPreTrainedModel, VivitModel):
    """[`VivitModel`] with Adaptive Token Sampling in `config.ats_layers` over the space-time tubelet tokens."""

    ats_embedding_options = ("interpolate_pos_encoding",)
    ats_embeddings_class = VivitEmbeddings
    ats_layer_class = AtsVivitLayer
    ats_pooler_class = VivitPooler

    def __init__(self, config: AtsVivitConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> AtsModelOutput:
        """Upstream's arguments (`pixel_values`: (B, T, C, H, W) videos), and the core's `attention_mask` over the
        (B, 1 + tubelets) tokens (see `AtsBaseModelMixin.forward`)."""
        return super().forward(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding,
                               attention_mask=attention_mask, **kwargs)


class AtsVivitForVideoClassification(AtsClassifierMixin, AtsVivitPreTrainedModel, VivitForVideoClassification):
    """[`VivitForVideoClassification`] with Adaptive Token Sampling in `config.ats_layers`: a linear head on the final
    CLS token."""

    ats_base_model_class = AtsVivitModel
    ats_base_model_options = {"add_pooling_layer": False}


# ViViT checkpoints on the Hub use the old weight names (`encoder.layer.N.attention.attention.query`); transformers
# renames them through a mapping keyed by class name, which subclasses do not inherit: register it.
register_checkpoint_conversion_mapping("AtsVivitModel", get_checkpoint_conversion_mapping("VivitModel"), overwrite=True)

__all__ = ["AtsVivitForVideoClassification", "AtsVivitModel", "AtsVivitPreTrainedModel"]
