"""ATS-DeiT: distilled DeiT with Adaptive Token Sampling (Fayyaz et al., ECCV 2022) for transformers.

Self-contained for the Hub: imports only torch, transformers and the ATS core beside it. The core does the scoring,
sampling, packing, layer loop and heads; this file names DeiT's classes (ViT's layer layout) and its two heads.

DeiT's embeddings output [CLS, distillation token, patches]: S = 2 special tokens, both always kept and never
scored. The significance scores come from the CLS token's attention row, as in the paper; the distillation token's
row would be an alternative, which this implementation does not use (docs/family-deit.md).
"""

from dataclasses import dataclass

import torch
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.deit.modeling_deit import (
    DeiTAttention,
    DeiTEmbeddings,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTLayer,
    DeiTModel,
    DeiTPooler,
    DeiTPreTrainedModel,
)
from transformers.utils import ModelOutput

from .configuration_ats_deit import AtsDeiTConfig
from .modeling_ats_core import (
    ATS_OUTPUT_DOC,
    AtsAttentionMixin,
    AtsClassifierMixin,
    AtsPreTrainedMixin,
    AtsViTStyleLayerMixin,
    AtsViTStyleModelMixin,
    linear_head,
)

DISTILLATION_TOKEN = 1
"""Position of the distillation token in the embeddings' output (CLS is 0, patches start at 2)."""


@dataclass
class AtsDeiTForImageClassificationWithTeacherOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cls_logits: torch.FloatTensor | None = None
    distillation_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    num_tokens: torch.LongTensor | None = None
    sampled_token_indices: torch.LongTensor | None = None
    token_mask: torch.LongTensor | None = None


AtsDeiTForImageClassificationWithTeacherOutput.__doc__ = (
    r"""Output of [`AtsDeiTForImageClassificationWithTeacher`].

    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is given):
        The mean of the two heads' losses against `labels`.
    logits (`torch.FloatTensor` of shape `(batch_size, config.num_labels)`):
        The prediction: the average of `cls_logits` and `distillation_logits`, as in upstream DeiT.
    cls_logits, distillation_logits (`torch.FloatTensor` of shape `(batch_size, config.num_labels)`):
        The classification head on the final CLS token, the distillation head on the final distillation token.
    hidden_states, attentions: as in transformers, when requested (rows of ATS layers' outputs are the kept ones).
"""
    + ATS_OUTPUT_DOC
)


class AtsDeiTAttention(AtsAttentionMixin, DeiTAttention):
    """DeiT self-attention that, in an ATS layer, scores patches by the CLS row, samples them, and attends only
    from the kept rows (CLS and the distillation token always among them)."""


class AtsDeiTLayer(AtsViTStyleLayerMixin, DeiTLayer):
    """A DeiT encoder layer; in an ATS layer the attention samples tokens and the rest runs on kept rows only."""

    ats_attention_class = AtsDeiTAttention


class AtsDeiTPreTrainedModel(AtsPreTrainedMixin, DeiTPreTrainedModel):
    config_class = AtsDeiTConfig
    config: AtsDeiTConfig
    _no_split_modules = ["DeiTEmbeddings", "AtsDeiTLayer"]
    # Either head may be new or left over: a base DeiTModel checkpoint has none, a distilled one has two.
    _ats_optional_weights = ("cls_classifier.", "distillation_classifier.", "classifier.", "pooler.", "deit.pooler.")
    _ats_expected_checkpoints = "a distilled DeiT (model_type 'deit') or ATS-DeiT checkpoint of the same architecture"


class AtsDeiTModel(AtsViTStyleModelMixin, AtsDeiTPreTrainedModel, DeiTModel):
    """[`DeiTModel`] with Adaptive Token Sampling in `config.ats_layers`; CLS and the distillation token (positions 0
    and 1 of `attention_mask`, never 0) are always kept."""

    ats_embeddings_class = DeiTEmbeddings
    ats_layer_class = AtsDeiTLayer
    ats_pooler_class = DeiTPooler


class AtsDeiTForImageClassificationWithTeacher(
    AtsClassifierMixin, AtsDeiTPreTrainedModel, DeiTForImageClassificationWithTeacher
):
    """[`DeiTForImageClassificationWithTeacher`] with Adaptive Token Sampling in `config.ats_layers`: the class of
    the distilled DeiT checkpoints (`facebook/deit-*-distilled-*`). The prediction is the average of the CLS head
    and the distillation-token head, as upstream; with `labels`, the loss is the mean of both heads' losses
    (upstream has none here; DeiT's teacher term is not reproduced: see `ats_hf.distillation`)."""

    ats_base_model_class = AtsDeiTModel
    ats_base_model_options = {"add_pooling_layer": False}
    ats_output_class = AtsDeiTForImageClassificationWithTeacherOutput

    def ats_build_heads(self, config):
        self.cls_classifier = linear_head(config.hidden_size, config)
        self.distillation_classifier = linear_head(config.hidden_size, config)

    def ats_logits(self, outputs):
        sequence_output = outputs.last_hidden_state
        return {
            "cls_logits": self.cls_classifier(sequence_output[:, 0]),
            "distillation_logits": self.distillation_classifier(sequence_output[:, DISTILLATION_TOKEN]),
        }


class AtsDeiTForImageClassification(AtsClassifierMixin, AtsDeiTPreTrainedModel, DeiTForImageClassification):
    """[`DeiTForImageClassification`] with Adaptive Token Sampling in `config.ats_layers`: one head on the final CLS
    token (the distillation token still runs through the encoder and is always kept)."""

    ats_base_model_class = AtsDeiTModel
    ats_base_model_options = {"add_pooling_layer": False}


# Distilled DeiT checkpoints on the Hub use the old weight names (`encoder.layer.N.attention.attention.query`).
# transformers renames them through a mapping keyed by class name, which subclasses do not inherit: register it.
register_checkpoint_conversion_mapping("AtsDeiTModel", get_checkpoint_conversion_mapping("DeiTModel"), overwrite=True)

__all__ = [
    "AtsDeiTForImageClassification",
    "AtsDeiTForImageClassificationWithTeacher",
    "AtsDeiTForImageClassificationWithTeacherOutput",
    "AtsDeiTModel",
    "AtsDeiTPreTrainedModel",
]
