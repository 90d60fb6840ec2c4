"""The ATS core every family shares: the token state between layers, ATS attention, the layer, the base model (its
layer loop, settings, strict loading, outputs) and the image classifier. The algorithm itself (scoring, sampling,
packing, merging) is in `ats_sampling.py`; a layer calls it once, through `select_tokens`. The same mixins run Token
Merging (ToMe, the peer baseline; `ats_tome_forward` of the attention, the layer and the base model), so every
family has it through the hooks it already names.

Self-contained for the Hub: imports only torch, transformers, `.ats_sampling` and `.configuration_ats_core`. A
family's modeling file (`modeling_ats_vit.py`, ...) subclasses its upstream classes with these mixins and adds only
what differs: its embeddings and norms, the names of its branches and attributes, and its heads.

Shapes: B = batch, L = tokens entering a layer (S special tokens first, CLS at 0, then P = L - S patch tokens; a
family may have S = 0: no CLS, the mean query scores, VideoMAE),
M = rows a layer outputs, N = tokens entering the first layer, D = hidden size.
"""

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.vit.modeling_vit import eager_attention_forward
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .ats_sampling import (
    PaddingLayout,
    TokenSelection,
    bipartite_merge,
    gather_rows,
    kept_patch_positions,
    merge_dropped_tokens,
    scoring_query,
    select_tokens,
    tome_schedule,
)
from .configuration_ats_core import AtsSettings, num_input_tokens, num_special_tokens


class AtsLayerPlan(NamedTuple):
    """What an ATS layer does: keep at most `max_tokens` tokens (K, special tokens included), packed into exactly
    `capacity` rows in the static mode or into the batch's largest kept count when `capacity` is None (adaptive)."""

    max_tokens: int
    capacity: int | None = None


# ----------------------------------------------------------------------------------------------------------------
# The token state between layers
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TokenState:
    """What the layers know about the rows of the (B, M, D) hidden states besides their values."""

    positions: torch.Tensor
    """(B, M) long: each row's index in the first layer's input (0 = CLS, S + p = patch p); 0 in padding rows (use
    `token_mask`: with S = 0, 0 is a patch)."""
    padding: PaddingLayout | None
    """Where the real rows are; None when every row is real."""
    attention_mask: torch.Tensor | None
    """The M rows' mask over each other, prepared for the configured attention implementation (None: no mask);
    with `sizes`, the (B, 1, 1, M) float key bias log(size)."""
    sizes: torch.Tensor | None = None
    """(B, M) float32: how many input tokens each row stands for (0 for padding), once a layer has merged tokens
    (`ats_merge`); None while every row is one token."""

    @property
    def token_mask(self) -> torch.Tensor | None:
        """(B, M) bool, True for real rows; None when every row is real."""
        return None if self.padding is None else self.padding.token_mask

    def positions_or(self, sentinel: int) -> torch.Tensor:
        """(B, M) `positions`, with `sentinel` in padding rows (a spare column for scatters: with S = 0, the 0 that
        padding rows hold is a patch)."""
        if self.padding is None:
            return self.positions
        return torch.where(self.padding.token_mask, self.positions, self.positions.new_full((), sentinel))

    def num_real(self, batch_size: int) -> torch.Tensor:
        """(B,) long: real rows per image."""
        if self.padding is None:
            return self.positions.new_full((batch_size,), self.positions.shape[1])
        return self.padding.token_mask.sum(dim=1)

    def select(self, config, selection: TokenSelection, rows: torch.Tensor) -> tuple[torch.Tensor, "TokenState"]:
        """The values and the state of the rows a layer kept.

        Args:
            selection: the kept rows (B, M) among the current L ((M,) for one input), their layout, and the keys to
                merge by (or None).
            rows: (B, L, D) the current rows' values (the layer's input, the residual).
        Returns:
            (B, M, D) the kept rows' values (merged with the tokens they absorb when merging), and their state.
        """
        kept_rows, padding = selection.kept_rows, selection.padding
        if selection.merge_keys is None:
            kept, sizes = gather_rows(rows, kept_rows), None
        else:
            kept, sizes = merge_dropped_tokens(
                rows,
                self.sizes,
                selection.merge_keys,
                kept_rows.view(rows.shape[0], -1),
                padding,
                self.token_mask,
                config.ats_merge,
                num_special_tokens(config),
            )
        if kept_rows.dim() == 1:
            positions = self.positions.index_select(1, kept_rows)
        else:
            positions = self.positions.gather(1, kept_rows)
        if padding is not None:
            positions = torch.where(padding.token_mask, positions, positions.new_zeros(()))
        return kept, TokenState(positions, padding, _self_attention_mask(config, kept, padding, sizes), sizes)

    @classmethod
    def initial(
        cls, config, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, check_mask: bool = True
    ) -> "TokenState":
        """The state of the first layer's (B, L, D) input rows under a user's (B, L) `attention_mask` (1 = real);
        `check_mask`: see `_input_padding`."""
        batch_size, num_tokens = hidden_states.shape[:2]
        positions = torch.arange(num_tokens, device=hidden_states.device).expand(batch_size, -1)
        special = num_special_tokens(config)
        padding = _input_padding(attention_mask, batch_size, num_tokens, hidden_states.device, special, check_mask)
        return cls(positions, padding, _self_attention_mask(config, hidden_states, padding))


