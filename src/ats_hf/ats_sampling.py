"""Adaptive Token Sampling, the algorithm: pure functions, tensors in and tensors out.

Scoring (`significance_scores`), the samplers (`inverse_transform_sampling`, the paper's; `top_k_sampling` and
`random_sampling`, its ablation baselines), packing the kept rows (`pack_kept_rows` for the adaptive mode,
`pack_kept_tokens_static` for the static mode), merging dropped tokens (`merge_dropped_tokens`), and `select_tokens`,
the whole selection step of an ATS layer in one call. Token Merging's bipartite matching (`bipartite_merge`, the peer
baseline) sits beside them.

Imports torch only: no transformers, no modeling code. It is saved beside the modeling files of every checkpoint
(`trust_remote_code`), so it must stay that way.

Shapes: B = batch, L = tokens entering a layer (S >= 0 special tokens first, CLS at 0, then P = L - S patch tokens),
M = rows a layer outputs, H = heads, D = width (all heads), d = head width, R = sample points.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

ATS_SAMPLERS = ("inverse_transform", "top_k", "random")
TINY = torch.finfo(torch.float32).tiny  # what merged sizes are divided by when they are 0 (0 / tiny = 0)
NEAREST_BY_DISTANCES_LIMIT = 1 << 17
"""On the CPU, the largest (B, R, P) distance matrix the nearest-value matching builds; above it, binary search (see
`_nearest`). Measured on a 2-core AMD EPYC, 1 thread (scripts/nearest_crossover.py): the matrix costs about 1.5-2.5
ns per entry (34 us at DeiT-S's batch 1, K = 0.5: 19k entries), the search a nearly fixed 130-270 us up to a few
hundred points; they cross near 2^17 entries."""
NEAREST_BY_DISTANCES_LIMIT_ACCELERATOR = 1 << 22
"""The same limit on other devices (16 MiB of float32), where the matrix's three kernels are cheaper than the
search's dozen launches up to larger sizes (not measured on a GPU yet)."""


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
        (B, P) float32 scores of the P = L - S patch tokens, summing to 1 per image; padding scores 0. An image whose
        scores are all zero gets NaN (0 / 0, as in the official code): the samplers keep such an image whole.
    """
    batch_size, num_tokens = values.shape[:2]
    column = cls_attention.sum(dim=1).view(batch_size, num_tokens, 1)
    patch_mask = None if token_mask is None else token_mask[:, num_special:, None]
    return _significance(column, values, patch_mask, num_special).view(batch_size, num_tokens - num_special)


def _significance(
    cls_attention: torch.Tensor, values: torch.Tensor, patch_mask: torch.Tensor | None, num_special: int
) -> torch.Tensor:
    """`significance_scores` from the CLS attention already summed over heads, (B, L, 1), and the values, (B, L, D);
    or, as an ATS layer has them, (B, L, 1, 1) and (B, L, H, d); and the (B, P, 1) patch mask, whose padding scores 0
    (None: scores as they come) -> (B, P, 1) (a column per image: the sampler's layout, which needs no reshaping on
    the way)."""
    norms = torch.linalg.vector_norm(_as_float32(values), dim=tuple(range(2, values.dim())), keepdim=True)
    scores = _patch_column(_as_float32(cls_attention) * norms, num_special)
    if patch_mask is not None:
        scores = torch.where(patch_mask, scores, _scalar(0.0, scores))
    # Divided by their total, as the official code does: an all-zero column becomes NaN (0 / 0), which the samplers
    # take as unrankable (the image keeps every real patch), as they take a flat CDF.
    return scores / scores.sum(dim=1, keepdim=True)


def _patch_column(scores: torch.Tensor, num_special: int) -> torch.Tensor:
    """(B, L, 1, ...) -> the (B, P, 1) rows after the S special ones (`_rows_view`)."""
    batch_size, num_tokens = scores.shape[:2]
    shape = (batch_size, num_tokens - num_special, 1)
    return _rows_view(scores, num_special, shape, (scores.stride(0), scores.stride(1), 1))


def _rows_view(tensor: torch.Tensor, first: int, shape: tuple, strides: tuple) -> torch.Tensor:
    """The rows `first .. first + shape[1] - 1` of a (B, L, ...) tensor, viewed as `shape` (whose `strides` the
    caller gives, as `reshape` would make them). In eager mode one `as_strided` call, where a slice and a reshape
    dispatch three operations (batch 1 is bound by their count); a compiled or exported graph slices and reshapes
    (ONNX has no strided view)."""
    if _building_graph():
        return tensor[:, first:first + shape[1]].reshape(shape)
    return tensor.as_strided(shape, strides, tensor.storage_offset() + first * tensor.stride(1))


def inverse_transform_sampling(
    scores: torch.Tensor, patch_mask: torch.Tensor | None, max_tokens: int
) -> torch.Tensor:
    """The paper's sampler: nearest-CDF matching of `max_tokens - 1` evenly spaced points, then de-duplication.

    Per image, over its own real patch tokens only: sort scores ascending, take the cumulative sum, min-max
    normalise it to [0, 1], place R = max_tokens - 1 points from the smallest non-zero normalised value up to 1,
    and keep the token whose normalised CDF is nearest to each point (ties to the lower one). The lowest token is
    never kept. An image whose CDF is flat (one real patch, or every score zero) or NaN cannot be ranked: it keeps
    every real patch.

    Args:
        scores: (B, P) float32 significance scores, >= 0 (padding scores are taken as 0).
        patch_mask: (B, P) bool, True for real patch tokens; None if all are real.
        max_tokens: K >= 2, the most tokens kept, CLS included.
    Returns:
        (B, P) bool, True for kept patch tokens.
    """
    return sample_patch_tokens("inverse_transform", scores, patch_mask, max_tokens)


def _inverse_transform_picks(
    scores: torch.Tensor, patch_mask: torch.Tensor | None, num_points: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse-transform sampler's picks: (B, R, 1) patch indices (duplicates included) and whether each image's
    (B, 1, 1) CDF can rank its patches, from (B, P, 1) scores (0 in padding) and mask. The official arithmetic: the
    same sort, sums, points and first-nearest choice."""
    batch_size = scores.shape[0]
    if patch_mask is None:
        sorted_scores, order = _stable_sort(scores)
    else:  # padding sorts last (as inf), then adds its 0: the CDF repeats its last real value there
        order = _stable_sort(torch.where(patch_mask, scores, _scalar(float("inf"), scores)))[1]
        sorted_scores = scores.gather(1, order)
    cdf = torch.cumsum(sorted_scores, dim=1)
    lowest, highest = torch.aminmax(cdf, dim=1, keepdim=True)
    span = highest - lowest
    rankable = span > _scalar(0.0, span)  # False for a flat CDF and for NaN
    # (B, P, 1), from exactly 0 to exactly 1 (x / x); padding repeats the 1, after the last real patch. The lowest
    # patches (0) are never kept: as 2, above every point, they are never nearest either, and the points start at
    # the smallest value left. (A NaN column, which cannot be ranked, stays NaN.)
    nonzero = ((cdf - lowest) / span).masked_fill_(cdf <= lowest, 2.0).view(batch_size, 1, -1)  # (B, 1, P)
    points = _sample_points(nonzero.min(dim=2, keepdim=True).values, num_points)
    return order.gather(1, _nearest(nonzero, points)), rankable


def _nearest(nonzero: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(B, 1, P) ascending values from 0, with the zeros as 2, and (B, R, 1) points from the smallest non-zero value
    up to 1 -> (B, R, 1) long: the position of the non-zero value nearest to each point, the first of equally near
    ones (the official argmin of |point - value|, less the lowest patches, which it could pick only when rounding
    made a point as near to 0 as to the smallest non-zero value).

    A batch whose (B, R, P) distance matrix fits the device's limit (`NEAREST_BY_DISTANCES_LIMIT` on the CPU), every
    exported graph (ONNX has no binary search) and a device other than the CPU and CUDA computes that matrix: a few
    operations, which is what batch 1 is bound by. A larger one (large batches, K near all the tokens, long videos)
    finds the same positions by binary search (`_nearest_by_search`)."""
    batch_size, num_points = points.shape[:2]
    num_values = nonzero.shape[2]
    device = points.device.type
    limit = NEAREST_BY_DISTANCES_LIMIT if device == "cpu" else NEAREST_BY_DISTANCES_LIMIT_ACCELERATOR
    if (
        torch.compiler.is_exporting()
        or device not in ("cpu", "cuda")
        or batch_size * num_points * num_values <= limit
    ):
        distances = points - nonzero
        return torch.abs(distances, out=distances).argmin(dim=2, keepdim=True)
    return _nearest_by_search(nonzero.view(batch_size, num_values), points.view(batch_size, num_points)).view(
        batch_size, num_points, 1
    )


def _nearest_by_search(nonzero: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """`_nearest` by binary search, (B, P) values and (B, R) points -> (B, R) positions, exactly the matrix's choice.

    Distances in float32 fall (weakly) towards the point from below and rise above it, so the first nearest value is
    either the first value at or above the point or, when the value just below it is no farther, the first of the
    values below whose float32 distance rounds to that same distance: a run that can be long when many values are
    tiny next to the point (peaked attention), and that the matrix's argmin starts at. fl(p - v) <= t holds exactly
    for v above p - m, where m is the midpoint between t and the next float32 (or at it, when it rounds down): in
    float64 that bound is exact, and one check of the value found settles the midpoint itself. (Equal values are
    the leading zeros, never taken, and the trailing 1 of padding, after the last real 1; a point above 1 by
    rounding is taken as 1.)"""
    num_values = nonzero.shape[1]
    # The values ascending again (the zeros back: every real value is at most 1).
    values = nonzero.masked_fill(nonzero > _scalar(1.0, nonzero), 0.0)
    points = torch.minimum(points, _scalar(1.0, points))
    above = torch.searchsorted(values, points).clamp_(max=num_values - 1)  # in range for NaN rows as well
    below = (above - 1).clamp_(min=0)
    distance_below = points - values.gather(1, below)
    take_below = distance_below <= values.gather(1, above) - points
    # The first value of the run below whose distance rounds to distance_below, not before the first non-zero value.
    next_float = torch.nextafter(distance_below, _scalar(float("inf"), points))
    midpoint = (distance_below.double() + next_float.double()) / 2
    first_nonzero = (nonzero > _scalar(1.0, nonzero)).sum(dim=1, keepdim=True)  # the zeros (as 2) lead
    run_start = torch.searchsorted(values.double(), points.double() - midpoint)
    run_start = torch.minimum(torch.maximum(run_start, first_nonzero), below)
    run_start = run_start + (points - values.gather(1, run_start) > distance_below)  # the midpoint rounded up
    return torch.where(take_below, run_start, above)


def _stable_sort(values: torch.Tensor, descending: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, ...) -> values sorted ascending (or descending) along dim 1 and their order, equal values in index
    order.
    Under torch.export: `_exported_sort`."""
    if torch.compiler.is_exporting():
        return _exported_sort(values, descending)
    return torch.sort(values, dim=1, stable=True, descending=descending)


def _exported_sort(values: torch.Tensor, descending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The stable sort of an exported graph (ONNX has no stable sort): a top-k over the whole row, which becomes
    ONNX's TopK, whose specification breaks ties by the lower index (ONNX Runtime does: tests/test_export.py). One
    node where a (B, N, N) rank count took a dozen. PyTorch's own topk makes no such promise, so eager code never
    runs this, and other consumers of the exported program get their top-k's tie order."""
    return values.topk(values.shape[1], dim=1, largest=descending, sorted=True)


def _sample_points(lowest_nonzero: torch.Tensor, num_points: int) -> torch.Tensor:
    """(B, 1, 1) start values -> (B, R, 1) points, evenly spaced from the start up to 1 (the official arithmetic:
    start + (linspace(0, 1, R) (R - 1) - start step) / (R - 1))."""
    if num_points == 1:
        return torch.ones_like(lowest_nonzero)
    steps, unit = _constant(_point_grid, num_points, lowest_nonzero.device)
    return torch.addcdiv(lowest_nonzero, unit - lowest_nonzero * steps, _scalar(num_points - 1, lowest_nonzero))


def _point_grid(num_points: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, 1) step numbers 0..R-1 and (R, 1) linspace(0, 1, R) * (R - 1)."""
    steps = torch.arange(num_points, device=device, dtype=torch.float32)
    unit = torch.linspace(0.0, 1.0, num_points, device=device) * (num_points - 1)
    return steps.view(-1, 1), unit.view(-1, 1)


def top_k_sampling(scores: torch.Tensor, patch_mask: torch.Tensor | None, max_tokens: int) -> torch.Tensor:
    """Ablation baseline: keep the `max_tokens - 1` highest-scoring real patch tokens. (B, P) -> (B, P) bool."""
    return sample_patch_tokens("top_k", scores, patch_mask, max_tokens)


def random_sampling(scores: torch.Tensor, patch_mask: torch.Tensor | None, max_tokens: int) -> torch.Tensor:
    """Ablation baseline: keep `max_tokens - 1` uniformly random real patch tokens (torch's global RNG)."""
    return sample_patch_tokens("random", scores, patch_mask, max_tokens)


def _top_k_picks(scores: torch.Tensor, patch_mask: torch.Tensor | None, count: int):
    return _largest(scores, patch_mask, count), _rankable_rows(scores)


def _random_picks(scores: torch.Tensor, patch_mask: torch.Tensor | None, count: int):
    return _largest(torch.rand_like(scores), patch_mask, count), _rankable_rows(scores)


def _largest(keys: torch.Tensor, patch_mask: torch.Tensor | None, count: int) -> torch.Tensor:
    """(B, P, 1) keys -> (B, min(count, P), 1) indices of the largest ones among the real patches (padding only once
    the real ones run out)."""
    if patch_mask is not None:
        keys = torch.where(patch_mask, keys, _scalar(float("-inf"), keys))
    return keys.topk(min(count, keys.shape[1]), dim=1).indices


def _rankable_rows(scores: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1) bool: False for an image whose scores are all zero or NaN (normalising spreads a NaN over the whole
    column), as for the inverse transform's flat or NaN CDF."""
    return scores.sum(dim=1, keepdim=True) > _scalar(0.0, scores)


TOKEN_SAMPLERS: dict[str, Callable[[torch.Tensor, torch.Tensor | None, int], tuple[torch.Tensor, torch.Tensor]]] = {
    "inverse_transform": _inverse_transform_picks,
    "top_k": _top_k_picks,
    "random": _random_picks,
}
"""Each sampler by name, as `(scores (B, P, 1), 0 in padding; patch_mask (B, P, 1) | None, R) -> (picks,
rankable)`: the (B, R', 1) long patch indices it picks (duplicates allowed; R' <= R) and (B, 1, 1) bool, False for
an image it cannot rank. A column per image: the layout in which an ATS layer's scores arrive and its kept rows are
marked, with no reshaping between them (batch 1 is bound by the number of operations)."""


def sample_patch_tokens(
    sampler: str, scores: torch.Tensor, patch_mask: torch.Tensor | None, max_tokens: int
) -> torch.Tensor:
    """The patch tokens `sampler` (a name in `TOKEN_SAMPLERS`) keeps. (B, P) scores -> (B, P) bool; padding scores
    (where `patch_mask` is False) are taken as 0.

    An image the sampler cannot rank (scores that are not finite: a NaN or inf in its input makes its whole row NaN;
    for the inverse transform also a flat CDF) keeps every real patch token, so it never falls below the documented
    minimum and is never counted as cheap.
    """
    batch_size, num_patches = scores.shape
    if num_patches == 0:  # only special tokens are left: nothing to sample
        return torch.zeros_like(scores, dtype=torch.bool)
    scores = scores[..., None]
    if patch_mask is not None:
        patch_mask = patch_mask[..., None]
        scores = torch.where(patch_mask, scores, _scalar(0.0, scores))
    picks, rankable = TOKEN_SAMPLERS[sampler](scores, patch_mask, max_tokens - 1)
    return _kept_rows(picks, rankable, num_patches, patch_mask, 0).view(batch_size, num_patches)


def kept_rows_mask(
    picks: torch.Tensor,
    rankable: torch.Tensor,
    num_rows: int,
    token_mask: torch.Tensor | None = None,
    num_special: int = 0,
) -> torch.Tensor:
    """Which of N = S + P rows are kept: the S special rows, the picked patches, and every real row of an image
    that cannot be ranked.

    Args:
        picks: (B, R) long patch indices (into the P patches, duplicates allowed); rankable: (B, 1) bool.
        num_rows: N; token_mask: (B, N) bool real rows (None: all real); num_special: S.
    Returns:
        (B, N) bool.
    """
    token_mask = None if token_mask is None else token_mask[..., None]
    kept = _kept_rows(picks[..., None], rankable[..., None], num_rows, token_mask, num_special)
    return kept.view(picks.shape[0], num_rows)


def _kept_rows(
    picks: torch.Tensor, rankable: torch.Tensor, num_rows: int, token_mask: torch.Tensor | None, num_special: int
) -> torch.Tensor:
    """`kept_rows_mask` in the samplers' layout: (B, R, 1) picks, (B, 1, 1) rankable, (B, N, 1) token_mask ->
    (B, N, 1) bool."""
    # Not rankable: every row (template >= False); rankable: the special rows only (template >= True).
    kept = _constant(_special_rows_template, num_rows, num_special, picks.device) >= rankable
    if num_special:
        picks = picks + _scalar(num_special, picks, torch.long)
    kept = kept.scatter_(1, picks, True)
    return kept if token_mask is None else kept & token_mask


def _special_rows_template(num_rows: int, num_special: int, device: torch.device) -> torch.Tensor:
    """(1, N, 1) bool, True for the first S rows."""
    return (torch.arange(num_rows, device=device) < num_special).view(1, -1, 1)


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


def pack_kept_rows(kept: torch.Tensor) -> tuple[torch.Tensor, PaddingLayout | None]:
    """The kept rows, in their current order, packed to the front (the adaptive mode).

    Args:
        kept: (B, L) bool, True for the rows to keep (the special rows among them).
    Returns:
        kept_rows: (B, M) long indices into the L rows, M = the largest kept count;
        padding: the layout of the (B, M) output, or None when every image keeps M rows.
    The only device-to-host read of an ATS layer happens here (inside `nonzero` for a single image).
    """
    if kept.shape[0] == 1:  # no padding can exist
        return kept.view(-1).nonzero().view(1, -1), None
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

    An image that kept more than `capacity - S` patches keeps its `capacity - S` highest-scoring kept patches (of
    equal scores, the first).
    Args:
        kept_patches: (B, P) bool, or (B, P, 1) as the samplers mark them; scores: the scores the sampler ranked, in
            the same shape; capacity: C > S.
    Returns:
        kept_rows: (B, M) long into the L = P + S input rows (padding rows point at CLS), M = min(C, L);
        the layout of the M rows (`token_mask` only).
    """
    batch_size, num_patches = kept_patches.shape[:2]
    slots = min(capacity - num_special, num_patches)
    # Kept patches rank above every dropped one (-inf), so a slot holds a kept patch exactly when its value is not
    # -inf (a NaN score, an unscorable image's, ranks as a kept one). (`where`, not `masked_fill` of the negated
    # mask: one node fewer in an exported graph, one operation in eager.)
    ranking = torch.where(kept_patches, scores, _scalar(float("-inf"), scores)).view(batch_size, num_patches)
    values, chosen = _largest_first(ranking, slots)
    real = values != _scalar(float("-inf"), scores)
    # Sorting the chosen positions (padding slots as P, after every real one) restores the current order (a top-k
    # of them all: distinct values, so order is all a sort would add; one ONNX node where a sort exports as four).
    positions = torch.where(real, chosen, _scalar(num_patches, chosen, torch.long))
    positions = positions.topk(slots, dim=1, largest=False).values
    special_rows = torch.arange(num_special, device=scores.device).expand(batch_size, -1)
    positions = torch.where(real, positions + num_special, _scalar(0, positions, torch.long))
    kept_rows = torch.cat([special_rows, positions], dim=1)
    # cat, not pad: inductor's C++ backend (torch 2.13) fails to compile a padded bool mask fused with its use.
    token_mask = torch.cat([real.new_ones(batch_size, num_special), real], dim=1)
    return kept_rows, PaddingLayout(token_mask)


def _largest_first(values: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) -> the `count` largest values of each row and their indices, equal values to the lower index (so that
    PyTorch and an exported graph choose the same tokens at ties, e.g. the equal scores of an image that cannot be
    ranked): ONNX's TopK in an exported graph (its specification breaks ties that way), else the first `count` of a
    stable descending sort (PyTorch's own topk makes no promise at ties)."""
    if torch.compiler.is_exporting():
        return values.topk(count, dim=1)
    ordered, order = _stable_sort(values, descending=True)
    return ordered[:, :count], order[:, :count]


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
    becomes the size-weighted mean of itself and the rows it absorbs. When only the special rows are kept (every
    input's patches were padding), nothing merges: they come back as they are.

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
    weights = rows.new_ones(batch_size, num_rows, dtype=torch.float32) if sizes is None else sizes
    if num_slots <= num_special:  # no patch row kept: every input's patches were padding, nothing to merge
        return gather_rows(rows, kept_rows), weights.gather(1, kept_rows)
    device = rows.device
    slots = _constant(torch.arange, num_slots, device=device).expand(batch_size, -1)
    # Each current row's own slot if it was kept, else -1 (padding slots point at CLS: they write into a spare column).
    own_slot = torch.full((batch_size, num_rows + (padding is not None)), -1, dtype=torch.long, device=device)
    if padding is None:
        own_slot = own_slot.scatter_(1, kept_rows, slots)
    else:
        own_slot = own_slot.scatter_(1, kept_rows.masked_fill(~padding.token_mask, num_rows), slots)[:, :num_rows]

    # The most similar kept patch row of every row (special rows never receive), by cosine similarity of the keys.
    metric = torch.nn.functional.normalize(keys.float(), dim=-1)
    receivers = gather_rows(metric, kept_rows)[:, num_special:]
    similarity = metric @ receivers.transpose(1, 2)  # (B, L, M - S)
    if padding is not None:
        similarity = similarity.masked_fill(~padding.token_mask[:, None, num_special:], float("-inf"))
    best, nearest = similarity.max(dim=-1, keepdim=True)
    # Dropped rows too far from every kept row, and padding rows, go to the spare slot M, which is cut off.
    leaves = best < _scalar(min_similarity, best)
    if token_mask is not None:
        leaves = leaves | ~token_mask[..., None]
    spare_slot = _scalar(num_slots, nearest, torch.long)
    nearest = torch.where(leaves, spare_slot, nearest + _scalar(num_special, nearest, torch.long)).view(batch_size, -1)
    target = torch.where(own_slot >= _scalar(0, own_slot, torch.long), own_slot, nearest)  # (B, L) slots

    merged_sizes = weights.new_zeros(batch_size, num_slots + 1).scatter_add_(1, target, weights)[:, :num_slots]
    weighted = rows.float() * weights.unsqueeze(-1)
    merged = weighted.new_zeros(batch_size, num_slots + 1, width).scatter_add_(
        1, target.unsqueeze(-1).expand(-1, -1, width), weighted
    )[:, :num_slots]
    merged = merged / merged_sizes.clamp_min(TINY).unsqueeze(-1)
    return merged.to(rows.dtype), merged_sizes


def gather_rows(tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, L, ...) rows picked by (B, M) indices -> (B, M, ...), as one index_select over the flattened batch; for
    B = 1 the indices may be (M,)."""
    batch_size, num_rows = tensor.shape[:2]
    if rows.dim() == 1:
        return tensor.index_select(1, rows)
    if batch_size == 1:
        return tensor.index_select(1, rows.view(-1))
    offsets = torch.arange(0, batch_size * num_rows, num_rows, device=rows.device)[:, None]
    flat = tensor.reshape(batch_size * num_rows, *tensor.shape[2:]).index_select(0, (rows + offsets).flatten())
    return flat.view(*rows.shape, *tensor.shape[2:])


def kept_patch_positions(last_kept_by: torch.Tensor, num_layers: int, width: int) -> torch.Tensor:
    """Which patches each of `num_layers` nested selections kept, from the index of the last one that kept each patch.

    Args:
        last_kept_by: (B, P) long, for each patch the index of the last selection (ATS layer) that kept it, -1 if
            none; every selection keeps a subset of what the one before kept.
        width: the most patches any selection kept (the output's last size).
    Returns:
        (B, num_layers, width) long: the patch positions selection i kept (those with `last_kept_by >= i`),
        ascending, padded with -1.
    """
    num_patches = last_kept_by.shape[1]
    device = last_kept_by.device
    layers = _constant(torch.arange, num_layers, device=device).view(-1, 1)
    kept = last_kept_by.view(-1, 1, num_patches) >= layers  # (B, layers, P)
    beyond = _scalar(num_patches, last_kept_by, torch.long)
    candidates = torch.where(kept, _constant(torch.arange, num_patches, device=device), beyond)
    ascending = candidates.topk(width, dim=2, largest=False).values  # kept positions first, then `beyond`
    return ascending.masked_fill_(ascending == beyond, -1)


class TokenSelection(NamedTuple):
    """The rows an ATS layer keeps: `kept_rows` (B, M) into its L input rows, the S special rows first ((M,) for a
    single input in the adaptive mode; `gather_rows` takes both; None when every row is kept in place), the
    `padding` layout of the M rows (None when every row is real), and the (B, L, D) keys, heads concatenated, to
    merge the dropped rows by (None when they are dropped)."""

    kept_rows: torch.Tensor | None
    padding: PaddingLayout | None
    merge_keys: torch.Tensor | None = None


def scoring_query(
    queries: torch.Tensor,
    num_heads: int,
    num_special: int,
    token_mask: torch.Tensor | None = None,
    sizes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The query whose attention row scores the tokens, split by head: CLS's (row 0) when there are special tokens;
    for a model without any (S = 0, e.g. VideoMAE, which mean-pools), the mean query of the real rows, each weighing
    as the tokens it stands for once tokens were merged (the mean of every input token's query: a query is linear in
    its row).

    Args:
        queries: (B, L, D) all heads concatenated; num_heads: H; token_mask: (B, L) bool real rows (None: all real);
        sizes: (B, L) float32 tokens each row stands for, 0 for padding (None: one each).
    Returns:
        (B, 1, H, d), d = D / H.
    """
    batch_size, _, width = queries.shape
    shape = (batch_size, 1, num_heads, width // num_heads)
    if num_special:  # row 0, split by head
        batch_stride, row_stride, width_stride = queries.stride()
        return _rows_view(queries, 0, shape, (batch_stride, row_stride, width_stride * shape[3], width_stride))
    if sizes is None and token_mask is None:
        return queries.mean(dim=1, keepdim=True).view(shape)
    weights = (sizes if sizes is not None else token_mask.to(torch.float32)).to(queries.dtype)[..., None]
    return ((queries * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)).view(shape)


def select_tokens(
    cls_query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    num_heads: int,
    scaling: float,
    *,
    sampler: str,
    max_tokens: int,
    capacity: int | None = None,
    num_special: int = 1,
    token_mask: torch.Tensor | None = None,
    sizes: torch.Tensor | None = None,
    merge: bool = False,
) -> TokenSelection:
    """The selection step of an ATS layer: score the patch tokens by the CLS attention row (the mean query's when
    S = 0) and the value norms, sample them, and pack the kept rows (CLS and the other special tokens first).

    Args:
        cls_query: the query that scores (`scoring_query`: CLS's, or the mean query when S = 0); keys, values: the
            L rows'; each with its H heads concatenated, (B, 1 or L, D), or split, (B, 1 or L, H, d) (the layout an
            attention layer has anyway: no reshaping here).
        num_heads: H; scaling: the attention logits' scale (1 / sqrt(D / H) in a plain ViT).
        sampler: a name in `ATS_SAMPLERS`; max_tokens: K > S, the most rows kept, special tokens included.
        capacity: None for the adaptive mode (M = the batch's largest kept count), or C > S rows (the static mode).
        num_special: S, the leading tokens that are always kept and never scored.
        token_mask: (B, L) bool real rows (None: all real); sizes: (B, L) float tokens each row stands for, once
            tokens were merged (None: one each). Padding and size both enter the CLS row's softmax, as in attention.
        merge: whether the dropped rows will be merged into kept ones (then the selection carries the keys).
    Returns:
        a `TokenSelection`; no device-to-host read happens except in the adaptive packing.
    """
    batch_size, num_tokens = values.shape[:2]
    if num_tokens == num_special:  # only special tokens are left (every patch was masked or dropped)
        return TokenSelection(None, None)
    cls_query, keys_by_head, values_by_head = (
        tensor if tensor.dim() == 4 else tensor.view(*tensor.shape[:2], num_heads, -1)
        for tensor in (cls_query, keys, values)
    )
    # The CLS row of every head as a product and a per-head sum: (B, L, H, 1), the same multiply-adds as a (1 x L)
    # matmul per head, in a handful of operations (batch 1 is bound by their count: hence the kept dimensions of the
    # sums, which spare reshapes, and `_softmax`, softmax's own kernel without its dispatching wrapper).
    products = _as_float32(cls_query) * _as_float32(keys_by_head)
    cls_logits = products.sum(dim=-1, keepdim=True) * _scalar(scaling, products)
    if sizes is not None:  # proportional attention; log(0) = -inf masks padding
        cls_logits = cls_logits + sizes.log().view(batch_size, num_tokens, 1, 1)
    elif token_mask is not None:
        key_mask = token_mask.view(batch_size, num_tokens, 1, 1)
        cls_logits = torch.where(key_mask, cls_logits, _scalar(float("-inf"), cls_logits))
    cls_attention = torch._softmax(cls_logits, 1, False).sum(dim=2, keepdim=True)  # (B, L, 1, 1)
    token_column = None if token_mask is None else token_mask[..., None]  # (B, L, 1)
    patch_mask = None if token_column is None else token_column[:, num_special:]
    scores = _significance(cls_attention, values_by_head, patch_mask, num_special)  # (B, P, 1)
    picks, rankable = TOKEN_SAMPLERS[sampler](scores, patch_mask, max_tokens - num_special)
    if capacity is not None:  # the patches alone, (B, P, 1): the static packing puts the special rows first
        kept_patches = _kept_rows(picks, rankable, num_tokens - num_special, patch_mask, 0)
        # An image that cannot be ranked packs its first real patches (its scores taken as equal, not as NaN, whose
        # order a runtime need not keep).
        ranked = torch.where(rankable, scores, _scalar(0.0, scores))
        kept_rows, padding = pack_kept_tokens_static(kept_patches, ranked, capacity, num_special)
    else:
        kept = _kept_rows(picks, rankable, num_tokens, token_column, num_special)  # (B, L, 1), special rows included
        if batch_size == 1:  # no padding can exist: the kept rows as one (M,) index (the only host read, in nonzero)
            kept_rows, padding = kept.view(-1).nonzero().view(-1), None
        else:
            kept_rows, padding = pack_kept_rows(kept.view(batch_size, num_tokens))
    if token_mask is None and padding is None and kept_rows.shape[-1] == num_tokens:
        return TokenSelection(None, None)  # every row kept, in place: nothing to gather or merge
    return TokenSelection(kept_rows, padding, keys.flatten(2) if merge else None)


def _scalar(value: float, like: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`value` as a 0-dim tensor on `like`'s device. An operation with a Python float converts it to a tensor on every
    call (four extra dispatched operations in eager mode); a `_constant` is made once."""
    return _constant(torch.full, (), value, dtype=dtype, device=like.device)


def _constant(build: Callable, *args, **kwargs):
    """`build(*args, **kwargs)`, tensors that depend on nothing but the arguments. Eager mode makes them once, outside
    any inference mode so that every mode can read them; a compiled or exported graph makes its own (constants in
    the graph)."""
    if _building_graph():
        return build(*args, **kwargs)
    return _cached_constant(build, *args, **kwargs)


def _building_graph() -> bool:
    """Whether torch.compile or torch.export is tracing this code (rather than eager mode running it)."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


@functools.lru_cache(maxsize=256)
def _cached_constant(build: Callable, *args, **kwargs):
    with torch.inference_mode(False), torch.no_grad():
        return build(*args, **kwargs)


def _as_float32(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor in float32 for scoring, without a dispatched no-op `.float()` call when it already is."""
    return tensor if tensor.dtype == torch.float32 else tensor.float()


def tome_schedule(r: int | list[int], num_layers: int, num_tokens: int, num_special: int = 1) -> list[int]:
    """Token Merging: the tokens merged in each of `num_layers` blocks: `r` in every block (each capped at half of
    the mergeable tokens present, the S special tokens never merging), or one value per block. Raises `ValueError`
    for a negative r or a list of the wrong length."""
    values = list(r) if isinstance(r, (list, tuple)) else [r] * num_layers
    if len(values) != num_layers or any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in values):
        raise ValueError(f"ToMe r={r!r}: give an int >= 0, or one int >= 0 per block ({num_layers} blocks).")
    schedule = []
    for value in values:
        merged = min(value, (num_tokens - num_special) // 2)
        schedule.append(merged)
        num_tokens -= merged
    return schedule


def bipartite_merge(
    hidden_states: torch.Tensor, sizes: torch.Tensor, keys: torch.Tensor, r: int, num_special: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token Merging's step (Bolya et al., ICLR 2023): merge `r` tokens of set A into their most similar token of set
    B, by cosine similarity of `keys`. The S special tokens (CLS first) are in neither set; of the others, A holds
    those at even positions of the whole sequence and B those at odd ones (ToMe's alternation).

    Args:
        hidden_states: (B, N, D); sizes: (B, N) float32 tokens each row stands for; keys: (B, N, Dk) the metric.
        r: tokens to remove, at most (N - S) // 2.
        num_special: S, the tokens before the patches, never merged.
    Returns:
        (B, N - r, D) hidden states and (B, N - r) sizes: the S special tokens, the unmerged A tokens (in their
        order), then the B tokens as size-weighted means of themselves and what they absorbed.
    """
    if r == 0:
        return hidden_states, sizes
    first_a = num_special % 2  # A starts at the first even position after the special tokens
    metric = torch.nn.functional.normalize(keys[:, num_special:].float(), dim=-1)
    metric_a, metric_b = metric[:, first_a::2], metric[:, 1 - first_a :: 2]
    best, partner = (metric_a @ metric_b.transpose(1, 2)).max(dim=-1)  # (B, Na): each A token's closest B token
    order = _stable_sort(best, descending=True)[1]
    merged_a, kept_a = order[:, :r], order[:, r:].sort(dim=-1).values  # kept A tokens keep their order

    width = hidden_states.shape[-1]
    mergeable_sizes = sizes[:, num_special:]
    weighted = hidden_states[:, num_special:].float() * mergeable_sizes[..., None]
    weighted_a, weighted_b = weighted[:, first_a::2], weighted[:, 1 - first_a :: 2]
    sizes_a, sizes_b = mergeable_sizes[:, first_a::2], mergeable_sizes[:, 1 - first_a :: 2]
    target = partner.gather(1, merged_a)
    sum_b = weighted_b.scatter_add(1, target[..., None].expand(-1, -1, width),
                                   weighted_a.gather(1, merged_a[..., None].expand(-1, -1, width)))
    size_b = sizes_b.scatter_add(1, target, sizes_a.gather(1, merged_a))
    size_a = sizes_a.gather(1, kept_a)
    sum_a = weighted_a.gather(1, kept_a[..., None].expand(-1, -1, width))
    merged_sizes = torch.cat([size_a, size_b], dim=1)
    merged = (torch.cat([sum_a, sum_b], dim=1) / merged_sizes[..., None]).to(hidden_states.dtype)
    return (torch.cat([hidden_states[:, :num_special], merged], dim=1),
            torch.cat([sizes[:, :num_special], merged_sizes], dim=1))


__all__ = [
    "ATS_SAMPLERS",
    "TOKEN_SAMPLERS",
    "PaddingLayout",
    "TokenSelection",
    "bipartite_merge",
    "gather_rows",
    "inverse_transform_sampling",
    "kept_patch_positions",
    "kept_rows_mask",
    "merge_dropped_tokens",
    "pack_kept_rows",
    "pack_kept_tokens_static",
    "random_sampling",
    "sample_patch_tokens",
    "scoring_query",
    "select_tokens",
    "significance_scores",
    "tome_schedule",
    "top_k_sampling",
]
