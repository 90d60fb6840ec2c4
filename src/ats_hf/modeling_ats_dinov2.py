"""ATS-DINOv2: DINOv2 (with or without register tokens) with Adaptive Token Sampling (Fayyaz et al., ECCV 2022).

Self-contained for the Hub: imports only torch, transformers and the ATS core beside it (`.modeling_ats_core`,
`.configuration_ats_dinov2`). The core does the scoring, sampling and packing; this file adds DINOv2's layer layout
(layer scale, stochastic depth, MLP or SwiGLU) and its head. One config and one pair of models serve both upstream
types: `num_register_tokens` > 0 selects the embeddings (and the weight names) of DINOv2 with registers.

Tokens: CLS, then `num_register_tokens` registers, then patches. The S = 1 + num_register_tokens special tokens are
always kept and never scored; CLS's attention row scores the patches.

Shapes: B = batch, L = tokens entering a layer (S special tokens first), M = rows a layer outputs, P = patch tokens,
D = hidden size.
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
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_ats_dinov2 import AtsDinov2Config
from .modeling_ats_core import (
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


def upstream_prefix(config: AtsDinov2Config) -> str:
    """The attribute (and weight-name prefix) of the backbone in upstream's classifier of this flavour."""
    return "dinov2_with_registers" if config.num_register_tokens else "dinov2"


class AtsDinov2Attention(AtsAttentionMixin, Dinov2Attention):
    """DINOv2 self-attention that, in an ATS layer, scores and samples tokens and attends only from the kept rows."""


class AtsDinov2Layer(AtsLayerMixin, Dinov2Layer):
    """A DINOv2 block (layer scale, stochastic depth, MLP or SwiGLU); in an ATS layer the attention samples tokens and
    the rest runs on kept rows only."""

    ats_attention_class = AtsDinov2Attention

    def ats_attention_branch(self, hidden_states, state, plan, **kwargs):
        attn_output, _, selection = self.attention(self.norm1(hidden_states), state, plan, **kwargs)
        return attn_output, selection

    def ats_attention_update(self, attn_output):
        return self.drop_path(self.layer_scale1(attn_output))

    def ats_mlp_update(self, rows):
        return self.drop_path(self.layer_scale2(self.mlp(self.norm2(rows))))

    def ats_mlp_padding(self, state):
        # Stochastic depth drops an image's whole branch: in training it needs the (B, M, D) rows, not packed ones.
        return None if self.training and self.attention.config.drop_path_rate > 0.0 else state.padding


class AtsDinov2Encoder(AtsEncoderMixin, nn.Module):
    """The encoder layers, under upstream's names (`encoder.layer.N`), and the ATS layer loop."""

    def __init__(self, config: AtsDinov2Config):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([AtsDinov2Layer(config, index) for index in range(config.num_hidden_layers)])
        self._init_ats_plans()

    @property
    def ats_encoder_layers(self) -> nn.ModuleList:
        return self.layer

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """(B, N, D) embeddings and a (B, N) mask (1 = real) -> an `AtsEncoderRun` (see `run_layers`)."""
        return self.run_layers(hidden_states, attention_mask, **kwargs)


class AtsDinov2PreTrainedModel(AtsPreTrainedMixin, Dinov2PreTrainedModel):
    config_class = AtsDinov2Config
    config: AtsDinov2Config
    _no_split_modules = ["Dinov2Embeddings", "Dinov2WithRegistersEmbeddings", "AtsDinov2Layer"]
    _ats_optional_weights = ("classifier.",)
    _ats_expected_checkpoints = (
        "a DINOv2 (dinov2 or dinov2_with_registers) or ATS-DINOv2 checkpoint of the same architecture"
    )
    _ats_auto_map = {
        "AutoConfig": "configuration_ats_dinov2.AtsDinov2Config",
        "AutoModel": "modeling_ats_dinov2.AtsDinov2Model",
        "AutoModelForImageClassification": "modeling_ats_dinov2.AtsDinov2ForImageClassification",
    }

    def _init_weights(self, module) -> None:
        """Upstream's initialisation; DINOv2's covers its own embeddings, the registers flavour's is added here."""
        super()._init_weights(module)
        if isinstance(module, Dinov2WithRegistersEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=self.config.initializer_range)
            init.trunc_normal_(module.cls_token, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.mask_token)
            init.zeros_(module.register_tokens)