def _input_padding(
    attention_mask: torch.Tensor | None,
    batch_size: int,
    num_tokens: int,
    device: torch.device,
    num_special: int = 1,
    check: bool = True,
) -> PaddingLayout | None:
    """A user's 2-D attention mask over input tokens as a padding layout, or None when it masks nothing. The S
    special tokens may not be masked, and a model without special tokens (S = 0) needs one real token per input: one
    host read checks that and counts the real tokens. Without `check`, none happens: the mask is taken as it is (a
    mask over a special token is not refused) and every row runs the MLP, as in the static mode."""
    if attention_mask is None:
        return None
    if attention_mask.shape != (batch_size, num_tokens):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; ATS models take a 2-D mask of shape "
            f"(batch_size, sequence_length) = ({batch_size}, {num_tokens})"
            + (", CLS first." if num_special else ".")
        )
    token_mask = attention_mask.to(device=device, dtype=torch.bool)
    if not check:
        return PaddingLayout(token_mask)
    if not num_special:
        real_per_input = token_mask.sum(dim=1)
        num_real, empty = torch.stack([real_per_input.sum(), (real_per_input == 0).sum()]).tolist()
        if empty:
            inputs = (real_per_input == 0).nonzero().flatten().tolist()
            raise ValueError(
                f"attention_mask masks every token of input(s) {inputs}; each input needs at least one token set to 1 "
                "(its tokens' mean query scores them and its output is their mean)."
            )
        return None if num_real == token_mask.numel() else PaddingLayout.from_mask(token_mask, num_real)
    special_masked = ~token_mask[:, :num_special]
    num_real, cls_masked, others_masked = torch.stack(
        [token_mask.sum(), special_masked[:, 0].sum(), special_masked[:, 1:].sum()]
    ).tolist()
    if cls_masked:
        images = special_masked[:, 0].nonzero().flatten().tolist()
        raise ValueError(
            f"attention_mask masks the CLS token (position 0) of image(s) {images}; every image needs its CLS token "
            "(its attention row scores the patches and its output is the prediction), so position 0 must be 1."
        )
    if others_masked:
        images = special_masked.any(dim=1).nonzero().flatten().tolist()
        positions = "position 1" if num_special == 2 else f"positions 1..{num_special - 1}"
        raise ValueError(
            f"attention_mask masks a special token ({positions}) of image(s) {images}; this model's first "
            f"{num_special} tokens (CLS, then the distillation token or registers) are always kept, so they must be 1."
        )
    if num_real == token_mask.numel():
        return None
    return PaddingLayout.from_mask(token_mask, num_real)


def _self_attention_mask(
    config, hidden_states: torch.Tensor, padding: PaddingLayout | None, sizes: torch.Tensor | None = None
):
    """The mask of (B, L) rows attending to themselves, for the configured attention implementation; with sizes,
    the (B, 1, 1, L) additive key bias log(size) of proportional attention (eager and sdpa take it as it is)."""
    if sizes is not None:
        return sizes.log().to(hidden_states.dtype)[:, None, None, :]
    return _attention_mask(config, hidden_states, hidden_states, None if padding is None else padding.token_mask)


def _attention_mask(config, queries: torch.Tensor, keys: torch.Tensor, token_mask: torch.Tensor | None):
    """The key-padding mask for (B, M) query rows over (B, L) key rows, for the configured attention implementation.

    Eager and sdpa take a (B, 1, 1, L) key mask that serves any number of query rows: sdpa's bool one (True: attend)
    and eager's additive one (0, or the dtype's minimum), the values transformers' mask builder gives them, in one or
    two operations instead of its sixty; none when every key is real. An exported graph gives sdpa the additive one
    too: ONNX exports sdpa under a bool mask with three more nodes per layer (a select, and a NaN guard that a key
    mask never needs: every row keeps its CLS key). Other implementations (flash, flex) get
    transformers' mask; a padding layout exists only when there is padding, so its all-real check (a device-to-host
    read) is skipped."""
    attn_implementation = config._attn_implementation
    if attn_implementation in ("eager", "sdpa"):
        if token_mask is None:
            return None
        key_mask = token_mask.view(token_mask.shape[0], 1, 1, -1)
        if attn_implementation == "sdpa" and not torch.compiler.is_exporting():
            return key_mask
        return torch.where(key_mask, queries.new_zeros(()), torch.finfo(queries.dtype).min)
    return create_bidirectional_mask(
        config=config,
        inputs_embeds=queries,
        attention_mask=token_mask,
        encoder_hidden_states=keys,
        allow_is_bidirectional_skip=token_mask is None,
    )


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------


