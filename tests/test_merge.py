"""`ats_merge`: dropped tokens merged into the most similar kept token, with proportional attention afterwards."""

import pytest
import torch
from conftest import tiny_model

from ats_hf.ats_sampling import PaddingLayout, merge_dropped_tokens
from ats_hf.modeling_ats_core import TokenState, _self_attention_mask


def test_merging_nothing_changes_nothing():
    rows, keys = torch.randn(2, 5, 8), torch.randn(2, 5, 4)
    kept_rows = torch.arange(5).expand(2, -1)
    merged, sizes = merge_dropped_tokens(rows, None, keys, kept_rows, None, None)
    assert torch.equal(merged, rows) and torch.equal(sizes, torch.ones(2, 5))


@pytest.mark.parametrize("capacity", [None, 0.5], ids=["adaptive", "static"])
def test_a_mask_that_keeps_only_cls_merges_nothing(images, capacity):
    """An input whose mask keeps only CLS has no patch to keep or merge into: alone (only CLS rows kept in the
    batch) and beside an input with patches, it runs as without merging."""
    mask = torch.zeros(2, 65, dtype=torch.long)
    mask[:, 0] = 1
    mask[1, :40] = 1
    merging, dropping = tiny_model(ats_merge=0.5, ats_capacity=capacity), tiny_model(ats_capacity=capacity)
    with torch.no_grad():
        alone = merging(images[:1], attention_mask=mask[:1])
        beside = merging(images[:2], attention_mask=mask)
        without = dropping(images[:1], attention_mask=mask[:1])
    assert alone.num_tokens.eq(1).all() and beside.num_tokens[0].eq(1).all()
    torch.testing.assert_close(alone.logits, without.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(beside.logits[:1], alone.logits, rtol=0, atol=1e-5)


def test_each_dropped_row_joins_its_most_similar_kept_patch_weighted_by_size():
    rows = torch.tensor([[[10.0], [1.0], [2.0], [3.0], [4.0], [99.0]]])  # CLS, four patches, a padding row
    keys = torch.tensor([[[1.0, 0], [1.0, 0.1], [0, 1.0], [0.9, 0.2], [0.1, 1.0], [1.0, 0]]])
    sizes = torch.tensor([[1.0, 1.0, 1.0, 2.0, 1.0, 0.0]])
    token_mask = torch.tensor([[True, True, True, True, True, False]])
    kept_rows = torch.tensor([[0, 1, 2, 0]])  # CLS, patches 1 and 2, then a padding slot
    padding = PaddingLayout(torch.tensor([[True, True, True, False]]))
    merged, new_sizes = merge_dropped_tokens(rows, sizes, keys, kept_rows, padding, token_mask)
    # Row 3 (size 2) is nearest row 1; row 4 is nearest row 2; CLS (key like row 1's) receives nothing.
    assert new_sizes.tolist() == [[1.0, 3.0, 2.0, 0.0]]
    torch.testing.assert_close(merged[0, :, 0], torch.tensor([10.0, (1.0 + 2 * 3.0) / 3, (2.0 + 4.0) / 2, 0.0]))
    assert new_sizes.sum() == sizes.sum(), "sizes are conserved; padding carries nothing"
    # Row 3's similarity to row 1 is 0.993, row 4's to row 2 is 0.995: at 0.994 only row 4 merges, row 3 leaves.
    merged, new_sizes = merge_dropped_tokens(rows, sizes, keys, kept_rows, padding, token_mask, min_similarity=0.994)
    assert new_sizes.tolist() == [[1.0, 1.0, 2.0, 0.0]]
    torch.testing.assert_close(merged[0, :3, 0], torch.tensor([10.0, 1.0, 3.0]))
    # Unpadded, two images: the same rule per image, and the same result for the first as alone.
    both, both_sizes = merge_dropped_tokens(rows[:, :5].expand(2, -1, -1), sizes[:, :5].expand(2, -1),
                                            keys[:, :5].expand(2, -1, -1), kept_rows[:, :3].expand(2, -1), None, None)
    assert both_sizes.tolist() == [[1.0, 3.0, 2.0]] * 2
    torch.testing.assert_close(both[:, :, 0], merged.new_tensor([[10.0, 7.0 / 3, 3.0]] * 2))


def test_without_a_kept_patch_row_nothing_merges():
    """Special rows never receive: with only they kept, every dropped row leaves, as one too far from every kept row."""
    rows, sizes = torch.randn(2, 4, 8), torch.tensor([[1.0, 2.0, 1.0, 1.0], [3.0, 1.0, 1.0, 0.0]])
    merged, new_sizes = merge_dropped_tokens(rows, sizes, torch.randn(2, 4, 4), torch.tensor([[0], [0]]), None, None)
    assert torch.equal(merged, rows[:, :1]) and new_sizes.tolist() == [[1.0], [3.0]]


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_proportional_attention_weighs_a_merged_row_like_its_copies(attn_implementation):
    """A row of size 2 attends and is attended to exactly like two identical rows of size 1."""
    model = tiny_model(attn_implementation, ats_layers=[])
    layer, config = model.vit.layers[0], model.config
    rows = torch.randn(1, 4, 32)
    duplicated = rows[:, [0, 1, 1, 2, 3]]
    sizes = torch.tensor([[1.0, 2.0, 1.0, 1.0]])
    positions = torch.arange(4)[None]
    weighted = TokenState(positions, None, _self_attention_mask(config, rows, None, sizes), sizes)
    with torch.no_grad():
        merged_out, _ = layer(rows, weighted)
        copies_out, _ = layer(duplicated, TokenState.initial(config, duplicated, None))
    torch.testing.assert_close(merged_out, copies_out[:, [0, 1, 3, 4]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("settings", [dict(), dict(ats_sampler="top_k", ats_max_tokens=0.4)], ids=["ats", "top-k"])
def test_merging_is_batch_invariant_and_eager_equals_sdpa(images, settings):
    sdpa, eager = tiny_model(ats_merge=-1.0, **settings), tiny_model("eager", ats_merge=-1.0, **settings)
    with torch.no_grad():
        batch, batch_eager = sdpa(images), eager(images)
        dropping = tiny_model(**settings)(images)
    assert torch.equal(batch.sampled_token_indices, batch_eager.sampled_token_indices)
    torch.testing.assert_close(batch.logits, batch_eager.logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch.logits, dropping.logits, atol=1e-3), "merging must change the result"
    for i in range(len(images)):
        with torch.no_grad():
            alone = sdpa(images[i : i + 1])
        width = alone.sampled_token_indices.shape[2]
        assert torch.equal(alone.sampled_token_indices[0], batch.sampled_token_indices[i, :, :width])
        torch.testing.assert_close(alone.logits[0], batch.logits[i], atol=1e-5, rtol=1e-5)


def test_static_merging_equals_adaptive_merging_when_every_image_fits(images):
    model = tiny_model(ats_merge=-1.0)
    with torch.no_grad():
        adaptive = model(images)
        model.set_ats(capacity=int(adaptive.num_tokens[:, 1].max()) + 2)
        static = model(images)
    assert not static.token_mask.all()
    torch.testing.assert_close(static.logits, adaptive.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(static.num_tokens, adaptive.num_tokens)


def test_merging_trains(images):
    model = tiny_model(ats_merge=-1.0, ats_capacity=24).train()
    model(images, labels=torch.arange(6) % 5).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


def test_merging_needs_eager_or_sdpa(images):
    model = tiny_model(ats_merge=-1.0)
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="ats_merge needs attn_implementation 'eager' or 'sdpa'"):
        model(images)
