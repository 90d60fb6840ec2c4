"""The ATS core every family shares: scoring, sampling, packing, the token state between layers, ATS attention, and
the model mixins (settings, plans, the layer loop, strict loading).

Self-contained for the Hub: imports only torch, transformers and `.configuration_ats_core`. A family's modeling file
(`modeling_ats_vit.py`, ...) subclasses its upstream classes with these mixins and adds only what differs.

Shapes: B = batch, L = tokens entering a layer (S special tokens first, CLS at 0, then P = L - S patch tokens),
M = rows a layer outputs, N = tokens entering the first layer, H = heads, D = hidden size.
"""

import functools
from collections.abc import Callable
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

from .configuration_ats_core import num_input_tokens, num_special_tokens

# ----------------------------------------------------------------------------------------------------------------
# Scoring and sampling: pure functions, tensors in, tensors out.
# ----------------------------------------------------------------------------------------------------------------


def significance_scores(
    cls_attention: torch.Tensor, values: torch.Tensor, token_mask: torch.Tensor | None = None, num_special: int = 1
) -> torch.Tensor:
    """Significance score of every patch token: CLS attention (summed over heads) times value norm, normalised.

    Args:
        cls_attention: (B, H, L) attention probabilities of the CLS query over all L keys.
        values: (B, L, D) value vectors, all heads concatenated.
        token_mask: (B, L) bool, True for real tokens; None if all are real.
        num_special: S, the leading tokens (CLS first) that are never scored.
    Returns:
        (B, P) float32 scores of the P = L - S patch tokens, summing to 1 per image (all zero if an image has no
        scored patch); padding scores 0.
    """
    attention = cls_attention[:, :, num_special:].sum(dim=1, dtype=torch.float32)
    scores = attention * torch.linalg.vector_norm(values[:, num_special:], dim=-1, dtype=torch.float32)
    if token_mask is not None:
        scores = scores.masked_fill(~token_mask[:, num_special:], 0.0)
    # An all-zero row stays zero: 0 / tiny = 0; any other row has total >= tiny and is divided by it exactly.
    return scores / scores.sum(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny)


def inverse_transform_sampling(
    scores: torch.Tensor, patch_mask: torch.Tensor | None, max_tokens: int
) -> torch.Tensor:
    """The paper's sampler: nearest-CDF matching of `max_tokens - 1` evenly spaced points, then de-duplication.

    Per image, over its own real patch tokens only: sort scores ascending, take the cumulative sum, min-max
    normalise it to [0, 1], place R = max_tokens - 1 points from the smallest non-zero normalised value up to 1,
    and keep the token whose normalised CDF is nearest to each point (ties to the lower one). The lowest token is
    never kept; an image with a flat CDF (one patch left, or all scores zero) keeps its last-sorted patch.

    Args:
        scores: (B, P) float32 significance scores, >= 0.
        patch_mask: (B, P) bool, True for real patch tokens; None if all are real.
        max_tokens: K >= 2, the most tokens kept, CLS included.
    Returns:
        (B, P) bool, True for kept patch tokens.
    """
    batch_size, num_patches = scores.shape
    inf = float("inf")
    if patch_mask is None:
        sorted_scores, order = _stable_sort(scores)
        cdf = torch.cumsum(sorted_scores, dim=1)
        cdf_first, cdf_last = cdf[:, :1], cdf[:, -1:]
    else:
        # Padding sorts last and is then zeroed, so the CDF of the real tokens is unchanged.
        sorted_scores, order = _stable_sort(scores.masked_fill(~patch_mask, inf))
        last = (patch_mask.sum(dim=1, keepdim=True) - 1).clamp(min=0)
        padding = torch.arange(num_patches, device=scores.device) > last
        cdf = torch.cumsum(sorted_scores.masked_fill(padding, 0.0), dim=1)
        cdf_first, cdf_last = cdf[:, :1], cdf.gather(1, last)

    span = (cdf_last - cdf_first).clamp(min=torch.finfo(torch.float32).tiny)
    normalized_cdf = (cdf - cdf_first) / span
    # x / x is exactly 1, so writing 1 at the last real token changes nothing unless the CDF is flat (span 0).
    if patch_mask is None:
        normalized_cdf[:, -1] = 1.0
    else:
        normalized_cdf = normalized_cdf.scatter_(1, last, 1.0).masked_fill_(padding, inf)

    # The normalised CDF rises from 0 to 1: its smallest non-zero value is the smallest positive one.
    lowest_nonzero = torch.where(normalized_cdf > 0, normalized_cdf, 1.0).amin(dim=1, keepdim=True)
    points = _sample_points(lowest_nonzero, max_tokens - 1)

    # Nearest CDF value to each point: the first one at or above it, or the one below when that is no farther
    # and not zero. The last real value is 1, so the sentinel column is never picked.
    padded_cdf = torch.nn.functional.pad(normalized_cdf, (0, 1), value=inf)
    above = _count_below(padded_cdf, points)
    below = (above - 1).clamp_(min=0)
    cdf_below = padded_cdf.gather(1, below)
    take_below = (points - cdf_below <= padded_cdf.gather(1, above) - points) & (cdf_below > 0)
    picked = order.gather(1, torch.where(take_below, below, above))

    kept = torch.zeros(batch_size, num_patches, dtype=torch.bool, device=scores.device).scatter_(1, picked, True)
    return kept if patch_mask is None else kept & patch_mask


