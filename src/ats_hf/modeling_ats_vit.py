"""ATS-ViT: Vision Transformer with Adaptive Token Sampling (Fayyaz et al., ECCV 2022) for transformers.

Self-contained for the Hub: imports only torch, transformers and the ATS core beside it (`.modeling_ats_core`,
`.configuration_ats_vit`). The core does the scoring, sampling and packing; this file adds ViT's layer layout. The
one special token is CLS.

Shapes: B = batch, L = tokens entering a layer (CLS first), M = rows a layer outputs, D = hidden size.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
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
    ATS_OUTPUT_DOC,
    AtsAttentionMixin,
    AtsEncoderMixin,
    AtsLayerPlan,
    AtsPreTrainedMixin,
    TokenSelection,
    TokenState,
    update_real_rows,
)


@dataclass
class AtsViTModelOutput(BaseModelOutputWithPooling):
    num_tokens: torch.LongTensor | None = None
    sampled_token_indices: torch.LongTensor | None = None
    token_mask: torch.LongTensor | None = None


@dataclass
class AtsImageClassifierOutput(ImageClassifierOutput):
    num_tokens: torch.LongTensor | None = None
    sampled_token_indices: torch.LongTensor | None = None
    token_mask: torch.LongTensor | None = None


AtsViTModelOutput.__doc__ = (
    "[`BaseModelOutputWithPooling`] of ATS-ViT; `last_hidden_state` holds real tokens packed to the front of each "
    "row (see `token_mask`), or the full token grid with `config.ats_dense_output`.\n" + ATS_OUTPUT_DOC
)
AtsImageClassifierOutput.__doc__ = "[`ImageClassifierOutput`] of ATS-ViT.\n" + ATS_OUTPUT_DOC


class AtsViTAttention(AtsAttentionMixin, ViTAttention):
    """ViT self-attention that, in an ATS layer, scores and samples tokens and attends only from the kept rows."""

    def forward(
        self, hidden_states: torch.Tensor, state: TokenState, plan: AtsLayerPlan | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None, TokenSelection | None]:
        """hidden_states: (B, L, D), layer-normed; plan: None in an ordinary layer. Returns the (B, M, D) output,
        the attention probabilities (eager only) and the kept rows (None if all were kept in place)."""
        if plan is None:
            attn_output, attn_weights = super().forward(hidden_states, state.attention_mask, **kwargs)
            return attn_output, attn_weights, None
        return self.ats_forward(hidden_states, state, plan, self.o_proj, self.scaling, self.attention_dropout, **kwargs)


class AtsViTLayer(ViTLayer):
    """A ViT encoder layer; in an ATS layer the attention samples tokens and the rest runs on kept rows only."""

    def __init__(self, config: AtsViTConfig, layer_index: int):
        super().__init__(config)
        self.attention = AtsViTAttention(config)
        self.layer_index = layer_index

    def forward(
        self, hidden_states: torch.Tensor, state: TokenState, plan: AtsLayerPlan | None = None, **kwargs
    ) -> tuple[torch.Tensor, TokenState]:
        """(B, L, D) in -> (B, M, D) out and the state of its M rows (the input's when no row was dropped)."""
        residual = hidden_states
        attn_output, _, selection = self.attention(self.layernorm_before(hidden_states), state, plan, **kwargs)
        if selection is not None:
            residual, state = state.select(self.attention.config, selection, residual)
        hidden_states = self.dropout(attn_output) + residual
        hidden_states = update_real_rows(
            hidden_states, state.padding, lambda rows: self.dropout(self.mlp(self.layernorm_after(rows)))
        )
        return hidden_states, state


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
        sequence_output = self.layernorm(run.hidden_states)
        pooler_output = self.pooler(sequence_output) if self.pooler is not None else None
        if run.dense_hidden_states is not None:
            sequence_output = self.layernorm(run.dense_hidden_states)
            token_mask = attention_mask
        else:
            token_mask = run.state.token_mask
        return AtsViTModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=pooler_output,
            num_tokens=run.num_tokens,
            sampled_token_indices=run.sampled_token_indices,
            token_mask=_as_long_mask(token_mask, sequence_output),
        )


def _as_long_mask(token_mask: torch.Tensor | None, hidden_states: torch.Tensor) -> torch.Tensor:
    """(B, M) 0/1 long mask of real rows for (B, M, D) hidden states (all ones when `token_mask` is None)."""
    if token_mask is None:
        return torch.ones(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
    return token_mask.long()


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
        return AtsImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            num_tokens=outputs.num_tokens,
            sampled_token_indices=outputs.sampled_token_indices,
            token_mask=outputs.token_mask,
        )


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