class AtsDinov2Model(AtsDinov2PreTrainedModel, Dinov2Model):
    """[`Dinov2Model`] (or `Dinov2WithRegistersModel` when `config.num_register_tokens` > 0) with Adaptive Token
    Sampling in `config.ats_layers`."""

    def __init__(self, config: AtsDinov2Config):
        # Dinov2Model.__init__ would build (and randomly initialise) plain layers only for them to be replaced.
        AtsDinov2PreTrainedModel.__init__(self, config)
        config.check_ats_settings()
        # Checkpoint weight names carry the flavour's prefix; the loader strips it by this (instance) attribute.
        self.base_model_prefix = upstream_prefix(config)
        embeddings = Dinov2WithRegistersEmbeddings if config.num_register_tokens else Dinov2Embeddings
        self.embeddings = embeddings(config)
        self.encoder = AtsDinov2Encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()
        self._resolve_ats_plans()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> AtsModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images, as from a DINOv2 image processor. Position embeddings are interpolated to any size (as upstream);
            K defaults then follow the actual token count.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
            Patches to replace by the mask token.
        attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
            1 for tokens to attend to, 0 for tokens to ignore (CLS, registers, patches; CLS never 0). Ignored tokens
            are never kept.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required.")
        hidden_states = self.embeddings(pixel_values, bool_masked_pos=bool_masked_pos)
        run: AtsEncoderRun = self.encoder(hidden_states, attention_mask, **kwargs)
        sequence_output, token_mask = run.last_hidden_state(self.layernorm, attention_mask)
        return AtsModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output[:, 0],
            num_tokens=run.num_tokens,
            sampled_token_indices=run.sampled_token_indices,
            token_mask=token_mask,
        )


class AtsDinov2ForImageClassification(AtsDinov2PreTrainedModel, Dinov2ForImageClassification):
    """[`Dinov2ForImageClassification`] (or the registers flavour) with Adaptive Token Sampling in
    `config.ats_layers`.

    The head is upstream's linear layer on concat(CLS, mean of patch tokens); the mean is over the patch tokens the
    last layer kept (padding rows and registers excluded), which is upstream's mean when no token is dropped."""

    def __init__(self, config: AtsDinov2Config):
        AtsDinov2PreTrainedModel.__init__(self, config)
        self.base_model_prefix = upstream_prefix(config)
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, AtsDinov2Model(config))
        self.classifier = (
            nn.Linear(config.hidden_size * 2, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> AtsImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices for the loss (regression if `num_labels == 1`).
        Other arguments as in [`AtsDinov2Model.forward`].
        """
        outputs: AtsModelOutput = self.base_model(pixel_values, attention_mask=attention_mask, **kwargs)
        config = self.config
        patch_mean = mean_of_kept_patches(outputs, config.ats_num_special_tokens, config.ats_dense_output)
        logits = self.classifier(torch.cat([outputs.last_hidden_state[:, 0], patch_mean], dim=1))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return AtsImageClassifierOutput(loss=loss, logits=logits, **ats_output_fields(outputs))


# Older DINOv2 checkpoints (both flavours) use the split attention names (`attention.attention.query`) and, with
# SwiGLU, a fused `mlp.weights_in`. transformers renames them through a mapping keyed by class name, which subclasses
# do not inherit: register it. (Dinov2WithRegistersModel's mapping is the same list.)
register_checkpoint_conversion_mapping(
    "AtsDinov2Model", get_checkpoint_conversion_mapping("Dinov2Model"), overwrite=True
)

__all__ = [
    "AtsDinov2Encoder",
    "AtsDinov2ForImageClassification",
    "AtsDinov2Model",
    "AtsDinov2PreTrainedModel",
]