def _stable_sort(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) -> values sorted ascending and their (B, N) order, equal values in index order.

    Under torch.export (ONNX has no stable sort) the rank of each value is counted instead, an exact (B, N, N)
    comparison: rank_j = #{i: v_i < v_j} + #{i < j: v_i == v_j}."""
    if not torch.compiler.is_exporting():
        return torch.sort(values, dim=1, stable=True)
    index = torch.arange(values.shape[1], device=values.device)
    smaller = values[:, None, :] < values[:, :, None]
    tied_before = (values[:, None, :] == values[:, :, None]) & (index[None, :] < index[:, None])
    rank = (smaller | tied_before).sum(dim=2)
    order = torch.zeros_like(rank).scatter_(1, rank, index.expand_as(rank))
    return values.gather(1, order), order


def _count_below(sorted_values: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, N) ascending values, (B, R) points -> (B, R) long: how many values are below each point (left
    `searchsorted`). Under torch.export (ONNX has no searchsorted) an exact (B, R, N) comparison."""
    if not torch.compiler.is_exporting():
        return torch.searchsorted(sorted_values, points)
    return (sorted_values[:, None, :] < points[:, :, None]).sum(dim=2)


def _sample_points(lowest_nonzero: torch.Tensor, num_points: int) -> torch.Tensor:
    """(B, 1) start values -> (B, R) points, evenly spaced from the start up to 1 (the official arithmetic)."""
    if num_points == 1:
        return torch.ones_like(lowest_nonzero)
    # Eager reuses the grid (two fewer ops per layer); a compiled graph folds it into its kernels instead.
    grid = _point_grid if torch.compiler.is_compiling() else _cached_point_grid
    steps, unit = grid(num_points, lowest_nonzero.device)
    return lowest_nonzero + (unit - lowest_nonzero * steps) / (num_points - 1)


def _point_grid(num_points: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(R,) step numbers 0..R-1 and (R,) linspace(0, 1, R) * (R - 1)."""
    steps = torch.arange(num_points, device=device, dtype=torch.float32)
    return steps, torch.linspace(0.0, 1.0, num_points, device=device) * (num_points - 1)


