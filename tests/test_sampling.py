"""The samplers on hand-built score vectors, with eager ops and with the export-friendly ops torch.export traces."""

import pytest
import torch
from official_reference import official_picks

from ats_hf import ats_sampling, inverse_transform_sampling, pack_kept_rows, random_sampling, top_k_sampling
from ats_hf.ats_sampling import _nearest, _stable_sort


def onnx_top_k_sort(values: torch.Tensor, descending: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """What ONNX's TopK over a whole row computes (ties by the lower index; checked in ONNX Runtime in
    test_export.py), which PyTorch's topk does not promise."""
    return torch.sort(values, dim=1, stable=True, descending=descending)


@pytest.fixture(autouse=True, params=["eager-ops", "export-ops"])
def sampler_ops(request, monkeypatch):
    """Every test runs twice: with torch.sort, and with the sort used under torch.export (ONNX has no stable sort: it
    is ONNX's TopK); both must select exactly the same tokens."""
    if request.param == "export-ops":
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
        monkeypatch.setattr(ats_sampling, "_exported_sort", onnx_top_k_sort)
    return request.param


def kept_positions(scores, max_tokens, patch_mask=None):
    scores = torch.tensor([scores], dtype=torch.float32)
    mask = None if patch_mask is None else torch.tensor([patch_mask])
    kept = inverse_transform_sampling(scores / scores.sum(), mask, max_tokens)
    return kept[0].nonzero().flatten().tolist()


def test_nearest_matching_not_first_above():
    # Sorted scores 0.1, 0.2, 0.3, 0.4 -> cdf 0.1, 0.3, 0.6, 1.0 -> normalised 0, 2/9, 5/9, 1.
    # K=3: two points, 2/9 and 1 -> tokens with scores 0.2 and 0.4. "First c >= y" would agree here, so use K=4:
    # points 2/9, 11/18, 1: 11/18 = 0.611 is nearest 5/9 (0.556), not the first value above it (1.0).
    assert kept_positions([0.4, 0.1, 0.3, 0.2], 4) == [0, 2, 3]


def test_matches_brute_force_on_random_scores():
    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(3, 40, (1,), generator=generator))
        k = int(torch.randint(2, 60, (1,), generator=generator))
        scores = (torch.rand(n, generator=generator) ** 4).tolist()
        assert kept_positions(scores, k) == official_picks(torch.tensor(scores), k), (trial, n, k)


def test_tie_goes_to_lower_sorted_position():
    # Scores 1,1,1,1,1 -> normalised CDF 0, .25, .5, .75, 1 (exact in binary). K=4 gives the points .25, .625, 1;
    # .625 is exactly halfway between .5 and .75 and must take .5 (the lower sorted position, token 2).
    kept = inverse_transform_sampling(torch.ones(1, 5), None, 4)
    assert kept[0].nonzero().flatten().tolist() == [1, 2, 4]


def test_first_point_is_smallest_nonzero_cdf():
    # The grid starts at the second-lowest token's CDF value, so that token is always kept (official ys_start).
    assert kept_positions([0.25] * 4, 3) == [1, 3]


def test_duplicates_are_removed_and_lowest_never_kept():
    # One dominant token: most points land on it and are de-duplicated, whatever K is.
    scores = [0.001, 0.001, 0.001, 10.0, 0.001]
    assert kept_positions(scores, 2) == [3]
    for k in (5, 50, 197):
        kept = kept_positions(scores, k)
        assert kept == official_picks(torch.tensor(scores), k)
        assert 3 in kept and 0 not in kept and len(kept) <= 3
    # Uniform scores and many points: every token but the lowest-sorted one is kept.
    assert kept_positions([1.0] * 6, 197) == [1, 2, 3, 4, 5]


def test_max_tokens_is_honoured():
    generator = torch.Generator().manual_seed(3)
    scores = torch.rand(16, 50, generator=generator)
    for k in (2, 3, 10, 30, 51, 197):
        kept = inverse_transform_sampling(scores / scores.sum(1, keepdim=True), None, k)
        assert int(kept.sum(1).max()) <= k - 1
        assert int(kept.sum(1).min()) >= 1


def test_one_or_two_tokens_left():
    assert kept_positions([0.7], 197) == [0]
    assert kept_positions([0.3, 0.7], 197) == [1]
    assert kept_positions([0.7, 0.3], 2) == [0]
    # Padding never counts: two real tokens among padding, or one (a flat CDF: kept).
    assert kept_positions([0.3, 0.0, 0.7, 0.0], 197, [True, False, True, False]) == [2]
    assert kept_positions([0.0, 0.0, 0.7, 0.0], 2, [False, False, True, True]) == [2]


