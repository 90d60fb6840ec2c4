"""The static mode (`ats_capacity` set): fixed shapes, no host reads, the adaptive selection whenever it fits."""

import pytest
import torch
from conftest import counting_host_reads, tiny_model

from ats_hf import AtsViTForImageClassification
from ats_hf.ats_sampling import pack_kept_rows, pack_kept_tokens_static

build = tiny_model


def run(model, images, **settings):
    previous = model.set_ats(**settings) if settings else None
    try:
        with torch.no_grad():
            return model(images)
    finally:
        if previous:
            model.set_ats(**previous)


def kept_sets(output):
    """Per image, per ATS layer: the set of kept patch positions."""
    return [[set(row[row >= 0].tolist()) for row in image] for image in output.sampled_token_indices]


@pytest.mark.parametrize("batch_size", [1, 5, 6])
def test_static_equals_adaptive_when_every_image_fits(images, batch_size):
    model = build()
    adaptive = run(model, images[:batch_size])
    capacity = int(adaptive.num_tokens[:, 1].max()) + 3  # more than any image keeps
    static = run(model, images[:batch_size], capacity=capacity)
    assert static.token_mask.shape[1] == capacity, "every ATS layer allocates its capacity"
    assert static.sampled_token_indices.shape == (batch_size, 3, capacity - 1)
    assert kept_sets(static) == kept_sets(adaptive)
    assert torch.equal(static.num_tokens, adaptive.num_tokens)
    torch.testing.assert_close(static.logits, adaptive.logits, atol=1e-5, rtol=1e-5)


def test_shapes_do_not_depend_on_the_data(images):
    model = build(ats_capacity=[60, 50, 40])
    first, second = run(model, images), run(model, torch.zeros_like(images))
    assert first.token_mask.shape == second.token_mask.shape == (6, 40)
    assert first.sampled_token_indices.shape == second.sampled_token_indices.shape == (6, 3, 59)
    assert not torch.equal(first.num_tokens, second.num_tokens)


def test_capacity_is_cut_to_k_and_fractions_resolve(images):
    model = build(ats_max_tokens=10, ats_capacity=0.5)
    assert model.config.resolve_ats_capacity(65) == {1: 10, 2: 10, 3: 10}
    assert run(model, images).token_mask.shape[1] == 10
    assert build(ats_capacity=[0.5, 20, 2]).config.resolve_ats_capacity(65) == {1: 33, 2: 20, 3: 2}


def test_truncation_keeps_the_highest_scoring_sampled_tokens():
    kept = torch.tensor([[True, False, True, True, True, False], [False, True, False, False, False, False]])
    scores = torch.tensor([[0.30, 0.50, 0.05, 0.20, 0.40, 0.0], [0.1, 0.2, 0.3, 0.4, 0.0, 0.0]])
    rows, padding = pack_kept_tokens_static(kept, scores, capacity=4)
    # Image 0 sampled patches 0, 2, 3, 4 (four) into three slots: drops patch 2 (lowest score), keeps order.
    assert rows.tolist() == [[0, 1, 4, 5], [0, 2, 0, 0]]
    assert padding.token_mask.tolist() == [[True, True, True, True], [True, True, False, False]]
    assert padding.real_rows is None
    # With room for everything it is the adaptive packing, padded to the capacity.
    rows, padding = pack_kept_tokens_static(kept, scores, capacity=7)
    adaptive_rows, adaptive_padding = pack_kept_rows(torch.nn.functional.pad(kept, (1, 0), value=True))
    width = adaptive_rows.shape[1]
    assert torch.equal(rows[:, :width][adaptive_padding.token_mask], adaptive_rows[adaptive_padding.token_mask])
    assert not padding.token_mask[:, width:].any()


