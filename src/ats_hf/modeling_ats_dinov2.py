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

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
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
class AtsDinov2ModelOutput(BaseModelOutputWithPooling):
    num_tokens: torch.LongTensor | None = None
    sampled_token_indices: torch.LongTensor | None = None
    token_mask: torch.LongTensor | None = None


@dataclass
class AtsDinov2ImageClassifierOutput(ImageClassifierOutput):
    num_tokens: torch.LongTensor | None = None
    sampled_token_indices: torch.LongTensor | None = None
    token_mask: torch.LongTensor | None = None


AtsDinov2ModelOutput.__doc__ = (
    "[`BaseModelOutputWithPooling`] of ATS-DINOv2; `last_hidden_state` holds real tokens (CLS, registers, kept "
    "patches) packed to the front of each row (see `token_mask`), or the full token grid with "
    "`config.ats_dense_output`; `pooler_output` is the layer-normed CLS token, as upstream.\n" + ATS_OUTPUT_DOC
)
AtsDinov2ImageClassifierOutput.__doc__ = "[`ImageClassifierOutput`] of ATS-DINOv2.\n" + ATS_OUTPUT_DOC


def upstream_prefix(config: AtsDinov2Config) -> str:
    """The attribute (and weight-name prefix) of the backbone in upstream's classifier of this flavour."""
    return "dinov2_with_registers" if config.num_register_tokens else "dinov2"


class AtsDinov2Attention(AtsAttentionMixin, Dinov2Attention):
    """DINOv2 self-attention that, in an ATS layer, scores and samples tokens and attends only from the kept rows."""

    def forward(
        self, hidden_states: torch.Tensor, state: TokenState, plan: AtsLayerPlan | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None, TokenSelection | None]:
        """hidden_states: (B, L, D), layer-normed; plan: None in an ordinary layer. Returns the (B, M, D) output,
        the attention probabilities (eager only) and the kept rows (None if all were kept in place)."""
        if plan is None:
            attn_output, attn_weights = super().forward(hidden_states, state.attention_mask, **kwargs)
            return attn_output, attn_weights, None
        return self.ats_forward(hidden_states, state, plan, self.o_proj, self.scaling, self.attention_dropout, **kwargs)


class AtsDinov2Layer(Dinov2Layer):
    """A DINOv2 block; in an ATS layer the attention samples tokens and the rest runs on kept rows only."""

    def __init__(self, config: AtsDinov2Config, layer_index: int):
        super().__init__(config)
        self.attention = AtsDinov2Attention(config)
        self.layer_index = layer_index
        self.stochastic_depth = config.drop_path_rate > 0.0

    def forward(
        self, hidden_states: torch.Tensor, state: TokenState, plan: AtsLayerPlan | None = None, **kwargs
    ) -> tuple[torch.Tensor, TokenState]:
        """(B, L, D) in -> (B, M, D) out and the state of its M rows (the input's when no row was dropped)."""
        residual = hidden_states
        attn_output, _, selection = self.attention(self.norm1(hidden_states), state, plan, **kwargs)
        if selection is not None:
            residual, state = state.select(self.attention.config, selection, residual)
        hidden_states = self.drop_path(self.layer_scale1(attn_output)) + residual
        # Stochastic depth drops an image's whole branch: in training it needs the (B, M, D) rows, not packed ones.
        padding = None if self.training and self.stochastic_depth else state.padding
        hidden_states = update_real_rows(
            hidden_states, padding, lambda rows: self.drop_path(self.layer_scale2(self.mlp(self.norm2(rows))))
        )
        return hidden_states, state


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
    ) -> AtsDinov2ModelOutput:
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
        sequence_output = self.layernorm(run.hidden_states)
        pooler_output = sequence_output[:, 0]
        token_mask = run.state.token_mask
        if run.dense_hidden_states is not None:
            sequence_output = self.layernorm(run.dense_hidden_states)
            token_mask = attention_mask
        if token_mask is None:
            token_mask = torch.ones(sequence_output.shape[:2], dtype=torch.long, device=sequence_output.device)
        return AtsDinov2ModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=pooler_output,
            num_tokens=run.num_tokens,
            sampled_token_indices=run.sampled_token_indices,
            token_mask=token_mask.long(),
        )


def kept_patch_mask(outputs: AtsDinov2ModelOutput, num_special: int, dense_grid: bool) -> torch.Tensor:
    """(B, P) bool: the rows of `last_hidden_state[:, num_special:]` that hold a patch token the last layer kept.

    Packed output: the real rows (`token_mask`). Dense grid: the patch positions the last ATS layer kept (all real
    positions without ATS layers), so that a head pools the kept tokens alone, as it does without the grid."""
    real = outputs.token_mask[:, num_special:].bool()
    if not dense_grid or outputs.sampled_token_indices is None:
        return real
    last_kept = outputs.sampled_token_indices[:, -1]
    num_patches = real.shape[1]
    spare = torch.zeros(real.shape[0], num_patches + 1, dtype=torch.bool, device=real.device)
    return spare.scatter_(1, last_kept.masked_fill(last_kept < 0, num_patches), True)[:, :num_patches]


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
    ) -> AtsDinov2ImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices for the loss (regression if `num_labels == 1`).
        Other arguments as in [`AtsDinov2Model.forward`].
        """
        outputs: AtsDinov2ModelOutput = self.base_model(pixel_values, attention_mask=attention_mask, **kwargs)
        num_special = self.config.ats_num_special_tokens
        hidden_states = outputs.last_hidden_state
        patch_mask = kept_patch_mask(outputs, num_special, self.config.ats_dense_output)
        weights = patch_mask.to(hidden_states.dtype)[..., None]
        patch_sum = (hidden_states[:, num_special:] * weights).sum(dim=1)
        patch_mean = patch_sum / weights.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(torch.cat([hidden_states[:, 0], patch_mean], dim=1))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return AtsDinov2ImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            num_tokens=outputs.num_tokens,
            sampled_token_indices=outputs.sampled_token_indices,
            token_mask=outputs.token_mask,
        )


# Older DINOv2 checkpoints (both flavours) use the split attention names (`attention.attention.query`) and, with
# SwiGLU, a fused `mlp.weights_in`. transformers renames them through a mapping keyed by class name, which subclasses
# do not inherit: register it. (Dinov2WithRegistersModel's mapping is the same list.)
register_checkpoint_conversion_mapping(
    "AtsDinov2Model", get_checkpoint_conversion_mapping("Dinov2Model"), overwrite=True
)

__all__ = [
    "AtsDinov2Encoder",
    "AtsDinov2ForImageClassification",
    "AtsDinov2ImageClassifierOutput",
    "AtsDinov2Model",
    "AtsDinov2ModelOutput",
    "AtsDinov2PreTrainedModel",
    "kept_patch_mask",
]