def test_all_equal_and_unrankable_scores():
    assert kept_positions([0.25] * 4, 197) == [1, 2, 3]
    # All-zero or NaN scores cannot be ranked: every real patch is kept (a flat CDF), never NaN in the selection.
    for value in (0.0, float("nan")):
        scores = torch.full((3, 5), value)
        scores[1] = torch.tensor([0.1, 0.3, 0.2, 0.15, 0.25])
        mask = torch.tensor([[True] * 5, [True] * 5, [True, False, True, False, True]])
        for sampler in (inverse_transform_sampling, top_k_sampling, random_sampling):
            kept = sampler(scores, mask, 3)
            assert kept[0].all() and kept[2].tolist() == mask[2].tolist(), sampler
            assert kept[1].sum() == 2


def test_padding_is_invisible():
    generator = torch.Generator().manual_seed(5)
    scores = torch.rand(1, 12, generator=generator)
    alone = inverse_transform_sampling(scores / scores.sum(), None, 9)
    padded_scores = torch.cat([scores, torch.zeros(1, 7)], dim=1)
    mask = torch.arange(19)[None] < 12
    padded = inverse_transform_sampling(padded_scores / scores.sum(), mask, 9)
    assert torch.equal(padded[:, :12], alone) and not padded[:, 12:].any()
    # Whatever a caller leaves in the padding's scores is taken as 0.
    garbage = torch.where(mask, padded_scores / scores.sum(), torch.tensor(5.0))
    assert torch.equal(inverse_transform_sampling(garbage, mask, 9), padded)


def test_top_k_and_random_counts():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.15, 0.05]])
    assert top_k_sampling(scores, None, 3)[0].nonzero().flatten().tolist() == [1, 2]
    mask = torch.tensor([[True, False, True, True, True]])
    assert top_k_sampling(scores, mask, 3)[0].nonzero().flatten().tolist() == [2, 3]
    kept = random_sampling(scores.expand(100, -1), mask.expand(100, -1), 3)
    assert (kept.sum(1) == 2).all() and not kept[:, 1].any()
    assert top_k_sampling(scores, mask, 100).sum() == 4


@pytest.mark.parametrize("sampler", [inverse_transform_sampling, top_k_sampling, random_sampling])
def test_samplers_keep_only_real_tokens(sampler):
    generator = torch.Generator().manual_seed(7)
    scores = torch.rand(8, 30, generator=generator)
    mask = torch.rand(8, 30, generator=generator) > 0.4
    scores = scores * mask
    kept = sampler(scores / scores.sum(1, keepdim=True), mask, 12)
    assert not (kept & ~mask).any()


def test_pack_kept_rows():
    kept = torch.tensor([[True, False, True, False, True], [True, True, True, True, False]])
    rows, padding = pack_kept_rows(kept)
    assert rows[0, :3].tolist() == [0, 2, 4] and rows[1].tolist() == [0, 1, 2, 3]
    assert padding.token_mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert padding.real_rows.tolist() == [0, 1, 2, 4, 5, 6, 7]
    assert padding.packed_index.tolist() == [0, 1, 2, 7, 3, 4, 5, 6]
    unpacked = padding.unpack(torch.arange(1.0, 8.0)[:, None])
    assert unpacked.flatten().tolist() == [1, 2, 3, 0, 4, 5, 6, 7]
    rows, padding = pack_kept_rows(torch.tensor([[True, True, False], [True, False, True]]))
    assert padding is None and rows.tolist() == [[0, 1], [0, 2]]
    rows, padding = pack_kept_rows(torch.tensor([[True, False, False, True, True]]))  # one image: no padding
    assert padding is None and rows.tolist() == [[0, 3, 4]]