def test_static_packing_takes_the_samplers_column_layout_and_nan_scores_as_kept():
    kept = torch.tensor([[True, False, True, True, True, False], [False, True, True, True, True, True],
                         [True, True, True, False, False, True]])
    scores = torch.tensor([[0.30, 0.50, 0.05, 0.20, 0.40, 0.0], [0.0] + [float("nan")] * 5,
                           [0.2, 0.3, 0.1, 0.9, 0.8, 0.0]])
    for capacity in (2, 3, 5, 9):
        rows, padding = pack_kept_tokens_static(kept, scores, capacity=capacity)
        column_rows, column_padding = pack_kept_tokens_static(kept[..., None], scores[..., None], capacity=capacity)
        assert torch.equal(rows, column_rows) and torch.equal(padding.token_mask, column_padding.token_mask)
        # Image 1 cannot be ranked (NaN scores): every slot it has room for holds one of its five kept patches.
        assert padding.token_mask[1].sum() == 1 + min(capacity - 1, 5)
        assert set(rows[1][padding.token_mask[1]].tolist()) <= {0, 2, 3, 4, 5, 6}
    rows, padding = pack_kept_tokens_static(kept, scores, capacity=3)
    assert rows[2].tolist() == [0, 1, 2]  # image 2's two best kept patches (1 and 0), in their order


def test_truncated_images_keep_capacity_and_stay_batch_invariant(images):
    model = build(ats_capacity=8)
    batch = run(model, images)
    assert batch.num_tokens[:, 1:].max() <= 8 and (batch.num_tokens[:, 1] == 8).any()
    for i in range(len(images)):
        alone = run(model, images[i : i + 1])
        assert kept_sets(alone)[0] == kept_sets(batch)[i]
        torch.testing.assert_close(alone.logits[0], batch.logits[i], atol=1e-5, rtol=1e-5)


def test_no_host_read_in_the_static_mode(images, monkeypatch):
    model = build(ats_capacity=20)
    run(model, images)  # settings resolved and cached
    with torch.no_grad(), counting_host_reads(monkeypatch) as reads:
        output = model(images)
    assert not output.token_mask.all(), "test needs padding"
    assert reads == []


def test_with_a_user_mask_the_static_mode_can_skip_its_one_host_read(images, monkeypatch):
    model = build(ats_capacity=20)
    mask = torch.ones(len(images), 65, dtype=torch.long)
    mask[::2, 40:] = 0  # every other image ignores its last 25 patches
    with torch.no_grad():
        checked = model(images, attention_mask=mask)
        with counting_host_reads(monkeypatch) as reads:
            unchecked = model(images, attention_mask=mask, check_attention_mask=False)
    assert reads == [], "no device-to-host read at all"
    assert torch.equal(unchecked.sampled_token_indices, checked.sampled_token_indices)
    assert torch.equal(unchecked.num_tokens, checked.num_tokens)
    assert (unchecked.logits - checked.logits).abs().max() <= 1e-5
    with counting_host_reads(monkeypatch) as reads, torch.no_grad():
        model(images, attention_mask=mask)
    assert reads, "the check reads the mask back by default"


@pytest.mark.parametrize(
    "capacity, message",
    [(1, r"ats_capacity=1 is too small"), (1.5, r"ats_capacity=1.5 is outside"), ([10, 10], r"has 2 entries"),
     ([None, 5, 5], r"ats_capacity entries must be an int \(a token count\) or a float"),
     (0.01, r"resolves to 1 token")],
)
def test_bad_capacities_name_the_value(images, capacity, message):
    model = build()
    with pytest.raises(ValueError, match=message):
        model.set_ats(capacity=capacity)
        run(model, images)


def test_capacity_survives_a_save_and_load(images, tmp_path):
    model = build(ats_capacity=[40, 30, 20])
    model.save_pretrained(tmp_path)
    loaded = AtsViTForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.ats_settings.capacity == (40, 30, 20)
    assert torch.equal(run(loaded, images).logits, run(model, images).logits)


def test_static_gmacs_count_capacity_rows_and_match_the_flop_counter(images):
    from torch.utils.flop_counter import FlopCounterMode

    from ats_hf.flops import dense_gmacs, gmacs_per_image, static_gmacs

    model = build(ats_capacity=[40, 30, 20])
    model.set_attn_implementation("eager")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        output = model(images)
    measured = counter.get_total_flops() / 2 / len(images) / 1e9  # FLOPs -> MACs per image
    executed = static_gmacs(model.config)
    assert executed < dense_gmacs(model.config)
    assert abs(executed - measured) / measured < 0.01
    # The papers' per-image figure counts real kept tokens only: never more than what runs.
    assert (gmacs_per_image(model.config, output.num_tokens) <= executed + 1e-12).all()
    with pytest.raises(ValueError, match="needs static-mode settings"):
        static_gmacs(build().config)
