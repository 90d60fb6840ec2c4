"""ATS-DINOv2: DINOv2 (with or without register tokens) with Adaptive Token Sampling (Fayyaz et al., ECCV 2022).

Self-contained for the Hub: imports only torch, transformers and the ATS core beside it. The core does the scoring,
sampling, packing, layer loop and heads; this file adds DINOv2's layer layout (layer scale, stochastic depth, MLP or
SwiGLU) and its head. One config and one pair of models serve both upstream types: `num_register_tokens` > 0 selects
the embeddings (and the weight names) of DINOv2 with registers.

Tokens: CLS, then `num_register_tokens` registers, then patches. The S = 1 + num_register_tokens special tokens are
always kept and never scored; CLS's attention row scores the patches.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.dinov2.modeling_dinov2 import (
    Dinov2Attention,
    Dinov2Embeddings,
    Dinov2ForImageClassification,
    Dinov2Layer,
    Dinov2Model,
    Dinov2PreTrainedModel,
)
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import Dinov2WithRegistersEmbeddings

from .configuration_ats_dinov2 import AtsDinov2Config
from .modeling_ats_core import (
    AtsAttentionMixin,
    AtsBaseModelMixin,
    AtsClassifierMixin,
    AtsLayerMixin,
    AtsLayerStack,
    AtsModelOutput,
    AtsPreTrainedMixin,
    linear_head,
    mean_of_kept_patches,
)


class AtsDinov2Attention(AtsAttentionMixin, Dinov2Attention):
    """DINOv2 self-attention that, in an ATS layer, scores and samples tokens and attends only from the kept rows."""


class AtsDinov2Layer(AtsLayerMixin, Dinov2Layer):
    """A DINOv2 block (layer scale, stochastic depth, MLP or SwiGLU); in an ATS layer the attention samples tokens and
    the rest runs on kept rows only."""

    ats_attention_class = AtsDinov2Attention
    ats_attention_norm_attribute = "norm1"

    def ats_attention_update(self, attn_output):
        return self.drop_path(self.layer_scale1(attn_output))

    def ats_mlp_update(self, rows):
        return self.drop_path(self.layer_scale2(self.mlp(self.norm2(rows))))

    def ats_mlp_padding(self, state):
        # Stochastic depth drops an image's whole branch: in training it needs the (B, M, D) rows, not packed ones.
        return None if self.training and self.attention.config.drop_path_rate > 0.0 else state.padding


class AtsDinov2PreTrainedModel(AtsPreTrainedMixin, Dinov2PreTrainedModel):
    config_class = AtsDinov2Config
    config: AtsDinov2Config
    _no_split_modules = ["Dinov2Embeddings", "Dinov2WithRegistersEmbeddings", "AtsDinov2Layer"]
    _ats_optional_weights = ("classifier.",)
    _ats_expected_checkpoints = (
        "a DINOv2 (dinov2 or dinov2_with_registers) or ATS-DINOv2 checkpoint of the same architecture"
    )

    @classmethod
    def ats_base_model_prefix(cls, config):
        """Upstream's prefix of this flavour: checkpoint weight names carry it."""
        return "dinov2_with_registers" if config.num_register_tokens else "dinov2"

    def _init_weights(self, module) -> None:
        """Upstream's initialisation; DINOv2's covers its own embeddings, the registers flavour's is added here."""
        super()._init_weights(module)
        if isinstance(module, Dinov2WithRegistersEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=self.config.initializer_range)
            init.trunc_normal_(module.cls_token, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.mask_token)
            init.zeros_(module.register_tokens)


class AtsDinov2Model(AtsBaseModelMixin, AtsDinov2PreTrainedModel, Dinov2Model):
    """[`Dinov2Model`] (or `Dinov2WithRegistersModel` when `config.num_register_tokens` > 0) with Adaptive Token
    Sampling in `config.ats_layers`. Position embeddings are interpolated to any image size, as upstream."""

    ats_embedding_options = ("bool_masked_pos",)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> AtsModelOutput:
        """Upstream's arguments, and the core's `attention_mask` (see `AtsBaseModelMixin.forward`)."""
        return super().forward(pixel_values, bool_masked_pos=bool_masked_pos, attention_mask=attention_mask, **kwargs)

    def ats_build(self, config):
        embeddings = Dinov2WithRegistersEmbeddings if config.num_register_tokens else Dinov2Embeddings
        self.embeddings = embeddings(config)
        self.encoder = AtsLayerStack(config, AtsDinov2Layer, "layer")
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @property
    def ats_encoder_layers(self):
        return self.encoder.layer

    def ats_embed(self, pixel_values, **options):
        return self.embeddings(pixel_values, **options)

    def ats_pool(self, sequence_output):
        return sequence_output[:, 0]


class AtsDinov2ForImageClassification(AtsClassifierMixin, AtsDinov2PreTrainedModel, Dinov2ForImageClassification):
    """[`Dinov2ForImageClassification`] (or the registers flavour) with Adaptive Token Sampling in
    `config.ats_layers`: upstream's linear head on concat(CLS, mean of patch tokens), the mean over the patch tokens
    the last layer kept (padding rows and registers excluded), which is upstream's mean when no token is dropped."""

    ats_base_model_class = AtsDinov2Model

    def ats_build_heads(self, config):
        self.classifier = linear_head(2 * config.hidden_size, config)

    def ats_logits(self, outputs):
        config = self.config
        patch_mean = mean_of_kept_patches(outputs, config.ats_num_special_tokens, config.ats_dense_output)
        return {"logits": self.classifier(torch.cat([outputs.last_hidden_state[:, 0], patch_mean], dim=1))}


# Older DINOv2 checkpoints (both flavours) use the split attention names (`attention.attention.query`) and, with
# SwiGLU, a fused `mlp.weights_in`. transformers renames them through a mapping keyed by class name, which subclasses
# do not inherit: register it. (Dinov2WithRegistersModel's mapping is the same list.)
register_checkpoint_conversion_mapping(
    "AtsDinov2Model", get_checkpoint_conversion_mapping("Dinov2Model"), overwrite=True
)

__all__ = ["AtsDinov2ForImageClassification", "AtsDinov2Model", "AtsDinov2PreTrainedModel"]