@pytest.mark.parametrize("sampler", ["inverse_transform", "top_k", "random"])
def test_samplers_take_and_give_a_column_per_image(sampler):
    """`TOKEN_SAMPLERS` work in an ATS layer's layout, (B, P, 1) in and (B, R, 1) picks out; `kept_rows_mask` on the
    same picks as rows gives what `sample_patch_tokens` keeps."""
    generator = torch.Generator().manual_seed(5)
    scores = torch.rand(3, 17, generator=generator) ** 3
    mask = torch.ones(3, 17, dtype=torch.bool)
    mask[1, 12:] = False
    scores = scores * mask / (scores * mask).sum(dim=1, keepdim=True)
    torch.manual_seed(0)
    picks, rankable = ats_sampling.TOKEN_SAMPLERS[sampler](scores[..., None], mask[..., None], 6)
    assert picks.shape[0] == 3 and picks.shape[1] <= 6 and picks.shape[2] == 1 and rankable.shape == (3, 1, 1)
    kept = ats_sampling.kept_rows_mask(picks[..., 0], rankable[..., 0], 17, mask)
    torch.manual_seed(0)
    assert torch.equal(kept, ats_sampling.sample_patch_tokens(sampler, scores, mask, 7))
    assert not (kept & ~mask).any() and kept.sum(dim=1).min() >= 1


def test_a_single_input_gets_its_rows_of_a_batch_as_one_index():
    """`select_tokens` on one input packs its kept rows as an (M,) index: the same rows that input gets in a batch;
    `gather_rows` takes both forms."""
    generator = torch.Generator().manual_seed(2)
    queries, keys, values = torch.randn(3, 4, 21, 16, generator=generator)
    values = values * torch.exp(3 * torch.randn(4, 21, 1, generator=generator))  # skewed scores: duplicate picks
    options = {"sampler": "inverse_transform", "max_tokens": 12, "num_special": 2}
    batch = ats_sampling.select_tokens(queries[:, :1], keys, values, 4, 0.5, **options)
    counts = batch.padding.token_mask.sum(dim=1) if batch.padding is not None else [batch.kept_rows.shape[1]] * 4
    assert len(set(int(count) for count in counts)) > 1, "expected images that keep different numbers of rows"
    for image in range(4):
        alone = ats_sampling.select_tokens(queries[image:image + 1, :1], keys[image:image + 1],
                                           values[image:image + 1], 4, 0.5, **options)
        assert alone.padding is None and alone.kept_rows.dim() == 1
        assert alone.kept_rows.tolist() == batch.kept_rows[image, : int(counts[image])].tolist()
        rows = values[image:image + 1]
        assert torch.equal(ats_sampling.gather_rows(rows, alone.kept_rows),
                           ats_sampling.gather_rows(rows, alone.kept_rows.view(1, -1)))


@pytest.mark.parametrize("split", [False, True], ids=["heads-concatenated", "heads-split"])
def test_a_padded_rows_value_never_enters_the_scores(split):
    """A padded row scores 0 whatever its value, even NaN (0 attention times a NaN norm would make the whole image
    unrankable, keeping it whole); `select_tokens` takes keys and values with their heads concatenated or split."""
    generator = torch.Generator().manual_seed(0)
    queries, keys, values = torch.randn(3, 2, 9, 8, generator=generator)
    token_mask = torch.tensor([[True, True, False, True, True, True, False, True, True]] * 2)
    options = {"sampler": "inverse_transform", "max_tokens": 4, "num_special": 2, "token_mask": token_mask}

    def kept_rows(values):
        query = ats_sampling.scoring_query(queries * 30, 4, 2, token_mask)
        if split:
            return ats_sampling.select_tokens(query, keys.view(2, 9, 4, 2), values.view(2, 9, 4, 2), 4, 1.0,
                                              **options).kept_rows
        return ats_sampling.select_tokens(query.view(2, 1, 8), keys, values, 4, 1.0, **options).kept_rows

    clean = kept_rows(values)
    assert clean.shape[1] < 5, "expected a sampled subset of the five real patches"
    values[:, 2] = float("nan")
    values[1, 6] = float("inf")
    assert torch.equal(kept_rows(values), clean)


def test_stable_sort_in_index_order_for_ties():
    generator = torch.Generator().manual_seed(3)
    values = torch.randint(0, 6, (4, 30), generator=generator).float() / 5  # many ties
    values[1, 25:] = float("inf")
    values[2, 0] = float("-inf")  # ToMe's protected CLS
    # Ties in index order, ascending and descending: Python's sort is stable.
    for descending in (False, True):
        order = [sorted(range(30), key=lambda i, row=row: -row[i] if descending else row[i])
                 for row in values.tolist()]
        assert _stable_sort(values, descending)[1].tolist() == order


