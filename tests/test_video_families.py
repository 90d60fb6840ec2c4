"""What both video families (ViViT, with CLS; VideoMAE, without any special token) are checked for beyond the
family contract (tests/test_family_contract.py), on transformers' own tiny checkpoints of each (`family_cases.py`):
the default settings drop tubelets and each video keeps its own; GMACs per video with the head against
FlopCounterMode; the static mode in one dynamo graph and in ONNX Runtime; the dense grid's rows. What only one family
has is in tests/test_family_vivit.py and tests/test_family_videomae.py."""

import pytest
import torch
from family_cases import CASES, load_ats
from torch.utils.flop_counter import FlopCounterMode

from ats_hf.flops import dense_gmacs, gmacs_per_image, mac_breakdown

VIDEO_CASES = [case for case in CASES if case.videos]


@pytest.fixture(scope="module", params=VIDEO_CASES, ids=[case.name for case in VIDEO_CASES])
def case(request, tmp_path_factory):
    """(case, folder of its upstream checkpoint)."""
    return request.param, request.param.save(tmp_path_factory.mktemp(request.param.name) / "upstream")


def test_the_default_settings_drop_tubelets_and_each_video_keeps_its_own(case):
    family_case, folder = case
    model = load_ats(folder)
    assert model.config.ats_layers == [1, 2, 3] and model.config.ats_max_tokens is None
    videos = family_case.inputs(6, seed=5)
    with torch.no_grad():
        together = model(videos)
        alone = [model(video[None]) for video in videos]
    num_tokens = family_case.num_tokens
    assert together.num_tokens[:, 0].eq(num_tokens).all() and (together.num_tokens[:, -1] < num_tokens).all()
    assert len(set(together.num_tokens[:, -1].tolist())) > 1
    kept = together.sampled_token_indices
    assert kept.shape[:2] == (len(videos), 3) and kept.max() < num_tokens - family_case.num_special
    for index, single in enumerate(alone):
        assert (together.logits[index] - single.logits[0]).abs().max() <= 1e-5
        assert torch.equal(together.num_tokens[index], single.num_tokens[0])
        rows = [row[row >= 0].tolist() for row in together.sampled_token_indices[index]]
        assert rows == [row[row >= 0].tolist() for row in single.sampled_token_indices[0]]


@pytest.mark.parametrize("settings", [dict(layers=[]), dict(), dict(max_tokens=0.5, sampler="top_k")],
                         ids=["dense", "default", "K-half"])
def test_gmacs_per_video_with_the_head_equal_what_flop_counter_mode_counts(case, settings):
    family_case, folder = case
    model = load_ats(folder, **settings)
    model.set_attn_implementation("eager")  # FlopCounterMode does not see inside CPU sdpa kernels
    for seed in (3, 4):
        video = family_case.inputs(1, seed=seed)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            output = model(video)
        measured = counter.get_total_flops() / 2 / 1e9  # the Conv3d tubelet embedding, every matmul, the head
        breakdown = mac_breakdown(model.config, output.num_tokens)
        # The counter sees matrix products only, not the scoring row (CLS's or the mean query's; N_in x D per ATS
        # layer).
        assert (breakdown.total - breakdown.ats_scoring).item() / 1e9 == pytest.approx(measured, rel=1e-6)
        ours = gmacs_per_image(model.config, output.num_tokens).item()
        if settings.get("layers") == []:
            assert ours == pytest.approx(dense_gmacs(model.config), rel=1e-12)
        else:
            assert ours < dense_gmacs(model.config)


def test_the_static_mode_compiles_in_one_graph_and_exports_to_onnx(case, tmp_path):
    """Padding rows point at row 0 (CLS, or a real tubelet when there is no special token) and are masked: the
    compiled model and the exported graph keep the same tubelets and give the same logits as eager PyTorch."""
    pytest.importorskip("onnxruntime")
    from ats_hf.export import export_folder

    family_case, folder = case
    model = load_ats(folder, max_tokens=0.5, capacity=24)
    videos = family_case.inputs(4, seed=11)
    with torch.no_grad():
        eager = model(videos)
    assert eager.token_mask.shape[1] == 24 and not eager.token_mask.all(), "needs padded rows"
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # dynamo captures it whole or fails
    with torch.no_grad():
        again = compiled(pixel_values=videos)
    torch.testing.assert_close(again.logits, eager.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(again.sampled_token_indices, eager.sampled_token_indices)
    report = export_folder(model, tmp_path / "onnx", videos)
    assert report["passed"] and report["identical_kept_tokens"], report


def test_the_dense_grid_holds_each_tubelet_at_its_position(case):
    family_case, folder = case
    model = load_ats(folder)
    special = family_case.num_special
    videos = family_case.inputs(4, seed=11)
    with torch.no_grad():
        packed = model.base_model(videos)
        model.config.ats_dense_output = True
        grid = model.base_model(videos)
    assert grid.last_hidden_state.shape == (len(videos), family_case.num_tokens, model.config.hidden_size)
    for index in range(len(videos)):
        kept = packed.sampled_token_indices[index, -1]
        kept = kept[kept >= 0]
        rows = packed.last_hidden_state[index, special : special + len(kept)]
        torch.testing.assert_close(grid.last_hidden_state[index, special + kept], rows, atol=1e-6, rtol=0)
        torch.testing.assert_close(grid.last_hidden_state[index, :special], packed.last_hidden_state[index, :special])
