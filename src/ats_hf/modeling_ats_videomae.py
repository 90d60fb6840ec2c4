"""ATS-VideoMAE: VideoMAE (a video transformer with no CLS token) with Adaptive Token Sampling (Fayyaz et al., ECCV
2022) for transformers.

Self-contained for the Hub: imports only torch, transformers and the ATS core beside it. The core does the scoring,
sampling, packing, layer loop and pooling; this file maps VideoMAE's layer layout (`attention.attention.query`,
`attention.output.dense`, `intermediate`, `output`) onto it and adds its head. Its input is a video, `pixel_values`
of shape (B, T, C, H, W), embedded as tubelets (a Conv3d) plus fixed sinusoidal positions.

VideoMAE has no special token (S = 0): the paper's score reads the CLS row, which does not exist here, so an ATS
layer scores every token by the attention row of the tokens' mean query (summed over heads) times its value norm,
and samples among all of them. The classifier mean-pools the tokens the last layer kept (weighted by the tokens each
stands for when `ats_merge` merges), as upstream mean-pools all of them. `sampled_token_indices` are positions in
the (time, rows, columns) tubelet grid, flattened.
"""

import torch
from torch import nn
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.videomae.modeling_videomae import (
    VideoMAEAttention,
    VideoMAEEmbeddings,
    VideoMAEForVideoClassification,
    VideoMAELayer,
    VideoMAEModel,
    VideoMAEPreTrainedModel,
)

from .configuration_ats_videomae import AtsVideoMAEConfig
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


class AtsVideoMAEAttention(AtsAttentionMixin, VideoMAEAttention):
    """VideoMAE's attention block (self-attention `attention` and output projection `output.dense`, weights named as
    upstream) that, in an ATS layer, scores and samples tubelets by the mean query and attends only from the kept
    rows. Upstream's self-attention takes no mask, so every layer attends through the core (`ats_attend`), which
    masks the padding that batches of videos keeping different counts have."""

    ats_output_projection_attribute = "output_projection"
    ats_dropout_attribute = "dropout_probability"
    ats_upstream_takes_mask = False
    is_causal = False  # read by transformers' attention functions from the module they are given (this one)

    @property
    def config(self) -> AtsVideoMAEConfig:
        return self.attention.config

    @property
    def q_proj(self) -> nn.Linear:
        return self.attention.query

    @property
    def k_proj(self) -> nn.Linear:
        return self.attention.key

    @property
    def v_proj(self) -> nn.Linear:
        return self.attention.value

    @property
    def output_projection(self) -> nn.Linear:
        return self.output.dense

    @property
    def head_dim(self) -> int:
        return self.attention.attention_head_size

    @property
    def scaling(self) -> float:
        return self.attention.scaling

    @property
    def dropout_probability(self) -> float:
        return self.attention.dropout_prob


class AtsVideoMAELayer(AtsLayerMixin, VideoMAELayer):
    """A VideoMAE encoder layer (pre-norm); in an ATS layer the attention samples tubelets and the rest runs on kept
    rows only."""

    ats_attention_class = AtsVideoMAEAttention
    ats_attention_norm_attribute = "layernorm_before"

    def ats_attention_update(self, attn_output):
        return self.attention.output.dropout(attn_output)

    def ats_mlp_update(self, rows):
        return self.output.dropout(self.output.dense(self.intermediate(self.layernorm_after(rows))))


class AtsVideoMAEPreTrainedModel(AtsPreTrainedMixin, VideoMAEPreTrainedModel):
    config_class = AtsVideoMAEConfig
    config: AtsVideoMAEConfig
    _no_split_modules = ["VideoMAEEmbeddings", "AtsVideoMAELayer"]
    _can_record_outputs = {"hidden_states": AtsVideoMAELayer, "attentions": AtsVideoMAEAttention}
    # Task heads, and what a pre-training checkpoint (VideoMAEForPreTraining) carries beyond the encoder.
    _ats_optional_weights = ("classifier.", "fc_norm.", "encoder_to_decoder.", "decoder.", "mask_token")
    _ats_expected_checkpoints = "a VideoMAE (model_type 'videomae') or ATS-VideoMAE checkpoint of the same architecture"


