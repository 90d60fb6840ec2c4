"""Token Merging (the ToMe baseline): r = 0 is the model, merging bookkeeping, GMACs."""

import pytest
import torch
from conftest import tiny_config, tiny_model, tiny_plain_vit
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ats_hf.ats_sampling import bipartite_merge, tome_schedule
from ats_hf.flops import dense_gmacs, tome_gmacs
from ats_hf.tome import tome_forward


def test_r_zero_is_the_model_whatever_its_ats_settings(images):
    model = tiny_model(peaky=False)  # ATS in layers 1..3: ToMe ignores them and runs every token
    with torch.no_grad():
        logits, counts = tome_forward(model, images, 0)
        model.set_ats(layers=[])
        expected = model(images).logits
    assert counts == [65] * 4
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_runs_on_a_plain_transformers_vit(images):
    plain = tiny_plain_vit()
    with torch.no_grad():
        logits, _ = tome_forward(plain, images, 0)
        torch.testing.assert_close(logits, plain(images).logits, atol=1e-5, rtol=1e-5)
        merged_logits, counts = tome_forward(plain, images, 8)
    assert counts == [57, 49, 41, 33] and merged_logits.shape == (6, 5)


def test_schedule_caps_each_block_at_half_the_patches():
    assert tome_schedule(40, 4, 65) == [32, 16, 8, 4]
    assert tome_schedule([0, 5, 5, 0], 4, 65) == [0, 5, 5, 0]
    for bad in (-1, [1, 2], 1.5):
        with pytest.raises(ValueError, match="ToMe r="):
            tome_schedule(bad, 4, 65)


def test_bipartite_merge_protects_cls_and_conserves_size():
    # Tokens 0 (CLS), 1..5; A = 0, 2, 4 and B = 1, 3, 5. Token 2 is a copy of token 3, token 4 is unlike anything.
    keys = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.6, 0.8, 0]]])
    hidden = torch.arange(6.0).view(1, 6, 1)
    sizes = torch.tensor([[1.0, 1.0, 2.0, 1.0, 1.0, 1.0]])
    merged, new_sizes = bipartite_merge(hidden, sizes, keys, r=1)
    # A keeps CLS and token 4 in order; token 2 (size 2) joined token 3: (2 * 2 + 3) / 3.
    assert new_sizes.tolist() == [[1.0, 1.0, 1.0, 3.0, 1.0]]
    torch.testing.assert_close(merged[0, :, 0], torch.tensor([0.0, 4.0, 1.0, 7.0 / 3.0, 5.0]))
    assert new_sizes.sum() == sizes.sum()


def test_merging_is_per_image(images):
    model = tiny_model()
    with torch.no_grad():
        batch, _ = tome_forward(model, images, 6)
        for i in range(len(images)):
            alone, _ = tome_forward(model, images[i : i + 1], 6)
            torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=1e-5)


def test_gmacs_count_what_runs():
    config = tiny_config(ats_layers=[])
    assert tome_gmacs(config, 0) == pytest.approx(dense_gmacs(config), rel=1e-12)
    model = tiny_model("eager", ats_layers=[])
    image = torch.randn(1, 3, 32, 32)
    # The math backend of sdpa is plain matmuls, which FlopCounterMode sees (it does not see the CPU flash kernel).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        tome_forward(model, image, 8)
    measured = counter.get_total_flops() / 2 / 1e9
    assert tome_gmacs(config, 8) < dense_gmacs(config)
    assert tome_gmacs(config, 8) == pytest.approx(measured, rel=0.01)


def tiny_dinov2():
    from ats_hf import AtsDinov2Config, AtsDinov2ForImageClassification

    config = AtsDinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
                             num_labels=3, ats_layers=[1])
    return AtsDinov2ForImageClassification(config).eval()


def test_other_families_are_refused_by_name_and_left_out_of_the_benchmark(images):
    from ats_hf.benchmark.engine import run_benchmark

    model = tiny_dinov2()
    with pytest.raises(ValueError, match=r"ToMe runs on ViT classifiers here .* not AtsDinov2ForImageClassification"):
        tome_forward(model, images, 2)
    result = run_benchmark(model, images, torch.zeros(len(images), dtype=torch.long), batch_sizes=())
    assert not any(r.method.kind == "tome" for r in result.methods)
    assert any("ToMe baseline left out" in note for note in result.notes)


def test_tome_classifier_compiles_in_one_graph_with_the_same_logits(images):
    from ats_hf.tome import TomeClassifier

    torch._dynamo.reset()
    module = TomeClassifier(tiny_model(), 6).eval()
    compiled = torch.compile(module, fullgraph=True, dynamic=False, backend="eager")  # fails on any graph break
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), tome_forward(module.model, images, 6)[0], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="ToMe runs on ViT classifiers here"):
        TomeClassifier(torch.nn.Linear(2, 2), 1)