@functools.lru_cache(maxsize=64)
def _cached_point_grid(num_points: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`_point_grid`, made once per (R, device), outside any inference mode so that every mode can read it."""
    with torch.inference_mode(False), torch.no_grad():
        return _point_grid(num_points, device)


def top_k_sampling(scores: torch.Tensor, patch_mask: torch.Tensor | None, max_tokens: int) -> torch.Tensor:
    """Ablation baseline: keep the `max_tokens - 1` highest-scoring real patch tokens. (B, P) -> (B, P) bool."""
    return _keep_largest(scores, patch_mask, max_tokens - 1)


def random_sampling(scores: torch.Tensor, patch_mask: torch.Tensor | None, max_tokens: int) -> torch.Tensor:
    """Ablation baseline: keep `max_tokens - 1` uniformly random real patch tokens (torch's global RNG)."""
    return _keep_largest(torch.rand_like(scores), patch_mask, max_tokens - 1)


def _keep_largest(keys: torch.Tensor, patch_mask: torch.Tensor | None, count: int) -> torch.Tensor:
    if patch_mask is not None:
        keys = keys.masked_fill(~patch_mask, float("-inf"))
    chosen = keys.topk(min(count, keys.shape[1]), dim=1).indices
    kept = torch.zeros_like(keys, dtype=torch.bool).scatter_(1, chosen, True)
    return kept if patch_mask is None else kept & patch_mask


TOKEN_SAMPLERS: dict[str, Callable[[torch.Tensor, torch.Tensor | None, int], torch.Tensor]] = {
    "inverse_transform": inverse_transform_sampling,
    "top_k": top_k_sampling,
    "random": random_sampling,
}


class AtsLayerPlan(NamedTuple):
    """What an ATS layer does: keep at most `max_tokens` tokens (K, special tokens included), packed into exactly
    `capacity` rows in the static mode or into the batch's largest kept count when `capacity` is None (adaptive)."""

    max_tokens: int
    capacity: int | None = None


def sample_patch_tokens(
    sampler: str, scores: torch.Tensor, patch_mask: torch.Tensor | None, max_tokens: int
) -> torch.Tensor:
    """The patch tokens `sampler` (a name in `TOKEN_SAMPLERS`) keeps. (B, P) scores -> (B, P) bool.

    An image whose scores are not finite (a NaN or inf in its input makes its whole row NaN) cannot be ranked: it
    keeps every real patch token, so it never falls below the documented minimum and is never counted as cheap.
    """
    kept = TOKEN_SAMPLERS[sampler](scores, patch_mask, max_tokens)
    unscorable = scores.isnan().any(dim=1, keepdim=True)
    return kept | (unscorable if patch_mask is None else unscorable & patch_mask)


@dataclass
class PaddingLayout:
    """Where the real tokens of a padded (B, M, D) batch are."""

    token_mask: torch.Tensor
    """(B, M) bool, True for real tokens."""
    real_rows: torch.Tensor | None = None
    """(T,) long, the real rows' indices among the flattened B * M rows (T = number of real tokens); None in the
    static mode, whose shapes may not depend on T: the MLP then runs on every row."""
    packed_index: torch.Tensor | None = None
    """(B * M,) long, each flattened row's position among the T real rows, or T for a padding row."""

    @classmethod
    def from_mask(cls, token_mask: torch.Tensor, num_real: int) -> "PaddingLayout":
        """token_mask: (B, M) bool with `num_real` True entries (known on the host, so no read happens here)."""
        flat = token_mask.flatten()
        real_rows = torch.nonzero_static(flat, size=num_real).flatten()
        packed_index = (torch.cumsum(flat, dim=0) - 1).masked_fill_(~flat, num_real)
        return cls(token_mask, real_rows, packed_index)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(T, ...) values of the real rows -> (B * M, ...) with zeros in padding rows, by one gather."""
        with_zero_row = torch.cat([packed, packed.new_zeros(1, *packed.shape[1:])])
        return with_zero_row.index_select(0, self.packed_index)


def pack_kept_tokens(kept_patches: torch.Tensor, num_special: int = 1) -> tuple[torch.Tensor, PaddingLayout | None]:
    """Rows to keep, the S special tokens first then kept patches in their current order, packed to the front.

    Args:
        kept_patches: (B, P) bool.
        num_special: S, the leading rows that are always kept.
    Returns:
        kept_rows: (B, M) long indices into the L = P + S input rows, M = S + the largest kept count.
        padding: the layout of the (B, M) output, or None when every image keeps M rows.
    The only device-to-host read of an ATS layer happens here (inside `nonzero` for a single image).
    """
    kept = torch.nn.functional.pad(kept_patches, (num_special, 0), value=True)
    if kept.shape[0] == 1:
        return kept[0].nonzero().view(1, -1), None
    counts = kept.sum(dim=1)
    largest, smallest, total = torch.stack([counts.max(), counts.min(), counts.sum()]).tolist()
    kept_rows = torch.argsort((~kept).to(torch.uint8), dim=1, stable=True)[:, :largest]
    if largest == smallest:
        return kept_rows, None
    return kept_rows, PaddingLayout.from_mask(torch.arange(largest, device=counts.device) < counts[:, None], total)


def pack_kept_tokens_static(
    kept_patches: torch.Tensor, scores: torch.Tensor, capacity: int, num_special: int = 1
) -> tuple[torch.Tensor, PaddingLayout]:
    """The static mode's packing: exactly `capacity` rows per image, the S special tokens first, then the kept
    patches in their current order, then masked padding rows; no device-to-host read and no data-dependent shape.

    An image that kept more than `capacity - S` patches keeps its `capacity - S` highest-scoring kept patches.
    Args:
        kept_patches: (B, P) bool; scores: (B, P) the scores the sampler ranked; capacity: C > S.
    Returns:
        kept_rows: (B, M) long into the L = P + S input rows (padding rows point at CLS), M = min(C, L);
        the layout of the M rows (`token_mask` only).
    """
    batch_size, num_patches = kept_patches.shape
    slots = min(capacity - num_special, num_patches)
    # Kept patches rank above every dropped one (-inf); a NaN score (an unscorable image) ranks as a kept one.
    ranking = scores.masked_fill(~kept_patches, float("-inf"))
    chosen = ranking.topk(slots, dim=1, sorted=True).indices
    real = torch.arange(slots, device=scores.device) < kept_patches.sum(dim=1, keepdim=True)
    # Sorting the chosen positions (padding slots as P, after every real one) restores the current order.
    positions = chosen.masked_fill(~real, num_patches).sort(dim=1).values
    special_rows = torch.arange(num_special, device=scores.device).expand(batch_size, -1)
    kept_rows = torch.cat([special_rows, (positions + num_special).masked_fill(~real, 0)], dim=1)
    # cat, not pad: inductor's C++ backend (torch 2.13) fails to compile a padded bool mask fused with its use.
    token_mask = torch.cat([real.new_ones(batch_size, num_special), real], dim=1)
    return kept_rows, PaddingLayout(token_mask)


class TokenSelection(NamedTuple):
    """The rows an ATS layer keeps: `kept_rows` (B, M) into its L input rows, their `padding` layout (None if
    unpadded), and (B, L, D) keys when dropped tokens are merged into kept ones (None when they are dropped)."""

    kept_rows: torch.Tensor
    padding: PaddingLayout | None
    merge_keys: torch.Tensor | None = None


def merge_dropped_tokens(
    rows: torch.Tensor,
    sizes: torch.Tensor | None,
    keys: torch.Tensor,
    kept_rows: torch.Tensor,
    padding: PaddingLayout | None,
    token_mask: torch.Tensor | None,
    min_similarity: float = -1.0,
    num_special: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge every dropped real row into the kept patch row whose key is most similar (cosine) when that similarity
    is at least `min_similarity` (other dropped rows leave); the S special rows never receive anything. A kept row
    becomes the size-weighted mean of itself and the rows it absorbs.

    Args:
        rows: (B, L, D) values of the current rows; sizes: (B, L) their sizes (None: all 1).
        keys: (B, L, Dk) keys of the current rows (heads concatenated), the similarity metric.
        kept_rows: (B, M) indices of the kept rows, the special rows first; padding: their layout (None if unpadded).
        token_mask: (B, L) bool real current rows (None if all real).
    Returns:
        (B, M, D) merged values (0 in padding rows) and (B, M) float32 sizes (0 in padding rows).
    """
    batch_size, num_rows, width = rows.shape
    num_slots = kept_rows.shape[1]
    slots = torch.arange(num_slots, device=rows.device).expand(batch_size, -1)
    slot_is_real = torch.ones_like(slots, dtype=torch.bool) if padding is None else padding.token_mask
    # Each current row's own slot if it was kept, else -1; padding slots write into a spare column.
    slot_of_row = torch.full((batch_size, num_rows + 1), -1, dtype=torch.long, device=rows.device)
    slot_of_row = slot_of_row.scatter(1, kept_rows.masked_fill(~slot_is_real, num_rows), slots)[:, :num_rows]

    metric = torch.nn.functional.normalize(keys.float(), dim=-1)
    similarity = metric @ _gather_rows(metric, kept_rows).transpose(1, 2)  # (B, L, M)
    can_receive = slot_is_real & (slots >= num_special)
    best, nearest = similarity.masked_fill(~can_receive[:, None, :], float("-inf")).max(dim=-1)
    # Dropped rows too far from every kept row, and padding rows, go to the spare slot M, which is cut off.
    leaves = best < min_similarity if token_mask is None else (best < min_similarity) | ~token_mask
    nearest = nearest.masked_fill(leaves, num_slots)
    weights = rows.new_ones(batch_size, num_rows, dtype=torch.float32) if sizes is None else sizes
    target = torch.where(slot_of_row >= 0, slot_of_row, nearest)
    merged_sizes = weights.new_zeros(batch_size, num_slots + 1).scatter_add_(1, target, weights)[:, :num_slots]
    weighted = rows.float() * weights[..., None]
    merged = weighted.new_zeros(batch_size, num_slots + 1, width).scatter_add_(
        1, target[..., None].expand(-1, -1, width), weighted
    )[:, :num_slots]
    merged = merged / merged_sizes.clamp(min=torch.finfo(torch.float32).tiny)[..., None]
    return merged.to(rows.dtype), merged_sizes


@dataclass
class TokenState:
    """What the layers know about the rows of the (B, M, D) hidden states besides their values."""

    positions: torch.Tensor
    """(B, M) long: each row's index in the first layer's input (0 = CLS, S + p = patch p); 0 in padding rows."""
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

    def num_real(self, batch_size: int) -> torch.Tensor:
        """(B,) long: real rows per image."""
        if self.padding is None:
            return self.positions.new_full((batch_size,), self.positions.shape[1])
        return self.padding.token_mask.sum(dim=1)

    def select(
        self, config, selection: "TokenSelection", rows: torch.Tensor
    ) -> tuple[torch.Tensor, "TokenState"]:
        """The values and the state of the rows a layer kept.

        Args:
            selection: the kept rows (B, M) among the current L, their layout, and the keys to merge by (or None).
            rows: (B, L, D) the current rows' values (the layer's input, the residual).
        Returns:
            (B, M, D) the kept rows' values (merged with the tokens they absorb when merging), and their state.
        """
        kept_rows, padding = selection.kept_rows, selection.padding
        if selection.merge_keys is None:
            kept, sizes = _gather_rows(rows, kept_rows), None
        else:
            kept, sizes = merge_dropped_tokens(
                rows,
                self.sizes,
                selection.merge_keys,
                kept_rows,
                padding,
                self.token_mask,
                config.ats_merge,
                num_special_tokens(config),
            )
        positions = self.positions.gather(1, kept_rows)
        if padding is not None:
            positions = positions.masked_fill(~padding.token_mask, 0)
        return kept, TokenState(positions, padding, _self_attention_mask(config, kept, padding, sizes), sizes)

    @classmethod
    def initial(
        cls, config, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> "TokenState":
        """The state of the first layer's (B, L, D) input rows under a user's (B, L) `attention_mask` (1 = real)."""
        batch_size, num_tokens = hidden_states.shape[:2]
        positions = torch.arange(num_tokens, device=hidden_states.device).expand(batch_size, -1)
        special = num_special_tokens(config)
        padding = _input_padding(attention_mask, batch_size, num_tokens, hidden_states.device, special)
        return cls(positions, padding, _self_attention_mask(config, hidden_states, padding))


def _input_padding(
    attention_mask: torch.Tensor | None, batch_size: int, num_tokens: int, device: torch.device, num_special: int = 1
) -> PaddingLayout | None:
    """A user's 2-D attention mask over input tokens as a padding layout, or None when it masks nothing. The S
    special tokens may not be masked (one host read checks them with the count)."""
    if attention_mask is None:
        return None
    if attention_mask.shape != (batch_size, num_tokens):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; ATS models take a 2-D mask of shape "
            f"(batch_size, sequence_length) = ({batch_size}, {num_tokens}), CLS first."
        )
    token_mask = attention_mask.to(device=device, dtype=torch.bool)
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


def _gather_rows(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, L, ...) rows picked by (B, M) indices -> (B, M, ...), as one index_select over the flattened batch."""
    batch_size, num_rows = tensor.shape[:2]
    if batch_size == 1:
        return tensor.index_select(1, rows[0])
    offsets = torch.arange(0, batch_size * num_rows, num_rows, device=rows.device)[:, None]
    flat = tensor.reshape(batch_size * num_rows, *tensor.shape[2:]).index_select(0, (rows + offsets).flatten())
    return flat.view(*rows.shape, *tensor.shape[2:])


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------


class AtsAttentionMixin:
    """ATS for a family's self-attention module (listed before the upstream class), which provides `q_proj`,
    `k_proj`, `v_proj` (heads of `head_dim`), `config` and a `forward(hidden_states, attention_mask)`. A family whose
    output projection, scale or dropout attributes are not named as ViT's sets the `ats_*_attribute` names."""

    ats_output_projection_attribute = "o_proj"
    ats_scaling_attribute = "scaling"
    ats_dropout_attribute = "attention_dropout"

    def forward(
        self, hidden_states: torch.Tensor, state: "TokenState", plan: AtsLayerPlan | None = None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None, "TokenSelection | None"]:
        """hidden_states: (B, L, D), normed; plan: None in an ordinary layer (the upstream attention, under the
        state's mask). Returns the (B, M, D) output, the attention probabilities (eager only, else None) and the
        kept rows (None in an ordinary layer, or if every row was kept in place)."""
        if plan is None:
            attn_output, attn_weights = super().forward(hidden_states, state.attention_mask, **kwargs)
            return attn_output, attn_weights, None
        return self.ats_forward(hidden_states, state, plan, **kwargs)

    def ats_forward(
        self, hidden_states: torch.Tensor, state: "TokenState", plan: AtsLayerPlan, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None, "TokenSelection | None"]:
        """Score and sample tokens, then attend only from the kept rows (arguments and returns as `forward`)."""
        output_projection = getattr(self, self.ats_output_projection_attribute)
        scaling = getattr(self, self.ats_scaling_attribute)
        dropout = getattr(self, self.ats_dropout_attribute)
        config = self.config
        num_special = num_special_tokens(config)
        token_mask = state.token_mask
        batch_size, num_tokens, _ = hidden_states.shape
        queries = self.q_proj(hidden_states)
        key_states = self.k_proj(hidden_states).view(batch_size, num_tokens, -1, self.head_dim).transpose(1, 2)
        values = self.v_proj(hidden_states)
        value_states = values.view(batch_size, num_tokens, -1, self.head_dim).transpose(1, 2)

        with torch.no_grad():  # the selection is discrete: no gradient flows through the scores
            # (B, 1, D) is laid out as (B, H, 1, head_dim): the CLS query of every head, no transpose needed.
            cls_query = queries[:, :1].view(batch_size, -1, 1, self.head_dim)
            cls_logits = torch.matmul(_as_float32(cls_query), _as_float32(key_states).transpose(2, 3))
            cls_logits = cls_logits.view(batch_size, -1, num_tokens) * scaling
            if state.sizes is not None:  # proportional attention; log(0) = -inf masks padding
                cls_logits = cls_logits + state.sizes.log()[:, None, :]
            elif token_mask is not None:
                cls_logits = cls_logits.masked_fill(~token_mask[:, None, :], float("-inf"))
            scores = significance_scores(cls_logits.softmax(dim=-1), values, token_mask, num_special)
            patch_mask = None if token_mask is None else token_mask[:, num_special:]
            # The samplers count K with one special token (CLS); K - S + 1 leaves K - S patch tokens.
            sampler_k = plan.max_tokens - num_special + 1
            kept_patches = sample_patch_tokens(config.ats_sampler, scores, patch_mask, sampler_k)
            if plan.capacity is None:
                kept_rows, kept_padding = pack_kept_tokens(kept_patches, num_special)
            else:
                kept_rows, kept_padding = pack_kept_tokens_static(kept_patches, scores, plan.capacity, num_special)
            if token_mask is None and kept_padding is None and kept_rows.shape[1] == num_tokens:
                kept_rows = None  # every row kept, in place: nothing to gather
            merge_keys = None
            if config.ats_merge is not None and kept_rows is not None:
                merge_keys = key_states.transpose(1, 2).reshape(batch_size, num_tokens, -1)

        attn_implementation = config._attn_implementation
        all_rows = token_mask is not None and attn_implementation.startswith("flash")
        if not all_rows and kept_rows is not None:
            queries = _gather_rows(queries, kept_rows)
        query_states = queries.view(*queries.shape[:2], -1, self.head_dim).transpose(1, 2)
        if state.sizes is None:
            mask = _attention_mask(config, queries, hidden_states, token_mask)
        else:
            mask = state.attention_mask  # (B, 1, 1, L) key bias: it serves any number of query rows
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(attn_implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            mask,
            dropout=0.0 if not self.training else dropout,
            scaling=scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(*queries.shape[:2], -1)
        if all_rows and kept_rows is not None:
            # Flash kernels unpad queries by the key mask, so they attend from every real row; keep the kept ones.
            attn_output = _gather_rows(attn_output, kept_rows)
        selection = None if kept_rows is None else TokenSelection(kept_rows, kept_padding, merge_keys)
        return output_projection(attn_output), attn_weights, selection


class AtsLayerMixin:
    """A pre-norm encoder layer (listed before the upstream layer class): `x + attention branch(x)`, where an ATS
    layer keeps only some rows, then `x + MLP branch(x)` on the real rows only. The family says what its branches
    are (`ats_attention_branch`, `ats_attention_update`, `ats_mlp_update`) and where its ATS attention goes
    (`ats_attention_attribute`, `ats_attention_class`)."""

    ats_attention_attribute = "attention"
    ats_attention_class: type

    def __init__(self, config, layer_index: int):
        super().__init__(config)
        setattr(self, self.ats_attention_attribute, self.ats_attention_class(config))
        self.layer_index = layer_index

    def forward(
        self, hidden_states: torch.Tensor, state: "TokenState", plan: AtsLayerPlan | None = None, **kwargs
    ) -> tuple[torch.Tensor, "TokenState"]:
        """(B, L, D) in -> (B, M, D) out and the state of its M rows (the input's when no row was dropped);
        plan: what this layer samples, if it is an ATS layer, else None."""
        residual = hidden_states
        attn_output, selection = self.ats_attention_branch(hidden_states, state, plan, **kwargs)
        if selection is not None:
            residual, state = state.select(getattr(self, self.ats_attention_attribute).config, selection, residual)
        hidden_states = self.ats_attention_update(attn_output) + residual
        return update_real_rows(hidden_states, self.ats_mlp_padding(state), self.ats_mlp_update), state

    def ats_attention_branch(self, hidden_states: torch.Tensor, state: "TokenState", plan, **kwargs):
        """(B, L, D) -> the attention output (B, M, D) of the normed rows and the kept rows (or None)."""
        raise NotImplementedError

    def ats_attention_update(self, attn_output: torch.Tensor) -> torch.Tensor:
        """What the attention output adds to the residual (dropout, layer scale, ...)."""
        raise NotImplementedError

    def ats_mlp_update(self, rows: torch.Tensor) -> torch.Tensor:
        """(T, D) -> (T, D): what the MLP branch adds to each row (norm, MLP, dropout, layer scale, ...)."""
        raise NotImplementedError

    def ats_mlp_padding(self, state: "TokenState") -> "PaddingLayout | None":
        """The padding the MLP branch may skip (a family whose MLP branch mixes rows returns None)."""
        return state.padding


class AtsViTStyleLayerMixin(AtsLayerMixin):
    """The branches of a ViT-style layer (ViT, DeiT): `layernorm_before`, `attention`, `layernorm_after`, `mlp`,
    `dropout`."""

    def ats_attention_branch(self, hidden_states, state, plan, **kwargs):
        attn_output, _, selection = self.attention(self.layernorm_before(hidden_states), state, plan, **kwargs)
        return attn_output, selection

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
# Models
# ----------------------------------------------------------------------------------------------------------------


_UNCHANGED = object()


class AtsPreTrainedMixin:
    """Settings, plans and strict loading for a family's `PreTrainedModel` subclass (listed first among its bases).

    A family sets `_ats_optional_weights` (weight-name prefixes a checkpoint may lack or carry extra: task heads),
    `_ats_expected_checkpoints` (words for the loading error) and `_ats_auto_map` (the auto classes remote-code users
    may load it with)."""

    _ats_optional_weights: tuple[str, ...] = ("classifier.", "pooler.")
    _ats_expected_checkpoints = "a checkpoint of the same architecture"
    _ats_auto_map: dict[str, str] = {}

    @property
    def ats_settings(self) -> dict:
        """The ATS settings in force, as `set_ats`'s keyword arguments: layers, max_tokens, sampler, capacity."""
        config = self.config
        return {
            "layers": list(config.ats_layers),
            "max_tokens": config.ats_max_tokens,
            "sampler": config.ats_sampler,
            "capacity": config.ats_capacity,
            "merge": config.ats_merge,
        }

    def set_ats(
        self, *, layers=_UNCHANGED, max_tokens=_UNCHANGED, sampler=_UNCHANGED, capacity=_UNCHANGED, merge=_UNCHANGED
    ) -> dict:
        """Switch Adaptive Token Sampling on this built model; arguments left out keep their current values.

        Args:
            layers: 0-based indices of the layers that sample tokens (`[]`: the upstream model).
            max_tokens: K: None (all tokens, the paper), an int > S (the special tokens), a fraction in (0, 1], or
                one per layer.
            sampler: "inverse_transform" (ATS), "top_k" or "random".
            capacity: None for the adaptive mode; rows per ATS layer (int > S, fraction, or one per layer) for the
                static mode (see the config).
            merge: None drops unsampled tokens (the paper); a cosine similarity in [-1, 1] merges each into its most
                similar kept token when at least that similar (see the config).
        Returns:
            The previous settings, so that `model.set_ats(**previous)` restores them.
        Raises `ValueError` naming the bad value and the allowed range; then nothing changes. Assigning the config
        fields directly also works (they are validated at the next forward pass); this checks them at once.
        """
        given = {"layers": layers, "max_tokens": max_tokens, "sampler": sampler, "capacity": capacity, "merge": merge}
        previous = self.ats_settings
        settings = {key: previous[key] if value is _UNCHANGED else value for key, value in given.items()}
        config = self.config
        checked = config.validated_ats_settings(settings["layers"], settings["max_tokens"], settings["sampler"])
        capacity = config.validated_ats_capacity(settings["layers"], settings["capacity"])
        merge = config.validated_ats_merge(settings["merge"])
        config.ats_layers, config.ats_max_tokens, config.ats_sampler = checked
        config.ats_capacity, config.ats_merge = capacity, merge
        self._resolve_ats_plans()
        return previous

    def _resolve_ats_plans(self) -> None:
        """Resolve the settings for the configured image size now, so that the first forward pass of a compiled
        model finds them ready (filling the cache inside it would make torch.compile compile a second time)."""
        for module in self.modules():
            if isinstance(module, AtsEncoderMixin):
                module._ats_plans(num_input_tokens(self.config))

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
    """(B, num_hidden_layers) long: real rows each layer output."""
    sampled_token_indices: torch.Tensor | None
    """(B, ATS layers, max_kept) patch positions each ATS layer kept, -1 padded; None without ATS layers."""
    dense_hidden_states: torch.Tensor | None
    """(B, N, D) the full input grid, each token's value from the last layer that computed it
    (`config.ats_dense_output`), else None."""

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


class AtsEncoderMixin:
    """The layer loop of the module that owns a family's encoder layers (each an ATS-aware layer with `layer_index`,
    called as `layer(hidden_states, state, plan) -> (hidden_states, state)`). The family says where they are
    (`ats_encoder_layers`) and calls `_init_ats_plans()` in `__init__`."""

    @property
    def ats_encoder_layers(self) -> nn.ModuleList:
        raise NotImplementedError

    def _init_ats_plans(self) -> None:
        self._resolved_settings = (None, {})

    def run_layers(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, start_layer: int = 0, **kwargs
    ) -> AtsEncoderRun:
        """The encoder layers from `start_layer` on (any final norm excluded).

        Args:
            hidden_states: (B, N, D) the input of layer `start_layer` with every token still present, so no ATS layer
                may come before it (a tuner caches the shared dense prefix this way).
            attention_mask: (B, N) 1 for real tokens, as in `forward`.
        Returns:
            an `AtsEncoderRun`; layers before `start_layer` count every token in `num_tokens`.
        """
        config = self.config
        plans = self._ats_plans(hidden_states.shape[1])
        earlier = sorted(layer for layer in plans if layer < start_layer)
        if earlier:
            raise ValueError(
                f"start_layer={start_layer} comes after ATS layer(s) {earlier}: the layers before it must keep every "
                "token."
            )
        num_special = num_special_tokens(config)
        state = TokenState.initial(config, hidden_states, attention_mask)
        num_tokens = [state.num_real(hidden_states.shape[0])] * start_layer
        sampled_token_indices = []
        dense = hidden_states if config.ats_dense_output else None
        for layer in self.ats_encoder_layers[start_layer:]:
            plan = plans.get(layer.layer_index)
            if plan is not None and dense is not None:
                dense = _write_rows(dense, hidden_states, state)  # the last values of the tokens this layer may drop
            hidden_states, state = layer(hidden_states, state, plan, **kwargs)
            num_tokens.append(state.num_real(hidden_states.shape[0]))
            if plan is not None:
                # Padding rows sit at position 0 (CLS): with S > 1 they would read -S; -1 is the documented pad.
                sampled_token_indices.append((state.positions[:, num_special:] - num_special).clamp(min=-1))
        if dense is not None:
            dense = _write_rows(dense, hidden_states, state)
        return AtsEncoderRun(
            hidden_states, state, torch.stack(num_tokens, dim=1), _stack_padded(sampled_token_indices), dense
        )

    def _ats_plans(self, num_reference_tokens: int) -> dict[int, AtsLayerPlan]:
        """`{layer_index: plan}` for the ATS settings in the config now. Settings changed since the last forward
        pass are validated first (a bad value raises `ValueError`), so a change always takes effect or fails
        loudly."""
        config = self.config
        key = (
            _frozen(config.ats_layers),
            _frozen(config.ats_max_tokens),
            config.ats_sampler,
            _frozen(config.ats_capacity),
            config.ats_merge,
            config._attn_implementation,
            num_reference_tokens,
        )
        if key != self._resolved_settings[0]:
            config.check_ats_settings()
            if config.ats_merge is not None and config._attn_implementation not in ("eager", "sdpa"):
                raise ValueError(
                    f"ats_merge needs attn_implementation 'eager' or 'sdpa' (proportional attention adds a "
                    f"per-key bias), got {config._attn_implementation!r}."
                )
            max_tokens = config.resolve_ats_max_tokens(num_reference_tokens)
            capacity = config.resolve_ats_capacity(num_reference_tokens) or {}
            plans = {layer: AtsLayerPlan(k, capacity.get(layer)) for layer, k in max_tokens.items()}
            self._resolved_settings = (key, plans)
        return self._resolved_settings[1]


def _frozen(value):
    """A list setting as a tuple, so that comparing it with an earlier copy sees in-place edits."""
    return tuple(value) if isinstance(value, list) else value


def _write_rows(grid: torch.Tensor, rows: torch.Tensor, state: TokenState) -> torch.Tensor:
    """(B, N, D) full-grid values with the (B, M, D) real rows written at their positions (out of place)."""
    batch_size, num_tokens, width = grid.shape
    targets = state.positions
    if state.token_mask is not None:
        targets = targets.masked_fill(~state.token_mask, num_tokens)
    spare = torch.cat([grid, grid.new_zeros(batch_size, 1, width)], dim=1)
    return spare.scatter(1, targets[..., None].expand(-1, -1, width), rows.to(grid.dtype))[:, :num_tokens]


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

    A padding layout exists only when there is padding, so transformers' all-real check (a device-to-host read) is
    skipped. Eager and sdpa take no mask at all when every key is real (what transformers would return), so that
    case skips the mask builder's Python work."""
    if token_mask is None and config._attn_implementation in ("eager", "sdpa"):
        return None
    return create_bidirectional_mask(
        config=config,
        inputs_embeds=queries,
        attention_mask=token_mask,
        encoder_hidden_states=keys,
        allow_is_bidirectional_skip=token_mask is None,
    )


def _as_float32(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor in float32 for scoring, without a dispatched no-op `.float()` call when it already is."""
    return tensor if tensor.dtype == torch.float32 else tensor.float()


def _stack_padded(rows: list[torch.Tensor]) -> torch.Tensor | None:
    """Per-layer (B, m_i) index tensors -> (B, layers, max m_i), padded with -1; None for no layers."""
    if not rows:
        return None
    width = max(row.shape[1] for row in rows)
    return torch.stack([torch.nn.functional.pad(row, (0, width - row.shape[1]), value=-1) for row in rows], dim=1)


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


@dataclass
class AtsImageClassifierOutput(ImageClassifierOutput):
    num_tokens: torch.LongTensor | None = None
    sampled_token_indices: torch.LongTensor | None = None
    token_mask: torch.LongTensor | None = None


AtsModelOutput.__doc__ = (
    "[`BaseModelOutputWithPooling`] of an ATS base model; `last_hidden_state` holds the real tokens (special tokens "
    "first) packed to the front of each row (see `token_mask`), or the full token grid with "
    "`config.ats_dense_output`.\n" + ATS_OUTPUT_DOC
)
AtsImageClassifierOutput.__doc__ = "[`ImageClassifierOutput`] of an ATS image classifier.\n" + ATS_OUTPUT_DOC


class AtsViTStyleModelMixin(AtsEncoderMixin):
    """The base model of a ViT-style family (ViT, DeiT), listed before the family's PreTrainedModel and upstream base
    model: `embeddings`, `layers`, `layernorm` and an optional `pooler`, built from the family's classes
    (`ats_embeddings_class`, `ats_layer_class`, `ats_pooler_class`)."""

    ats_embeddings_class: type
    ats_layer_class: type
    ats_pooler_class: type

    def __init__(self, config, add_pooling_layer: bool = True, use_mask_token: bool = False):
        # The upstream __init__ would build (and randomly initialise) plain layers only for them to be replaced.
        PreTrainedModel.__init__(self, config)
        config.check_ats_settings()
        self.embeddings = self.ats_embeddings_class(config, use_mask_token=use_mask_token)
        self.layers = nn.ModuleList([self.ats_layer_class(config, index) for index in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = self.ats_pooler_class(config) if add_pooling_layer else None
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
    ) -> AtsModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images, as from the family's image processor.
        bool_masked_pos (`torch.BoolTensor` of shape `(batch_size, num_patches)`, *optional*):
            Patches to replace by the mask token (models built with `use_mask_token=True`).
        interpolate_pos_encoding (`bool`, *optional*):
            Interpolate position embeddings to the input size; K defaults then follow the actual token count.
        attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
            1 for tokens to attend to, 0 for tokens to ignore (special tokens first, never 0). Ignored tokens are
            never kept.
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
        return AtsModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=self.pooler(sequence_output) if self.pooler is not None else None,
            num_tokens=run.num_tokens,
            sampled_token_indices=run.sampled_token_indices,
            token_mask=token_mask,
        )


class AtsCLSClassifierMixin:
    """The forward of an image classifier with one linear head on the final CLS row (ViT's, DeiT's CLS-head class),
    listed before the family's PreTrainedModel; the base model is `self.base_model`, the head `self.classifier`."""

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
        outputs: AtsModelOutput = self.base_model(
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


def mean_of_kept_patches(outputs: AtsModelOutput, num_special: int, dense_output: bool) -> torch.Tensor:
    """(B, D) mean of the patch tokens the last layer kept, from a base model's outputs (for heads that pool patches,
    as DINOv2's and CLIP's classifiers): padding rows are left out of packed rows, and on the dense grid
    (`dense_output`) so are the positions the last ATS layer dropped. Without ATS it is the mean of all patches."""
    patches = outputs.last_hidden_state[:, num_special:]
    kept = outputs.token_mask[:, num_special:].bool()
    if dense_output and outputs.sampled_token_indices is not None:
        last_kept = outputs.sampled_token_indices[:, -1]
        num_patches = kept.shape[1]
        spare = torch.zeros(kept.shape[0], num_patches + 1, dtype=torch.bool, device=kept.device)
        kept = spare.scatter_(1, last_kept.masked_fill(last_kept < 0, num_patches), True)[:, :num_patches]
    weights = kept.to(patches.dtype)[..., None]
    return (patches * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def ats_output_fields(outputs) -> dict:
    """What a task model passes on from its base model's outputs: hidden states, attentions and the ATS fields."""
    return {
        "hidden_states": outputs.hidden_states,
        "attentions": outputs.attentions,
        "num_tokens": outputs.num_tokens,
        "sampled_token_indices": outputs.sampled_token_indices,
        "token_mask": outputs.token_mask,
    }

__all__ = [
    "ATS_OUTPUT_DOC",
    "AtsAttentionMixin",
    "AtsCLSClassifierMixin",
    "AtsEncoderMixin",
    "AtsEncoderRun",
    "AtsImageClassifierOutput",
    "AtsLayerMixin",
    "AtsLayerPlan",
    "AtsModelOutput",
    "AtsPreTrainedMixin",
    "AtsViTStyleLayerMixin",
    "AtsViTStyleModelMixin",
    "PaddingLayout",
    "TokenSelection",
    "TokenState",
    "ats_output_fields",
    "inverse_transform_sampling",
    "mean_of_kept_patches",
    "merge_dropped_tokens",
    "pack_kept_tokens",
    "pack_kept_tokens_static",
    "random_sampling",
    "sample_patch_tokens",
    "significance_scores",
    "top_k_sampling",
    "update_real_rows",
]
