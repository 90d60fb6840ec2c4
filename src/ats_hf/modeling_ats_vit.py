"""ATS-ViT: Vision Transformer with Adaptive Token Sampling (Fayyaz et al., ECCV 2022) for transformers.

Self-contained for the Hub: imports only torch, transformers and the ATS core beside it (`.modeling_ats_core`,
`.configuration_ats_vit`). The core does the scoring, sampling and packing; this file adds ViT's layer layout. The
one special token is CLS.

Shapes: B = batch, L = tokens entering a layer (CLS first), M = rows a layer outputs, D = hidden size.
"""

import torch
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
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_ats_vit import AtsViTConfig
from .modeling_ats_core import (
    AtsAttentionMixin,
    AtsEncoderMixin,
    AtsImageClassifierOutput,
    AtsModelOutput,
    AtsPreTrainedMixin,
    AtsViTStyleLayerMixin,
    ats_output_fields,
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


class AtsViTModel(AtsEncoderMixin, AtsViTPreTrainedModel, ViTModel):
    """[`ViTModel`] with Adaptive Token Sampling in `config.ats_layers`."""

    def __init__(self, config: AtsViTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False):
        # ViTModel.__init__ would build (and randomly initialise) plain layers only for them to be replaced.
        AtsViTPreTrainedModel.__init__(self, config)
        config.check_ats_settings()
        self.embeddings = ViTEmbeddings(config, use_mask_token=use_mask_token)
        self.layers = nn.ModuleList([AtsViTLayer(config, index) for index in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTPooler(config) if add_pooling_layer else None
        self._init_ats_plans()
        self.post_init()
        self._resolve_ats_plans()

    @property
    def ats_encoder_layers(self) -> nn.ModuleList:
        return self.layers

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> AtsViTModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images, as from a ViT image processor.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
            Patches to replace by the mask token (models built with `use_mask_token=True`).
        interpolate_pos_encoding (`bool`, *optional*):
            Interpolate position embeddings to the input size; K defaults then follow the actual token count.
        attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
            1 for tokens to attend to, 0 for tokens to ignore (CLS first, never 0). Ignored tokens are never kept.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required.")
        expected_dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        hidden_states = self.embeddings(
            pixel_values.to(expected_dtype),
            bool_masked_pos=bool_masked_pos,
            interpolate_pos_encoding=interpolate_pos_encoding,
        )
        run = self.run_layers(hidden_states, attention_mask, **kwargs)
        sequence_output, token_mask = run.last_hidden_state(self.layernorm, attention_mask)
        return AtsViTModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=self.pooler(sequence_output) if self.pooler is not None else None,
            num_tokens=run.num_tokens,
            sampled_token_indices=run.sampled_token_indices,
            token_mask=token_mask,
        )


class AtsViTForImageClassification(AtsViTPreTrainedModel, ViTForImageClassification):
    """[`ViTForImageClassification`] with Adaptive Token Sampling in `config.ats_layers`."""

    def __init__(self, config: AtsViTConfig):
        AtsViTPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.vit = AtsViTModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> AtsImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices for the loss (regression if `num_labels == 1`).
        Other arguments as in [`AtsViTModel.forward`].
        """
        outputs: AtsViTModelOutput = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            attention_mask=attention_mask,
            **kwargs,
        )
        logits = self.classifier(outputs.last_hidden_state[:, 0, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return AtsImageClassifierOutput(loss=loss, logits=logits, **ats_output_fields(outputs))


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
