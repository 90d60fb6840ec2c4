"""ATS-CLIP: CLIP whose vision tower uses Adaptive Token Sampling (Fayyaz et al., ECCV 2022), for transformers.

Self-contained for the Hub: imports only torch, transformers and the ATS core beside it. The core does the scoring,
sampling, packing, layer loop and heads; this file adds CLIP's vision layout (class embedding + patches,
`pre_layrnorm`, encoder layers, `post_layernorm` on the CLS row only). The one special token is CLS. The text tower
is CLIP's own.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.clip.modeling_clip import (
    CLIPAttention,
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
from transformers.utils.generic import can_return_tuple

from .configuration_ats_clip import AtsCLIPConfig, AtsCLIPVisionConfig
from .modeling_ats_core import (
    ATS_OUTPUT_DOC,
    AtsAttentionMixin,
    AtsBaseModelMixin,
    AtsClassifierMixin,
    AtsLayerMixin,
    AtsLayerStack,
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
    ats_attention_norm_attribute = "layer_norm1"

    def ats_attention_update(self, attn_output):
        return attn_output

    def ats_mlp_update(self, rows):
        return self.mlp(self.layer_norm2(rows))


class AtsCLIPPreTrainedModel(AtsPreTrainedMixin, CLIPPreTrainedModel):
    config_class = AtsCLIPVisionConfig
    config: AtsCLIPVisionConfig
    _no_split_modules = ["CLIPTextEmbeddings", "CLIPVisionEmbeddings", "CLIPEncoderLayer", "AtsCLIPEncoderLayer"]
    # A full CLIP checkpoint carries the text tower and both projections; a vision-only class has no place for them.
    _ats_optional_weights = ("text_model.", "text_projection.", "visual_projection.", "logit_scale", "classifier.")
    _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^text_projection\.", r"^visual_projection\.",
                                          r"^logit_scale$"]
    _ats_expected_checkpoints = "a CLIP (CLIPModel, CLIPVisionModel, ...) or ATS-CLIP checkpoint of this architecture"

    def _init_weights(self, module):
        """CLIP's initialisation; upstream's for the projection and the classifier head is applied to those modules
        themselves (upstream's reads a composite config, and transformers skips a custom model's own call when it
        holds no parameter directly)."""
        if isinstance(module, CLIPForImageClassification):
            return
        super()._init_weights(module)
        heads = (getattr(self, "visual_projection", None), getattr(self, "classifier", None))
        if isinstance(module, nn.Linear) and any(module is head for head in heads):
            init.normal_(module.weight, std=self.config.hidden_size**-0.5 * self.config.initializer_factor)


class AtsCLIPVisionModel(AtsBaseModelMixin, AtsCLIPPreTrainedModel, CLIPVisionModel):
    """[`CLIPVisionModel`] with Adaptive Token Sampling in `config.ats_layers`. `last_hidden_state` is the encoder's
    output itself, as upstream; `post_layernorm` is applied to the pooled CLS row only."""

    ats_embedding_options = ("interpolate_pos_encoding",)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> AtsModelOutput:
        """Upstream's arguments, and the core's `attention_mask` (see `AtsBaseModelMixin.forward`)."""
        return super().forward(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding,
                               attention_mask=attention_mask, **kwargs)

    def ats_build(self, config):
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = AtsLayerStack(config, AtsCLIPEncoderLayer, "layers")
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @property
    def ats_encoder_layers(self):
        return self.encoder.layers

    def ats_embed(self, pixel_values, **options):
        return self.pre_layrnorm(self.embeddings(pixel_values, **options))

    def ats_final_norm(self, hidden_states):
        return hidden_states

    def ats_pool(self, sequence_output):
        return self.post_layernorm(sequence_output[:, 0, :])


class AtsCLIPVisionModelWithProjection(AtsCLIPPreTrainedModel, CLIPVisionModelWithProjection):
    """[`CLIPVisionModelWithProjection`] (image embeddings) with Adaptive Token Sampling in `config.ats_layers`."""

    _ats_optional_weights = ("text_model.", "text_projection.", "logit_scale", "classifier.")
    _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^text_projection\.", r"^logit_scale$"]

    def __init__(self, config: AtsCLIPVisionConfig):
        self._ats_init(config)
        self.vision_model = AtsCLIPVisionModel(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> AtsCLIPVisionProjectionOutput:
        """Arguments as in [`AtsCLIPVisionModel.forward`]; `image_embeds` (B, projection_dim) is the projected
        pooled CLS row."""
        outputs: AtsModelOutput = self.vision_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, attention_mask=attention_mask, **kwargs
        )
        return self.ats_task_output(outputs)

    def ats_task_output(self, outputs: AtsModelOutput) -> AtsCLIPVisionProjectionOutput:
        """This model's output from its vision model's `outputs`: their pooled CLS row projected."""
        return AtsCLIPVisionProjectionOutput(
            image_embeds=self.visual_projection(outputs.pooler_output),
            last_hidden_state=outputs.last_hidden_state,
            **ats_output_fields(outputs),
        )


class AtsCLIPForImageClassification(AtsClassifierMixin, AtsCLIPPreTrainedModel, CLIPForImageClassification):
    """[`CLIPForImageClassification`] with Adaptive Token Sampling in `config.ats_layers`: a linear head on the mean of
    the patch tokens the last layer kept.

    Unlike upstream, its config is the vision config ([`AtsCLIPVisionConfig`], which reads a full CLIP config's
    vision part and labels), so that the ATS settings, geometry and labels are on `model.config`."""

    base_model_prefix = "vision_model"
    ats_base_model_class = AtsCLIPVisionModel

    def ats_logits(self, outputs):
        return {"logits": self.classifier(mean_of_kept_patches(outputs, 1, self.config.ats_dense_output))}


class AtsCLIPModel(AtsPreTrainedMixin, CLIPModel):
    """[`CLIPModel`] whose vision tower is [`AtsCLIPVisionModel`] (ATS settings on `config.vision_config`); the text
    tower and the contrastive head are CLIP's. The vision tower's ATS outputs are in `vision_model_output`."""

    config_class = AtsCLIPConfig
    config: AtsCLIPConfig
    _no_split_modules = AtsCLIPPreTrainedModel._no_split_modules
    _ats_optional_weights = ()
    _ats_expected_checkpoints = "a CLIPModel or ATS-CLIP checkpoint of the same architecture"

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
    def ats_settings(self):
        """The vision tower's ATS settings (see [`AtsCLIPVisionModel.set_ats`])."""
        return self.vision_model.ats_settings

    def set_ats(self, settings=None, /, **changes):
        """Switch ATS on the vision tower; arguments and return value as [`AtsCLIPVisionModel.set_ats`]."""
        return self.vision_model.set_ats(settings, **changes)

    def ats_image_embedder(self) -> AtsCLIPVisionModelWithProjection:
        """The vision tower and visual projection as an [`AtsCLIPVisionModelWithProjection`] (built on the meta device,
        sharing their modules and config, so settings apply to both): `image_embeds` are this model's image features."""
        with torch.device("meta"):
            embedder = AtsCLIPVisionModelWithProjection(self.vision_model.config)
        embedder.vision_model, embedder.visual_projection = self.vision_model, self.visual_projection
        return embedder.eval()


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