class AtsVideoMAEModel(AtsBaseModelMixin, AtsVideoMAEPreTrainedModel, VideoMAEModel):
    """[`VideoMAEModel`] with Adaptive Token Sampling in `config.ats_layers` over the space-time tubelet tokens (no
    special token: the mean query scores). `last_hidden_state` holds the kept tubelets packed to the front (see
    `token_mask`), after the final norm when `use_mean_pooling` is False, as upstream."""

    ats_embedding_options = ("bool_masked_pos",)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> AtsModelOutput:
        """Upstream's arguments (`pixel_values`: (B, T, C, H, W) videos; `bool_masked_pos` (B, tubelets) removes the
        masked tubelets before the first layer, the same number per video, as upstream: token positions then count
        the visible tubelets), and the core's `attention_mask` over the (B, tubelets) tokens (see
        `AtsBaseModelMixin.forward`); with `bool_masked_pos`, a mask over every tubelet is read at the visible ones,
        and one over the visible tubelets as it is."""
        if bool_masked_pos is not None and attention_mask is not None and attention_mask.shape == bool_masked_pos.shape:
            attention_mask = attention_mask[~bool_masked_pos.bool()].view(attention_mask.shape[0], -1)
        return super().forward(pixel_values, bool_masked_pos=bool_masked_pos, attention_mask=attention_mask, **kwargs)

    def ats_build(self, config):
        self.embeddings = VideoMAEEmbeddings(config)
        self.encoder = AtsLayerStack(config, AtsVideoMAELayer, "layer")
        final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm = None if config.use_mean_pooling else final_norm

    @property
    def ats_encoder_layers(self):
        return self.encoder.layer

    def ats_embed(self, pixel_values, bool_masked_pos=None):
        expected_dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        return self.embeddings(pixel_values.to(expected_dtype), bool_masked_pos)

    def ats_final_norm(self, hidden_states):
        return hidden_states if self.layernorm is None else self.layernorm(hidden_states)


class AtsVideoMAEForVideoClassification(
    AtsClassifierMixin, AtsVideoMAEPreTrainedModel, VideoMAEForVideoClassification
):
    """[`VideoMAEForVideoClassification`] with Adaptive Token Sampling in `config.ats_layers`: upstream's head,
    `fc_norm` and a linear layer on the mean of the final tokens, here the mean of the tokens the last layer kept
    (padding left out; each weighing as the tokens it stands for under `ats_merge`), which is upstream's mean when no
    token is dropped. Upstream's other head (`use_mean_pooling=False`) reads the first token, which ATS may drop:
    that combination is refused."""

    ats_base_model_class = AtsVideoMAEModel

    def ats_build_heads(self, config):
        self.fc_norm = nn.LayerNorm(config.hidden_size) if config.use_mean_pooling else None
        self.classifier = linear_head(config.hidden_size, config)

    def ats_logits(self, outputs):
        config = self.config
        if self.fc_norm is None:
            if config.ats_layers:
                raise ValueError(
                    f"use_mean_pooling=False reads the first token, which ATS layers {list(config.ats_layers)} may "
                    "drop; use a mean-pooling VideoMAE (use_mean_pooling=True, the Hub's classifiers) or ats_layers=[]."
                )
            return {"logits": self.classifier(outputs.last_hidden_state[:, 0])}
        pooled = mean_of_kept_patches(outputs, 0, config.ats_dense_output)
        return {"logits": self.classifier(self.fc_norm(pooled))}


# Older VideoMAE checkpoints on the Hub carry separate `q_bias` / `v_bias`; transformers renames them through a mapping
# keyed by model type or class name, which neither this model type nor these subclasses match: register it.
register_checkpoint_conversion_mapping(
    "AtsVideoMAEModel", get_checkpoint_conversion_mapping("videomae"), overwrite=True
)

__all__ = ["AtsVideoMAEForVideoClassification", "AtsVideoMAEModel", "AtsVideoMAEPreTrainedModel"]
