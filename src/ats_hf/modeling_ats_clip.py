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
    AtsImageClassifierOutput,
    AtsLayerMixin,
    AtsModelOutput,
    AtsPreTrainedMixin,
    ats_output_fields,
    mean_of_kept_patches,
)


@dataclass
class AtsCLIPVisionProjectionOutput(CLIPVisionModelOutput):
    num_tokens: torch.LongTensor | None = None
    sampled_token_indices: torch.LongTensor | None = None
    token_mask: torch.LongTensor | None = None


AtsCLIPVisionProjectionOutput.__doc__ = "[`CLIPVisionModelOutput`] of ATS-CLIP.\n" + ATS_OUTPUT_DOC


class AtsCLIPAttention(AtsAttentionMixin, CLIPAttention):
    """CLIP self-attention that, in an ATS layer, scores and samples tokens and attends only from the kept rows."""

    ats_output_projection_attribute = "out_proj"
    ats_scaling_attribute = "scale"
    ats_dropout_attribute = "dropout"


class AtsCLIPEncoderLayer(AtsLayerMixin, CLIPEncoderLayer):
    """A CLIP encoder layer; in an ATS layer the attention samples tokens and the rest runs on kept rows only."""

    ats_attention_attribute = "self_attn"
    ats_attention_class = AtsCLIPAttention

    def ats_attention_branch(self, hidden_states, state, plan, **kwargs):
        attn_output, _, selection = self.self_attn(self.layer_norm1(hidden_states), state, plan, **kwargs)
        return attn_output, selection

    def ats_attention_update(self, attn_output):
        return attn_output

    def ats_mlp_update(self, rows):
        return self.mlp(self.layer_norm2(rows))


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
    ) -> AtsModelOutput:
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
        # CLIP's last_hidden_state is the encoder's output itself; post_layernorm is for the pooled CLS row only.
        last_hidden_state, token_mask = run.last_hidden_state(nn.Identity(), attention_mask)
        return AtsModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=self.post_layernorm(last_hidden_state[:, 0, :]),
            num_tokens=run.num_tokens,
            sampled_token_indices=run.sampled_token_indices,
            token_mask=token_mask,
        )


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
        outputs: AtsModelOutput = self.vision_model(
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
    ) -> AtsImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices for the loss (regression if `num_labels == 1`).
        Other arguments as in [`AtsCLIPVisionModel.forward`].
        """
        outputs: AtsModelOutput = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, attention_mask=attention_mask, **kwargs
        )
        logits = self.classifier(mean_of_kept_patches(outputs, 1, self.config.ats_dense_output))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return AtsImageClassifierOutput(loss=loss, logits=logits, **ats_output_fields(outputs))


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
    "AtsCLIPModel",
    "AtsCLIPPreTrainedModel",
    "AtsCLIPVisionModel",
    "AtsCLIPVisionModelWithProjection",
    "AtsCLIPVisionProjectionOutput",
]