def peaked_scores(generator, rows: int, patches: int, spread: float):
    """(rows, patches) scores over many orders of magnitude (peaked attention), a third exactly 0, summing to 1."""
    scores = torch.exp(torch.randn(rows, patches, generator=generator) * spread)
    scores = scores.masked_fill(torch.rand(rows, patches, generator=generator) < 1 / 3, 0.0)
    return scores / scores.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("max_tokens", [2, 17, 100, 201])
def test_binary_search_keeps_the_matrix_tokens_on_peaked_scores(monkeypatch, max_tokens):
    """When tiny values next to a point round to the same float32 distance, the matrix's argmin takes the first of
    them; the binary search must too, or an image's tokens would depend on its batch (the path follows the batch
    size). Both paths on the same images, with padding, and one image alone against the same image in a batch."""
    generator = torch.Generator().manual_seed(max_tokens)
    scores = torch.cat([peaked_scores(generator, 40, 200, spread) for spread in (1.0, 8.0, 30.0)])
    mask = torch.arange(200) < torch.randint(150, 201, (120, 1), generator=generator)
    single = torch.zeros(1, 200)
    single[0, 10], single[0, 20], single[0, 30] = 1e-12, 3e-12, 1.0
    single = single / single.sum()
    monkeypatch.setattr(ats_sampling, "NEAREST_BY_DISTANCES_LIMIT", 1 << 62)
    by_matrix = [inverse_transform_sampling(scores, patch_mask, max_tokens) for patch_mask in (None, mask)]
    alone = inverse_transform_sampling(single, None, max_tokens)
    monkeypatch.setattr(ats_sampling, "NEAREST_BY_DISTANCES_LIMIT", 0)
    by_search = [inverse_transform_sampling(scores, patch_mask, max_tokens) for patch_mask in (None, mask)]
    assert torch.equal(by_search[0], by_matrix[0]) and torch.equal(by_search[1], by_matrix[1])
    assert torch.equal(inverse_transform_sampling(single.expand(2, -1), None, max_tokens)[1], alone[0])
    if max_tokens == 100:
        assert alone[0].nonzero().flatten().tolist() == [10, 30]  # the official first-nearest choice


def test_binary_search_finds_the_distance_matrix_choice(monkeypatch):
    """Above `NEAREST_BY_DISTANCES_LIMIT` the nearest value comes from a binary search: the same positions as the
    distance matrix's first minimum of |point - value| (the zeros, the lowest patches, never taken), on ties
    (points exactly halfway, on values, above 1 by rounding, equal leading zeros and the trailing 1 of padding),
    for points from the smallest non-zero value on."""
    generator = torch.Generator().manual_seed(11)
    rows = []
    for _ in range(60):
        count = int(torch.randint(2, 30, (1,), generator=generator))
        # Sorted scores: leading zeros, then equal steps (exact halves); the last one positive.
        steps = torch.randint(0, 4, (count,), generator=generator).float().sort().values
        steps[-1] = steps[-1] + 1
        cdf = torch.cumsum(steps, 0)
        cdf = (cdf - cdf[0]) / (cdf[-1] - cdf[0])
        rows.append(torch.cat([cdf, torch.ones(30 - count)]))  # padding repeats the last real 1
    values = torch.stack(rows)[:, None, :]
    points = torch.cat([values[:, 0, :12] + values[:, 0, 1:13], torch.rand(60, 12, generator=generator)], dim=1) / 2
    points = torch.cat([points, torch.full((60, 1), 1.0 + 2**-23)], dim=1)[..., None]
    # A smallest non-zero value below half an ulp of the points: 0 is as near as it, and is still never taken.
    values[0, 0, :4] = torch.tensor([0.0, 1e-10, 0.5, 1.0])
    values[0, 0, 4:] = 1.0
    # The sampler's points start at the smallest non-zero value.
    nonzero = torch.where(values > 0, values, 2.0)
    points = torch.maximum(points, nonzero.amin(dim=2, keepdim=True))
    points[0, :3, 0] = torch.tensor([1e-10, 0.2, 0.75])
    expected = (points - nonzero).abs().argmin(dim=2)  # the official argmin, zeros left out
    assert expected[0, :3].tolist() == [1, 1, 2]
    expected = expected[..., None]  # (B, R, 1): the column `order` is gathered by
    assert torch.equal(_nearest(nonzero, points), expected)
    monkeypatch.setattr(ats_sampling, "NEAREST_BY_DISTANCES_LIMIT", 0)
    assert torch.equal(_nearest(nonzero, points), expected)
