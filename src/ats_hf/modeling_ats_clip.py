"""ATS-CLIP: CLIP whose vision tower uses Adaptive Token Sampling (Fayyaz et al., ECCV 2022), for transformers.

Self-contained for the Hub: imports only torch, transformers and the ATS core beside it (`.modeling_ats_core`,
`.configuration_ats_clip`). The core does the scoring, sampling and packing; this file adds CLIP's vision layout
(class embedding + patches, `pre_layrnorm`, encoder layers, `post_layernorm` on the CLS row). The one special token is
CLS. The text tower is CLIP's own.

Shapes: B = batch, L = tokens entering a layer (CLS first), M = rows a layer outputs, D = hidden size.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.models.clip.modeling_clip import (
    CLIPAttention,
    CLIPEncoder,
    CLIPEncoderLayer,
    CLIPForImageClassification,
    CLIPModel,
    CLIPPreTrainedModel,
    CLIPTextModel,
    CLIPVisionEmbeddings,
    CLIPVisionModel,
    CLIPVisionModelOutput,
    CLIPVisionModelWithProjection,
)
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_ats_clip import AtsCLIPConfig, AtsCLIPVisionConfig
from .modeling_ats_core import (
    ATS_OUTPUT_DOC,
    AtsAttentionMixin,
    AtsEncoderMixin,
    AtsEncoderRun,
    AtsLayerPlan,
    AtsPreTrainedMixin,
    TokenSelection,
    TokenState,
    update_real_rows,
)


@dataclass
class AtsCLIPVisionModelOutput(BaseModelOutputWithPooling):
    num_tokens: torch.LongTensor | None = None
    sampled_token_indices: torch.LongTensor | None = None
    token_mask: torch.LongTensor | None = None


@dataclass
class AtsCLIPVisionProjectionOutput(CLIPVisionModelOutput):
    num_tokens: torch.LongTensor | None = None
    sampled_token_indices: torch.LongTensor | None = None
    token_mask: torch.LongTensor | None = None


@dataclass
class AtsCLIPImageClassifierOutput(ImageClassifierOutput):
    num_tokens: torch.LongTensor | None = None
    sampled_token_indices: torch.LongTensor | None = None
    token_mask: torch.LongTensor | None = None


AtsCLIPVisionModelOutput.__doc__ = (
    "[`BaseModelOutputWithPooling`] of the ATS-CLIP vision tower; `last_hidden_state` (before `post_layernorm`, as "
    "in CLIP) holds real tokens packed to the front of each row (see `token_mask`), or the full token grid with "
    "`config.ats_dense_output`; `pooler_output` is `post_layernorm` of the CLS row.\n" + ATS_OUTPUT_DOC
)
AtsCLIPVisionProjectionOutput.__doc__ = "[`CLIPVisionModelOutput`] of ATS-CLIP.\n" + ATS_OUTPUT_DOC
AtsCLIPImageClassifierOutput.__doc__ = "[`ImageClassifierOutput`] of ATS-CLIP.\n" + ATS_OUTPUT_DOC


class AtsCLIPAttention(AtsAttentionMixin, CLIPAttention):
    """CLIP self-attention that, in an ATS layer, scores and samples tokens and attends only from the kept rows."""

    def forward(
        self, hidden_states: torch.Tensor, state: TokenState, plan: AtsLayerPlan | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None, TokenSelection | None]:
        """hidden_states: (B, L, D), layer-normed; plan: None in an ordinary layer. Returns the (B, M, D) output,
        the attention probabilities (eager only) and the kept rows (None if all were kept in place)."""
        if plan is None:
            attn_output, attn_weights = super().forward(hidden_states, state.attention_mask, **kwargs)
            return attn_output, attn_weights, None
        return self.ats_forward(hidden_states, state, plan, self.out_proj, self.scale, self.dropout, **kwargs)


class AtsCLIPEncoderLayer(CLIPEncoderLayer):
    """A CLIP encoder layer; in an ATS layer the attention samples tokens and the rest runs on kept rows only."""

    def __init__(self, config: AtsCLIPVisionConfig, layer_index: int):
        super().__init__(config)
        self.self_attn = AtsCLIPAttention(config)
        self.layer_index = layer_index

    def forward(
        self, hidden_states: torch.Tensor, state: TokenState, plan: AtsLayerPlan | None = None, **kwargs
    ) -> tuple[torch.Tensor, TokenState]:
        """(B, L, D) in -> (B, M, D) out and the state of its M rows (the input's when no row was dropped)."""
        residual = hidden_states
        attn_output, _, selection = self.self_attn(self.layer_norm1(hidden_states), state, plan, **kwargs)
        if selection is not None:
            residual, state = state.select(self.self_attn.config, selection, residual)
        hidden_states = update_real_rows(
            residual + attn_output, state.padding, lambda rows: self.mlp(self.layer_norm2(rows))
        )
        return hidden_states, state


class AtsCLIPEncoder(AtsEncoderMixin, CLIPEncoder):
    """CLIP's vision encoder: the layer loop of the ATS core over `AtsCLIPEncoderLayer`s."""

    def __init__(self, config: AtsCLIPVisionConfig):
        # CLIPEncoder.__init__ would build (and randomly initialise) plain layers only for them to be replaced.
        nn.Module.__init__(self)
        self.config = config
        self.layers = nn.ModuleList([AtsCLIPEncoderLayer(config, index) for index in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        self._init_ats_plans()

    @property
    def ats_encoder_layers(self) -> nn.ModuleList:
        return self.layers

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> AtsEncoderRun:
        """(B, N, D) embeddings (after `pre_layrnorm`) and an optional (B, N) mask (1 = real) -> `AtsEncoderRun`."""
        return self.run_layers(inputs_embeds, attention_mask, **kwargs)


class AtsCLIPPreTrainedModel(AtsPreTrainedMixin, CLIPPreTrainedModel):
    config_class = AtsCLIPVisionConfig
    config: AtsCLIPVisionConfig
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPVisionEmbeddings", "CLIPEncoderLayer", "AtsCLIPEncoderLayer"]
    # A full CLIP checkpoint carries the text tower and both projections; a vision-only class has no place for them.
    _ats_optional_weights = ("text_model.", "text_projection.", "visual_projection.", "logit_scale", "classifier.")
    _keys_to_ignore_on_load_unexpected = [
        r"^text_model\.", r"^text_projection\.", r"^visual_projection\.", r"^logit_scale$"
    ]
    _ats_expected_checkpoints = "a CLIP (CLIPModel, CLIPVisionModel, ...) or ATS-CLIP checkpoint of this architecture"
    _ats_auto_map = {
        "AutoConfig": "configuration_ats_clip.AtsCLIPVisionConfig",
        "AutoModel": "modeling_ats_clip.AtsCLIPVisionModel",
        "AutoModelForImageClassification": "modeling_ats_clip.AtsCLIPForImageClassification",
    }


class AtsCLIPVisionModel(AtsCLIPPreTrainedModel, CLIPVisionModel):
    """[`CLIPVisionModel`] with Adaptive Token Sampling in `config.ats_layers`."""

    def __init__(self, config: AtsCLIPVisionConfig):
        AtsCLIPPreTrainedModel.__init__(self, config)
        config.check_ats_settings()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = AtsCLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()
        self._resolve_ats_plans()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = False,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> AtsCLIPVisionModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images, as from a CLIP image processor.
        interpolate_pos_encoding (`bool`, *optional*):
            Interpolate position embeddings to the input size; K defaults then follow the actual token count.
        attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
            1 for tokens to attend to, 0 for tokens to ignore (CLS first, never 0). Ignored tokens are never kept.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required.")
        hidden_states = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        run: AtsEncoderRun = self.encoder(self.pre_layrnorm(hidden_states), attention_mask, **kwargs)
        pooled_output = self.post_layernorm(run.hidden_states[:, 0, :])
        if run.dense_hidden_states is not None:
            last_hidden_state, token_mask = run.dense_hidden_states, attention_mask
        else:
            last_hidden_state, token_mask = run.hidden_states, run.state.token_mask
        return AtsCLIPVisionModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            num_tokens=run.num_tokens,
            sampled_token_indices=run.sampled_token_indices,
            token_mask=_as_long_mask(token_mask, last_hidden_state),
        )


def _as_long_mask(token_mask: torch.Tensor | None, hidden_states: torch.Tensor) -> torch.Tensor:
    """(B, M) 0/1 long mask of real rows for (B, M, D) hidden states (all ones when `token_mask` is None)."""
    if token_mask is None:
        return torch.ones(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
    return token_mask.long()


class AtsCLIPVisionModelWithProjection(AtsCLIPPreTrainedModel, CLIPVisionModelWithProjection):
    """[`CLIPVisionModelWithProjection`] (image embeddings) with Adaptive Token Sampling in `config.ats_layers`."""

    _ats_optional_weights = ("text_model.", "text_projection.", "logit_scale", "classifier.")
    _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^text_projection\.", r"^logit_scale$"]

    def __init__(self, config: AtsCLIPVisionConfig):
        AtsCLIPPreTrainedModel.__init__(self, config)
        self.vision_model = AtsCLIPVisionModel._from_config(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.post_init()

    def _init_weights(self, module):
        """CLIP's initialisation, the projection's applied to the projection itself (transformers skips a custom
        model's own call when it holds no parameter directly)."""
        super()._init_weights(module)
        if module is self.visual_projection:
            init.normal_(module.weight, std=self.config.hidden_size**-0.5 * self.config.initializer_factor)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> AtsCLIPVisionProjectionOutput:
        """Arguments as in [`AtsCLIPVisionModel.forward`]; `image_embeds` (B, projection_dim) is the projected
        pooled CLS row."""
        outputs: AtsCLIPVisionModelOutput = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, attention_mask=attention_mask, **kwargs
        )
        return AtsCLIPVisionProjectionOutput(
            image_embeds=self.visual_projection(outputs.pooler_output),
            last_hidden_state=outputs.last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            num_tokens=outputs.num_tokens,
            sampled_token_indices=outputs.sampled_token_indices,
            token_mask=outputs.token_mask,
        )


class AtsCLIPForImageClassification(AtsCLIPPreTrainedModel, CLIPForImageClassification):
    """[`CLIPForImageClassification`] with Adaptive Token Sampling in `config.ats_layers`: a linear head on the mean of
    the patch tokens the last layer kept.

    Unlike upstream, its config is the vision config ([`AtsCLIPVisionConfig`], which reads a full CLIP config's
    vision part and labels), so that the ATS settings, geometry and labels are on `model.config`."""

    base_model_prefix = "vision_model"

    def __init__(self, config: AtsCLIPVisionConfig):
        AtsCLIPPreTrainedModel.__init__(self, config)
        self.num_labels = config.num_labels
        self.vision_model = AtsCLIPVisionModel._from_config(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def _init_weights(self, module):
        """CLIP's initialisation. The head's is upstream's, applied to the head itself: upstream's code reads a
        composite config, and transformers skips a custom model's own call when it holds no parameter directly."""
        if module is self:
            return
        super()._init_weights(module)
        if module is self.classifier and isinstance(module, nn.Linear):
            init.normal_(module.weight, std=self.config.hidden_size**-0.5 * self.config.initializer_factor)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> AtsCLIPImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices for the loss (regression if `num_labels == 1`).
        Other arguments as in [`AtsCLIPVisionModel.forward`].
        """
        outputs: AtsCLIPVisionModelOutput = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, attention_mask=attention_mask, **kwargs
        )
        patches = outputs.last_hidden_state[:, 1:]
        weights = _kept_patch_mask(outputs, self.config.ats_dense_output).to(patches.dtype)
        pooled = (patches * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True)
        logits = self.classifier(pooled)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return AtsCLIPImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            num_tokens=outputs.num_tokens,
            sampled_token_indices=outputs.sampled_token_indices,
            token_mask=outputs.token_mask,
        )


def _kept_patch_mask(outputs: AtsCLIPVisionModelOutput, dense_output: bool) -> torch.Tensor:
    """(B, P') 0/1 mask of the patch rows of `last_hidden_state` the last layer computed: the real rows when they
    are packed; on the dense grid, the positions the last ATS layer kept."""
    patch_mask = outputs.token_mask[:, 1:]
    if not dense_output or outputs.sampled_token_indices is None:
        return patch_mask
    kept = outputs.sampled_token_indices[:, -1]
    grid = torch.zeros_like(patch_mask)
    return grid.scatter(1, kept.clamp(min=0), (kept >= 0).to(grid.dtype))


class AtsCLIPModel(AtsPreTrainedMixin, CLIPModel):
    """[`CLIPModel`] whose vision tower is [`AtsCLIPVisionModel`] (ATS settings on `config.vision_config`); the text
    tower and the contrastive head are CLIP's. The vision tower's ATS outputs are in `vision_model_output`."""

    config_class = AtsCLIPConfig
    config: AtsCLIPConfig
    _no_split_modules = AtsCLIPPreTrainedModel._no_split_modules
    _ats_optional_weights = ()
    _ats_expected_checkpoints = "a CLIPModel or ATS-CLIP checkpoint of the same architecture"
    _ats_auto_map = {
        "AutoConfig": "configuration_ats_clip.AtsCLIPConfig",
        "AutoModel": "modeling_ats_clip.AtsCLIPModel",
        "AutoModelForZeroShotImageClassification": "modeling_ats_clip.AtsCLIPModel",
    }

    def __init__(self, config: AtsCLIPConfig):
        # CLIPModel.__init__ would build a plain vision tower only for it to be replaced.
        CLIPPreTrainedModel.__init__(self, config)
        self.projection_dim = config.projection_dim
        self.text_embed_dim = config.text_config.hidden_size
        self.vision_embed_dim = config.vision_config.hidden_size
        self.text_model = CLIPTextModel._from_config(config.text_config)
        self.vision_model = AtsCLIPVisionModel._from_config(config.vision_config)
        self.visual_projection = nn.Linear(self.vision_embed_dim, self.projection_dim, bias=False)
        self.text_projection = nn.Linear(self.text_embed_dim, self.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    @property
    def ats_settings(self) -> dict:
        """The vision tower's ATS settings (see [`AtsCLIPVisionModel.set_ats`])."""
        return self.vision_model.ats_settings

    def set_ats(self, **settings) -> dict:
        """Switch ATS on the vision tower; arguments and return value as [`AtsCLIPVisionModel.set_ats`]."""
        return self.vision_model.set_ats(**settings)

    def _resolve_ats_plans(self) -> None:
        self.vision_model._resolve_ats_plans()


# Standalone CLIPVisionModel checkpoints (and full CLIP ones, read by a vision-only class) name weights
# `vision_model.embeddings...`; transformers renames them through a mapping keyed by class name, which subclasses do not
# inherit: register it.
register_checkpoint_conversion_mapping(
    "AtsCLIPVisionModel", get_checkpoint_conversion_mapping("CLIPVisionModel"), overwrite=True
)

__all__ = [
    "AtsCLIPForImageClassification",
    "AtsCLIPImageClassifierOutput",
    "AtsCLIPModel",
    "AtsCLIPPreTrainedModel",
    "AtsCLIPVisionModel",
    "AtsCLIPVisionModelOutput",
    "AtsCLIPVisionModelWithProjection",
    "AtsCLIPVisionProjectionOutput",
]