class AtsAttentionMixin:
    """ATS for a family's self-attention module (listed before the upstream class), which provides `q_proj`,
    `k_proj`, `v_proj` (heads of `head_dim`), `config` and a `forward(hidden_states, attention_mask)`. A family whose
    output projection, scale or dropout attributes are not named as ViT's sets the `ats_*_attribute` names; one whose
    upstream `forward` takes no mask sets `ats_upstream_takes_mask = False`, and its ordinary layers attend through
    the same projections here (`ats_attend`)."""

    ats_output_projection_attribute = "o_proj"
    ats_scaling_attribute = "scaling"
    ats_dropout_attribute = "attention_dropout"
    ats_upstream_takes_mask = True

    def forward(
        self, hidden_states: torch.Tensor, state: TokenState, plan: AtsLayerPlan | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None, TokenSelection | None]:
        """hidden_states: (B, L, D), normed; plan: None in an ordinary layer (the upstream attention, under the
        state's mask). Returns the (B, M, D) output, the attention probabilities (eager only, else None) and the
        kept rows (None in an ordinary layer, or if every row was kept in place)."""
        if plan is None:
            if self.ats_upstream_takes_mask:
                attn_output, attn_weights = super().forward(hidden_states, state.attention_mask, **kwargs)
            else:
                attn_output, attn_weights, _ = self.ats_attend(hidden_states, state.attention_mask, **kwargs)
            return attn_output, attn_weights, None
        return self.ats_forward(hidden_states, state, plan, **kwargs)

    def ats_forward(
        self, hidden_states: torch.Tensor, state: TokenState, plan: AtsLayerPlan, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None, TokenSelection | None]:
        """Score and sample tokens, then attend only from the kept rows (arguments and returns as `forward`)."""
        scaling = getattr(self, self.ats_scaling_attribute)
        config = self.config
        token_mask = state.token_mask
        batch_size, num_tokens, _ = hidden_states.shape
        queries, keys, values = self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states)
        keys = keys.view(batch_size, num_tokens, -1, self.head_dim)  # (B, L, H, d)
        values = values.view(batch_size, num_tokens, -1, self.head_dim)
        key_states, value_states = keys.transpose(1, 2), values.transpose(1, 2)

        with torch.no_grad():  # the selection is discrete: no gradient flows through the scores
            num_special = num_special_tokens(config)
            num_heads = keys.shape[2]
            query = scoring_query(queries, num_heads, num_special, token_mask, state.sizes)
            selection = select_tokens(
                query, keys, values, num_heads, scaling, sampler=config.ats_sampler,
                max_tokens=plan.max_tokens, capacity=plan.capacity, num_special=num_special,
                token_mask=token_mask, sizes=state.sizes, merge=config.ats_merge is not None,
            )
        kept_rows = selection.kept_rows

        attn_implementation = config._attn_implementation
        all_rows = token_mask is not None and attn_implementation.startswith("flash")
        if not all_rows and kept_rows is not None:
            queries = gather_rows(queries, kept_rows)
        query_states = queries.view(*queries.shape[:2], -1, self.head_dim).transpose(1, 2)
        if state.sizes is None and attn_implementation not in ("eager", "sdpa"):
            mask = _attention_mask(config, queries, hidden_states, token_mask)  # flash / flex: per query row
        else:
            mask = state.attention_mask  # eager / sdpa: (B, 1, 1, L) key mask or bias, for any number of query rows
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn_implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            mask,
            dropout=0.0 if not self.training else getattr(self, self.ats_dropout_attribute),
            scaling=scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*queries.shape[:2], -1)
        if all_rows and kept_rows is not None:
            # Flash kernels unpad queries by the key mask, so they attend from every real row; keep the kept ones.
            attn_output = gather_rows(attn_output, kept_rows)
        output = getattr(self, self.ats_output_projection_attribute)(attn_output)
        return output, attn_weights, None if kept_rows is None else selection

    def ats_tome_forward(self, hidden_states: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token Merging's proportional attention through this module's projections, scale and attention
        implementation (eager or sdpa): each key's logit gets log(size).

        Args:
            hidden_states: (B, L, D) normed rows; sizes: (B, L) float32 tokens each row stands for.
        Returns:
            The (B, L, D) output and the (B, L, head_dim) keys averaged over heads (ToMe's similarity metric).
        """
        mask = _self_attention_mask(self.config, hidden_states, None, sizes)
        output, _, key_states = self.ats_attend(hidden_states, mask)
        return output, key_states.mean(dim=1)

    def ats_attend(
        self, hidden_states: torch.Tensor, mask: torch.Tensor | None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Every row attends to every row under `mask`, through this module's projections, scale and attention
        implementation. (B, L, D) normed rows -> the (B, L, D) output, the attention probabilities (eager only) and
        the (B, H, L, head_dim) keys."""
        batch_size, num_tokens, _ = hidden_states.shape
        query_states, key_states, value_states = (
            projection(hidden_states).view(batch_size, num_tokens, -1, self.head_dim).transpose(1, 2)
            for projection in (self.q_proj, self.k_proj, self.v_proj)
        )
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            mask,
            dropout=0.0 if not self.training else getattr(self, self.ats_dropout_attribute),
            scaling=getattr(self, self.ats_scaling_attribute),
            **kwargs,
        )
        output = getattr(self, self.ats_output_projection_attribute)(attn_output.reshape(batch_size, num_tokens, -1))
        return output, attn_weights, key_states


class AtsLayerMixin:
    """A pre-norm encoder layer (listed before the upstream layer class): `x + attention branch(x)`, where an ATS
    layer keeps only some rows, then `x + MLP branch(x)` on the real rows only. The family says what its branches
    are (the norm before attention, `ats_attention_norm_attribute`; `ats_attention_update`, `ats_mlp_update`) and
    where its ATS attention goes (`ats_attention_attribute`, `ats_attention_class`)."""

    ats_attention_attribute = "attention"
    ats_attention_norm_attribute: str
    ats_attention_class: type

    def __init__(self, config, layer_index: int):
        super().__init__(config)
        setattr(self, self.ats_attention_attribute, self.ats_attention_class(config))
        self.layer_index = layer_index

    def forward(
        self, hidden_states: torch.Tensor, state: TokenState, plan: AtsLayerPlan | None = None, **kwargs
    ) -> tuple[torch.Tensor, TokenState]:
        """(B, L, D) in -> (B, M, D) out and the state of its M rows (the input's when no row was dropped);
        plan: what this layer samples, if it is an ATS layer, else None."""
        residual = hidden_states
        attn_output, selection = self.ats_attention_branch(hidden_states, state, plan, **kwargs)
        if selection is not None:
            residual, state = state.select(getattr(self, self.ats_attention_attribute).config, selection, residual)
        hidden_states = self.ats_attention_update(attn_output) + residual
        return update_real_rows(hidden_states, self.ats_mlp_padding(state), self.ats_mlp_update), state

    def ats_attention_branch(self, hidden_states: torch.Tensor, state: TokenState, plan, **kwargs):
        """(B, L, D) -> the attention output (B, M, D) of the normed rows and the kept rows (or None)."""
        normed = getattr(self, self.ats_attention_norm_attribute)(hidden_states)
        attn_output, _, selection = getattr(self, self.ats_attention_attribute)(normed, state, plan, **kwargs)
        return attn_output, selection

    def ats_tome_forward(
        self, hidden_states: torch.Tensor, sizes: torch.Tensor, merged: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token Merging's block: proportional attention, its residual update, `merged` tokens merged into their most
        similar ones (the special tokens never), then the MLP branch.

        Args:
            hidden_states: (B, L, D); sizes: (B, L) float32 tokens each row stands for; merged: r, at most (L - S) // 2.
        Returns:
            (B, L - r, D) rows (special tokens first) and their (B, L - r) sizes.
        """
        attention = getattr(self, self.ats_attention_attribute)
        normed = getattr(self, self.ats_attention_norm_attribute)(hidden_states)
        attn_output, keys = attention.ats_tome_forward(normed, sizes)
        hidden_states = self.ats_attention_update(attn_output) + hidden_states
        num_special = num_special_tokens(attention.config)
        hidden_states, sizes = bipartite_merge(hidden_states, sizes, keys, merged, num_special)
        return hidden_states + self.ats_mlp_update(hidden_states), sizes

    def ats_attention_update(self, attn_output: torch.Tensor) -> torch.Tensor:
        """What the attention output adds to the residual (dropout, layer scale, ...)."""
        raise NotImplementedError

    def ats_mlp_update(self, rows: torch.Tensor) -> torch.Tensor:
        """(T, D) -> (T, D): what the MLP branch adds to each row (norm, MLP, dropout, layer scale, ...)."""
        raise NotImplementedError

    def ats_mlp_padding(self, state: TokenState) -> PaddingLayout | None:
        """The padding the MLP branch may skip (a family whose MLP branch mixes rows returns None)."""
        return state.padding


class AtsViTStyleLayerMixin(AtsLayerMixin):
    """The branches of a ViT-style layer (ViT, DeiT): `layernorm_before`, `attention`, `layernorm_after`, `mlp`,
    `dropout`."""

    ats_attention_norm_attribute = "layernorm_before"

    def ats_attention_update(self, attn_output):
        return self.dropout(attn_output)

    def ats_mlp_update(self, rows):
        return self.dropout(self.mlp(self.layernorm_after(rows)))


def update_real_rows(
    hidden_states: torch.Tensor, padding: PaddingLayout | None, update: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """`hidden_states + update(hidden_states)` for a row-wise `update` (norm, MLP, layer scale), computed on the real
    rows only when the adaptive mode left padding (the MLP is most of a layer's work); padding rows keep their values.

    hidden_states: (B, M, D); update: (T, D) -> (T, D) for any number of rows T."""
    if padding is None or padding.real_rows is None:
        return hidden_states + update(hidden_states)
    real = hidden_states.reshape(-1, hidden_states.shape[-1]).index_select(0, padding.real_rows)
    return hidden_states + padding.unpack(update(real)).view_as(hidden_states)


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


ATS_OUTPUT_DOC = r"""
    num_tokens (`torch.LongTensor` of shape `(batch_size, num_hidden_layers)`):
        Real tokens (special tokens included) each layer outputs for each image.
    sampled_token_indices (`torch.LongTensor` of shape `(batch_size, num_ats_layers, max_kept)`):
        For each image and ATS layer, the original patch positions (0-based over patches, special tokens excluded)
        of the patch tokens the layer kept, ascending, padded with -1. `max_kept` is the most any image kept in any
        ATS layer. None when the model has no ATS layers.
    token_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
        1 where `last_hidden_state` holds a real token, 0 for padding (transformers' attention-mask convention).
"""


@dataclass
class AtsModelOutput(BaseModelOutputWithPooling):
    num_tokens: torch.LongTensor | None = None
    sampled_token_indices: torch.LongTensor | None = None
    token_mask: torch.LongTensor | None = None
    token_sizes: torch.FloatTensor | None = None


@dataclass
class AtsImageClassifierOutput(ImageClassifierOutput):
    num_tokens: torch.LongTensor | None = None
    sampled_token_indices: torch.LongTensor | None = None
    token_mask: torch.LongTensor | None = None


AtsModelOutput.__doc__ = (
    "[`BaseModelOutputWithPooling`] of an ATS base model; `last_hidden_state` holds the real tokens (special tokens "
    "first) packed to the front of each row (see `token_mask`), or the full token grid with "
    "`config.ats_dense_output`.\n"
    + ATS_OUTPUT_DOC
    + r"""    token_sizes (`torch.FloatTensor` of shape `(batch_size, sequence_length)`):
        The input tokens each row of `last_hidden_state` stands for (0 for padding) under Token Merging
        (`ats_tome_forward`) and under ATS with `ats_merge`; on the full grid (`ats_dense_output`), each kept
        token's size at its position and 0 at the others (merged into a kept token, or dropped). None otherwise.
"""
)
AtsImageClassifierOutput.__doc__ = "[`ImageClassifierOutput`] of an ATS image classifier.\n" + ATS_OUTPUT_DOC


def ats_output_fields(outputs) -> dict:
    """What a task model passes on from its base model's outputs: hidden states, attentions and the ATS fields."""
    return {
        "hidden_states": outputs.hidden_states,
        "attentions": outputs.attentions,
        "num_tokens": outputs.num_tokens,
        "sampled_token_indices": outputs.sampled_token_indices,
        "token_mask": outputs.token_mask,
    }


def mean_of_kept_patches(outputs: AtsModelOutput, num_special: int, dense_output: bool) -> torch.Tensor:
    """(B, D) mean of the patch tokens the last layer kept, from a base model's outputs (for heads that pool patches,
    as DINOv2's and CLIP's classifiers): padding rows are left out of packed rows, and on the dense grid
    (`dense_output`) so are the positions the last ATS layer dropped. Without ATS it is the mean of all patches.
    Where rows stand for merged tokens (`outputs.token_sizes`: Token Merging, or `ats_merge`) each row weighs as the
    tokens it stands for: the mean of all patches as merged."""
    patches = outputs.last_hidden_state[:, num_special:]
    kept = outputs.token_mask[:, num_special:].bool()
    if dense_output and outputs.sampled_token_indices is not None:
        last_kept = outputs.sampled_token_indices[:, -1]
        num_patches = kept.shape[1]
        spare = torch.zeros(kept.shape[0], num_patches + 1, dtype=torch.bool, device=kept.device)
        kept = spare.scatter_(1, last_kept.masked_fill(last_kept < 0, num_patches), True)[:, :num_patches]
    weights = kept.to(patches.dtype)
    if outputs.token_sizes is not None:
        weights = weights * outputs.token_sizes[:, num_special:].to(patches.dtype)
    weights = weights[..., None]
    return (patches * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


_SETTING_NAMES = tuple(AtsSettings())


class AtsPreTrainedMixin:
    """Settings, strict loading and saving for a family's `PreTrainedModel` subclass (listed first among its bases):
    the base type of every ATS model, which tools take as "an ATS model".

    A family sets `_ats_optional_weights` (weight-name prefixes a checkpoint may lack or carry extra: task heads)
    and `_ats_expected_checkpoints` (words for the loading error); registering a family (`ats_hf.families`) fills
    `_ats_auto_map` (the auto classes remote-code users may load it with)."""

    _ats_optional_weights: tuple[str, ...] = ("classifier.", "pooler.")
    _ats_expected_checkpoints = "a checkpoint of the same architecture"
    _ats_auto_map: dict[str, str] = {}

    @classmethod
    def ats_base_model_prefix(cls, config) -> str:
        """The attribute (and weight-name prefix) of the base model in a task model of this config."""
        return cls.base_model_prefix

    def _ats_init(self, config) -> None:
        """`PreTrainedModel.__init__` (not the upstream class's, which would build plain layers only for them to be
        replaced), the config's ATS settings checked, and the base model's attribute for this config."""
        if not hasattr(config, "check_ats_settings"):
            expected = self.config_class.__name__
            raise TypeError(
                f"{type(self).__name__} takes an ATS config ({expected}), got a {type(config).__name__}: build it "
                f"with {expected}(**config.to_dict()), or load a checkpoint with from_pretrained."
            )
        PreTrainedModel.__init__(self, config)
        config.check_ats_settings()
        prefix = self.ats_base_model_prefix(config)
        if prefix != self.base_model_prefix:
            self.base_model_prefix = prefix  # the loader strips checkpoint prefixes by this (instance) attribute

    @property
    def ats_settings(self) -> AtsSettings:
        """The ATS settings in force (an `AtsSettings`; `model.set_ats(previous)` restores them)."""
        return self.config.ats_settings

    def set_ats(self, settings: AtsSettings | None = None, /, **changes) -> AtsSettings:
        """Switch Adaptive Token Sampling on this built model: to `settings` (an `AtsSettings`), with `changes` on top;
        settings left out keep their current values.

        Args:
            settings: the settings to apply (default: the current ones).
            layers: 0-based indices of the layers that sample tokens (`[]`: the upstream model).
            max_tokens: K: None (all tokens, the paper), an int > S (the special tokens), a fraction in (0, 1], or
                one per layer.
            sampler: "inverse_transform" (ATS), "top_k" or "random".
            capacity: None for the adaptive mode; rows per ATS layer (int > S, fraction, or one per layer) for the
                static mode (see the config).
            merge: None drops unsampled tokens (the paper); a cosine similarity in [-1, 1] merges each into its most
                similar kept token when at least that similar (see the config).
        Returns:
            The previous settings, so that `model.set_ats(previous)` (or `model.set_ats(**previous)`) restores them.
        Raises `ValueError` naming the bad value and the allowed range; then nothing changes. Assigning the config
        fields directly also works (they are validated at the next forward pass); this checks them at once.
        """
        unknown = sorted(set(changes) - set(_SETTING_NAMES))
        if unknown:
            raise TypeError(f"set_ats() got unexpected setting(s) {unknown}; the settings are {list(_SETTING_NAMES)}.")
        previous = self.ats_settings
        chosen = previous if settings is None else settings
        self.config.apply_ats_settings(chosen.replace(**changes) if changes else chosen)
        self._resolve_ats_plans()
        return previous

    @contextlib.contextmanager
    def ats_settings_applied(self, settings: AtsSettings | None = None, /, **changes) -> Iterator:
        """Inside the block, the model runs with `set_ats(settings, **changes)`; its settings come back afterwards."""
        previous = self.set_ats(settings, **changes)
        try:
            yield self
        finally:
            self.set_ats(previous)

    def _resolve_ats_plans(self) -> None:
        """Resolve the settings for the configured image size now, so that the first forward pass of a compiled
        model finds them ready (filling the cache inside it would make torch.compile compile a second time)."""
        for module in self.modules():
            if isinstance(module, AtsBaseModelMixin):
                module._ats_plans(num_input_tokens(module.config))

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, but a checkpoint that would leave weights randomly initialised is an
        error, not a warning. Only a task head (`_ats_optional_weights`) may be new, and the mask token of a model
        built with `use_mask_token=True`; so may any weight whose shape the user chose to replace with
        `ignore_mismatched_sizes=True`. Unexpected weights are an error too, except a head the loaded class has no
        place for. To load partially on purpose, pass `output_loading_info=True`: it returns `(model, info)` with
        transformers' usual missing / unexpected / mismatched keys instead of raising."""
        if kwargs.get("output_loading_info"):
            return super().from_pretrained(*args, **kwargs)
        model, loading_info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        optional = cls._ats_optional_weights
        missing = sorted(
            key
            for key in loading_info["missing_keys"]
            if not (_is_optional(key, optional) or key.endswith("embeddings.mask_token"))
        )
        unexpected = sorted(key for key in loading_info["unexpected_keys"] if not _is_optional(key, optional))
        if missing or unexpected:
            raise ValueError(
                f"Loading {cls.__name__} from {args[0] if args else kwargs.get('pretrained_model_name_or_path')!r} "
                f"would leave {len(missing)} weight(s) randomly initialised {missing[:8]} and ignore "
                f"{len(unexpected)} checkpoint weight(s) {unexpected[:8]}. Expected {cls._ats_expected_checkpoints}; "
                "pass output_loading_info=True to load partially and inspect the keys yourself."
            )
        return model

    def save_pretrained(self, *args, save_original_format: bool = False, **kwargs):
        """`PreTrainedModel.save_pretrained`, writing current weight names by default, so that every reader
        (`from_pretrained`, Trainer's checkpoint restore, remote code) reads them back as saved. A class registered
        for an auto class also gets an `auto_map` for every auto class of its family (transformers alone names only
        the saved class), so remote-code users can load it with any of them."""
        if self._auto_class is not None:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self._ats_auto_map}
        return super().save_pretrained(*args, save_original_format=save_original_format, **kwargs)


def _is_optional(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether a weight belongs to a task head, which a checkpoint of another task may lack or carry extra."""
    return any(key.startswith(prefix) for prefix in prefixes)


class AtsEncoderRun(NamedTuple):
    """What `run_layers` returns."""

    hidden_states: torch.Tensor
    """(B, M, D) the last layer's output rows (before any final norm)."""
    state: TokenState
    """The M rows' positions, padding, mask and sizes."""
    num_tokens: torch.Tensor
    """(B, layers run) long: real rows each layer output (every token for the layers before the first run)."""
    sampled_token_indices: torch.Tensor | None
    """(B, ATS layers, max_kept) patch positions each ATS layer kept, -1 padded; None without ATS layers."""
    dense_hidden_states: torch.Tensor | None
    """(B, N, D) the full input grid, each token's value from the last layer that computed it
    (`config.ats_dense_output`), else None."""

    def token_sizes(self) -> torch.Tensor | None:
        """The (B, M) sizes of the kept rows once tokens were merged, or with `ats_dense_output` the (B, N) grid's: each
        kept row's size at its position, 0 at every other (a token merged into a kept one, or dropped); None while
        every row is one token."""
        sizes = self.state.sizes
        if sizes is None or self.dense_hidden_states is None:
            return sizes
        batch_size, num_tokens = self.dense_hidden_states.shape[:2]
        grid = sizes.new_zeros(batch_size, num_tokens + 1)
        return grid.scatter_(1, self.state.positions_or(num_tokens), sizes)[:, :num_tokens]

    def last_hidden_state(
        self, norm: Callable[[torch.Tensor], torch.Tensor], attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's `last_hidden_state` after the final `norm`: the (B, M, D) kept rows, or the (B, N, D) full
        grid with `ats_dense_output`; and its (B, M or N) 0/1 long `token_mask` (the grid's is the user's
        `attention_mask`). Row 0 is CLS either way."""
        if self.dense_hidden_states is None:
            hidden_states, token_mask = norm(self.hidden_states), self.state.token_mask
        else:
            hidden_states, token_mask = norm(self.dense_hidden_states), attention_mask
        if token_mask is None:
            return hidden_states, torch.ones(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
        return hidden_states, token_mask.long()


class AtsBaseModelMixin:
    """The base model of a family (listed before the family's PreTrainedModel and the upstream base model): built by
    the family's `ats_build`, it embeds the pixels (`ats_embed`), runs the ATS layer loop over `ats_encoder_layers`
    (each an ATS layer called as `layer(hidden_states, state, plan) -> (hidden_states, state)`), applies the final
    norm (`ats_final_norm`) and pools (`ats_pool`). `ats_embedding_options` names the optional embedding arguments
    of `forward` the family's embeddings take."""

    ats_embedding_options: tuple[str, ...] = ("bool_masked_pos", "interpolate_pos_encoding")

    def __init__(self, config, **options):
        self._ats_init(config)
        self.ats_build(config, **options)
        self._resolved_settings = (None, {})
        self.post_init()
        self._resolve_ats_plans()

    def ats_build(self, config, **options) -> None:
        """Create the family's modules (embeddings, layers, norms); `options` are the base model's own arguments."""
        raise NotImplementedError

    @property
    def ats_encoder_layers(self) -> nn.ModuleList:
        raise NotImplementedError

    def ats_embed(self, pixel_values: torch.Tensor, **options) -> torch.Tensor:
        """(B, C, H, W) pixels (a video family: (B, T, C, H, W)) -> (B, N, D) the first layer's input."""
        raise NotImplementedError

    def ats_final_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The norm after the last layer (of `last_hidden_state`)."""
        return self.layernorm(hidden_states)

    def ats_pool(self, sequence_output: torch.Tensor) -> torch.Tensor | None:
        """(B, M, D) `last_hidden_state` -> the (B, D) `pooler_output` (or None)."""
        return None

    def ats_task_output(self, outputs: AtsModelOutput) -> AtsModelOutput:
        """This model's output from its base model's `outputs`: a base model's are its own (task models apply their
        heads)."""
        return outputs

    def ats_tome_forward(self, pixel_values: torch.Tensor, r: int | list[int]) -> AtsModelOutput:
        """Token Merging instead of ATS (the ATS settings ignored): `r` tokens merged in every layer, or one count per
        layer (see `ats_sampling.tome_schedule`), never a special token.

        Args:
            pixel_values: (B, C, H, W) images (a video family: (B, T, C, H, W) videos).
        Returns:
            The base model's output on the (B, M, D) merged rows: `last_hidden_state` after the final norm (special
            tokens first), `pooler_output`, `token_sizes` (B, M) and `num_tokens` (B, layers), the same for every
            image.
        """
        hidden_states = self.ats_embed(pixel_values)
        batch_size, num_tokens = hidden_states.shape[:2]
        layers = self.ats_encoder_layers
        schedule = tome_schedule(r, len(layers), num_tokens, num_special_tokens(self.config))
        sizes = hidden_states.new_ones(batch_size, num_tokens, dtype=torch.float32)
        counts = []
        for layer, merged in zip(layers, schedule, strict=True):
            hidden_states, sizes = layer.ats_tome_forward(hidden_states, sizes, merged)
            counts.append(hidden_states.shape[1])
        sequence_output = self.ats_final_norm(hidden_states)
        device = sequence_output.device
        return AtsModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=self.ats_pool(sequence_output),
            num_tokens=torch.tensor(counts, device=device).expand(batch_size, -1),
            token_mask=torch.ones(sizes.shape, dtype=torch.long, device=device),
            token_sizes=sizes,
        )

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        check_attention_mask: bool = True,
        **kwargs,
    ) -> AtsModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images, as from the family's image processor; a video family's videos, `(batch_size, num_frames,
            num_channels, height, width)`.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
            Patches to replace by the mask token (models built with `use_mask_token=True`; ViT, DeiT, DINOv2).
        interpolate_pos_encoding (`bool`, *optional*):
            Interpolate position embeddings to the input size (ViT, DeiT, CLIP; DINOv2 always does); K defaults then
            follow the actual token count.
        attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
            1 for tokens to attend to, 0 for tokens to ignore (special tokens first, never 0). Ignored tokens are
            never kept.
        check_attention_mask (`bool`, *optional*, defaults to `True`):
            Check that `attention_mask` keeps every special token, and count its real tokens (one device-to-host
            read). `False` skips the read, for the static mode to run without any: the mask is taken as it is.
        """
        if pixel_values is None:
            raise ValueError("pixel_values is required.")
        options = {"bool_masked_pos": bool_masked_pos, "interpolate_pos_encoding": interpolate_pos_encoding}
        options = {name: value for name, value in options.items() if value is not None}
        unsupported = [name for name in options if name not in self.ats_embedding_options]
        if unsupported:
            raise ValueError(
                f"{type(self).__name__} takes no {unsupported[0]} (its embeddings take "
                f"{', '.join(self.ats_embedding_options) or 'no options'})."
            )
        hidden_states = self.ats_embed(pixel_values, **options)
        return self.forward_from_layer(hidden_states, 0, attention_mask, check_attention_mask, **kwargs)

    def forward_from_layer(
        self,
        hidden_states: torch.Tensor,
        start_layer: int = 0,
        attention_mask: torch.Tensor | None = None,
        check_attention_mask: bool = True,
        **kwargs,
    ) -> AtsModelOutput:
        """The layers from `start_layer` on, then the final norm and pooling, on the (B, N, D) input of that layer
        with every token still present (a tuner computes the dense layers before it once for many settings).
        `num_tokens` counts every token for the layers before `start_layer`."""
        run = self.run_layers(hidden_states, attention_mask, start_layer, check_attention_mask=check_attention_mask,
                              **kwargs)
        sequence_output, token_mask = run.last_hidden_state(self.ats_final_norm, attention_mask)
        return AtsModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=self.ats_pool(sequence_output),
            num_tokens=run.num_tokens,
            sampled_token_indices=run.sampled_token_indices,
            token_mask=token_mask,
            token_sizes=run.token_sizes(),
        )

    def run_layers(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        start_layer: int = 0,
        end_layer: int | None = None,
        check_attention_mask: bool = True,
        **kwargs,
    ) -> AtsEncoderRun:
        """The encoder layers `start_layer .. end_layer - 1` (default: to the last; any final norm excluded).

        Args:
            hidden_states: (B, N, D) the input of layer `start_layer` with every token still present, so no ATS layer
                may come before it.
            attention_mask: (B, N) 1 for real tokens, and check_attention_mask, as in `forward`.
        Returns:
            an `AtsEncoderRun`; layers before `start_layer` count every token in `num_tokens`.
        """
        config = self.config
        num_layers = len(self.ats_encoder_layers)
        end = num_layers if end_layer is None else end_layer
        if not 0 <= start_layer < end <= num_layers:
            raise ValueError(
                f"start_layer={start_layer}, end_layer={end_layer} run no layer or leave the model: they need "
                f"0 <= start_layer < end_layer <= {num_layers} (num_hidden_layers)."
            )
        plans = self._ats_plans(hidden_states.shape[1])
        earlier = sorted(layer for layer in plans if layer < start_layer)
        if earlier:
            raise ValueError(
                f"start_layer={start_layer} comes after ATS layer(s) {earlier}: the layers before it must keep every "
                "token."
            )
        num_special = num_special_tokens(config)
        batch_size, num_input_tokens = hidden_states.shape[:2]
        state = TokenState.initial(config, hidden_states, attention_mask, check_attention_mask)
        num_tokens = [state.num_real(hidden_states.shape[0])] * start_layer
        # The rows of ATS layer i are among those of layer i - 1, so the index of the last ATS layer that kept each
        # input token (-1: none) says which tokens every ATS layer kept (padding rows mark a spare column, cut off).
        last_ats_layer, num_ats_layers, most_kept = None, 0, 0
        dense = hidden_states if config.ats_dense_output else None
        for layer in self.ats_encoder_layers[start_layer:end_layer]:
            plan = plans.get(layer.layer_index)
            if plan is not None and dense is not None:
                dense = _write_rows(dense, hidden_states, state)  # the last values of the tokens this layer may drop
            hidden_states, state = layer(hidden_states, state, plan, **kwargs)
            num_tokens.append(state.num_real(hidden_states.shape[0]))
            if plan is not None:
                if last_ats_layer is None:
                    last_ats_layer = state.positions.new_full((batch_size, num_input_tokens + 1), -1)
                last_ats_layer.scatter_(1, state.positions_or(num_input_tokens), num_ats_layers)
                num_ats_layers += 1
                most_kept = max(most_kept, hidden_states.shape[1] - num_special)
        if dense is not None:
            dense = _write_rows(dense, hidden_states, state)
        sampled_token_indices = None
        if num_ats_layers:
            patches = last_ats_layer[:, num_special:num_input_tokens]
            sampled_token_indices = kept_patch_positions(patches, num_ats_layers, most_kept)
        return AtsEncoderRun(hidden_states, state, torch.stack(num_tokens, dim=1), sampled_token_indices, dense)

    def _ats_plans(self, num_reference_tokens: int) -> dict[int, AtsLayerPlan]:
        """`{layer_index: plan}` for the ATS settings in the config now. Settings changed since the last forward
        pass are validated first (a bad value raises `ValueError`), so a change always takes effect or fails
        loudly."""
        config = self.config
        key = _settings_key(config, num_reference_tokens)
        if key != self._resolved_settings[0]:
            config.check_ats_settings()
            if config.ats_merge is not None and config._attn_implementation not in ("eager", "sdpa"):
                raise ValueError(
                    f"ats_merge needs attn_implementation 'eager' or 'sdpa' (proportional attention adds a "
                    f"per-key bias), got {config._attn_implementation!r}."
                )
            resolved = config.ats_settings.resolve(num_reference_tokens, num_special_tokens(config))
            plans = {layer: AtsLayerPlan(k, capacity) for layer, (k, capacity) in resolved.items()}
            self._resolved_settings = (_settings_key(config, num_reference_tokens), plans)
        return self._resolved_settings[1]


def _settings_key(config, num_reference_tokens: int) -> tuple:
    """What the resolved plans depend on; list fields as tuples, so that comparing sees in-place edits."""
    fields = (config.ats_layers, config.ats_max_tokens, config.ats_sampler, config.ats_capacity, config.ats_merge)
    frozen = tuple(tuple(value) if isinstance(value, list) else value for value in fields)
    return (*frozen, config._attn_implementation, num_reference_tokens)


def _write_rows(grid: torch.Tensor, rows: torch.Tensor, state: TokenState) -> torch.Tensor:
    """(B, N, D) full-grid values with the (B, M, D) real rows written at their positions (out of place)."""
    batch_size, num_tokens, width = grid.shape
    targets = state.positions_or(num_tokens)
    spare = torch.cat([grid, grid.new_zeros(batch_size, 1, width)], dim=1)
    return spare.scatter(1, targets[..., None].expand(-1, -1, width), rows.to(grid.dtype))[:, :num_tokens]


class AtsViTStyleModelMixin(AtsBaseModelMixin):
    """The base model of a ViT-style family (ViT, DeiT, ViViT): `embeddings`, `layers`, `layernorm` and an optional
    `pooler`, built from the family's classes (`ats_embeddings_class`, `ats_layer_class`, `ats_pooler_class`).
    Embeddings that take `bool_masked_pos` are built with `use_mask_token`; others (ViViT's) from the config alone."""

    ats_embeddings_class: type
    ats_layer_class: type
    ats_pooler_class: type

    def __init__(self, config, add_pooling_layer: bool = True, use_mask_token: bool = False):
        super().__init__(config, add_pooling_layer=add_pooling_layer, use_mask_token=use_mask_token)

    def ats_build(self, config, add_pooling_layer: bool = True, use_mask_token: bool = False) -> None:
        masking = "bool_masked_pos" in self.ats_embedding_options
        self.embeddings = self.ats_embeddings_class(config, **({"use_mask_token": use_mask_token} if masking else {}))
        self.layers = nn.ModuleList([self.ats_layer_class(config, index) for index in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = self.ats_pooler_class(config) if add_pooling_layer else None

    @property
    def ats_encoder_layers(self) -> nn.ModuleList:
        return self.layers

    def ats_embed(self, pixel_values, **options):
        expected_dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        return self.embeddings(pixel_values.to(expected_dtype), **options)

    def ats_pool(self, sequence_output):
        return None if self.pooler is None else self.pooler(sequence_output)


class AtsLayerStack(nn.Module):
    """An encoder that only holds a family's layers, under the attribute its weight names use (`encoder.layer.N`,
    `encoder.layers.N`); the base model runs them."""

    def __init__(self, config, layer_class: type, attribute: str):
        super().__init__()
        layers = [layer_class(config, index) for index in range(config.num_hidden_layers)]
        setattr(self, attribute, nn.ModuleList(layers))


def linear_head(in_features: int, config) -> nn.Module:
    """A classifier head on `in_features` (Identity without labels, as upstream)."""
    return nn.Linear(in_features, config.num_labels) if config.num_labels > 0 else nn.Identity()


class AtsClassifierMixin:
    """An image classifier on a family's base model (listed before the family's PreTrainedModel and the upstream
    class). The family names the base model's class (`ats_base_model_class`, built with `ats_base_model_options`
    under `base_model_prefix`), builds its heads (`ats_build_heads`; default: `classifier` on the hidden size) and
    says what they compute (`ats_logits`; default: `classifier` on the final CLS row). Several heads are averaged
    into `logits`, and so are their losses (distilled DeiT)."""

    ats_base_model_class: type
    ats_base_model_options: dict = {}
    ats_output_class: type = AtsImageClassifierOutput

    def __init__(self, config):
        self._ats_init(config)
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, self.ats_base_model_class(config, **self.ats_base_model_options))
        self.ats_build_heads(config)
        self.post_init()

    def ats_build_heads(self, config) -> None:
        self.classifier = linear_head(config.hidden_size, config)

    def ats_logits(self, outputs: AtsModelOutput) -> dict[str, torch.Tensor]:
        """The heads' (B, num_labels) logits by output name: `{"logits": ...}`, or several heads to average."""
        return {"logits": self.classifier(outputs.last_hidden_state[:, 0])}

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
        Other arguments as in the base model's `forward`.
        """
        outputs = self.base_model(
            pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, attention_mask=attention_mask, **kwargs
        )
        return self.ats_task_output(outputs, labels, **kwargs)

    def forward_from_layer(
        self,
        hidden_states: torch.Tensor,
        start_layer: int = 0,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> AtsImageClassifierOutput:
        """The layers from `start_layer` on and the heads, on the (B, N, D) dense input of that layer (see the base
        model's `forward_from_layer`)."""
        outputs = self.base_model.forward_from_layer(hidden_states, start_layer, attention_mask)
        return self.ats_task_output(outputs, labels)

    def ats_task_output(self, outputs: AtsModelOutput, labels: torch.Tensor | None = None, **kwargs):
        """The output of the heads on a base model's `outputs`, with the loss against `labels` (if given)."""
        heads = self.ats_logits(outputs)
        logits = heads["logits"] if "logits" in heads else sum(heads.values()) / len(heads)
        loss = None
        if labels is not None:
            losses = [self.loss_function(labels, head, self.config, **kwargs) for head in heads.values()]
            loss = sum(losses) / len(losses)
        extra = {} if "logits" in heads else heads
        return self.ats_output_class(loss=loss, logits=logits, **extra, **ats_output_fields(outputs))


__all__ = [
    "ATS_OUTPUT_DOC",
    "AtsAttentionMixin",
    "AtsBaseModelMixin",
    "AtsClassifierMixin",
    "AtsEncoderRun",
    "AtsImageClassifierOutput",
    "AtsLayerMixin",
    "AtsLayerPlan",
    "AtsLayerStack",
    "AtsModelOutput",
    "AtsPreTrainedMixin",
    "AtsViTStyleLayerMixin",
    "AtsViTStyleModelMixin",
    "TokenState",
    "ats_output_fields",
    "linear_head",
    "mean_of_kept_patches",
    "update_real_rows",
]
