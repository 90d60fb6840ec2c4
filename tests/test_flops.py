"""GMACs accounting (ats_hf.flops) against torch's FlopCounterMode (2 FLOPs per multiply-add) at batch 1."""

import pytest
import torch
from conftest import peaky_weights_, tiny_config
from torch.utils.flop_counter import FlopCounterMode

from ats_hf import AtsViTConfig, AtsViTForImageClassification
from ats_hf.flops import dense_gmacs, gmacs_per_image, mac_breakdown

DEIT_S = dict(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
              intermediate_size=1536, num_labels=1000)


def eager_model(config: AtsViTConfig, peaky: bool = True) -> AtsViTForImageClassification:
    # FlopCounterMode does not see inside CPU sdpa kernels; eager attention is plain matmuls.
    model = AtsViTForImageClassification(config).eval()
    model.set_attn_implementation("eager")
    return peaky_weights_(model) if peaky else model


def counted(model, pixel_values, **kwargs):
    """(output, FlopCounterMode) of one forward pass."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        output = model(pixel_values, **kwargs)
    return output, counter


def module_macs(counter: FlopCounterMode, suffix: str) -> float:
    """MACs FlopCounterMode attributes to modules whose name ends with `suffix` (outermost match only)."""
    counts = counter.get_flop_counts()
    names = [name for name in counts if name.endswith(suffix)]
    return sum(sum(counts[name].values()) for name in names) / 2


def assert_within_one_percent(ours: float, measured: float):
    assert abs(ours - measured) <= 0.01 * measured, f"ours {ours:.6g} vs FlopCounterMode {measured:.6g}"


def test_tiny_dense_matches_flop_counter():
    model = eager_model(tiny_config(ats_layers=[]), peaky=False)
    output, counter = counted(model, torch.randn(1, 3, 32, 32))
    breakdown = mac_breakdown(model.config, output.num_tokens)
    assert_within_one_percent(breakdown.total.item(), counter.get_total_flops() / 2)
    assert breakdown.ats_scoring.item() == 0
    assert dense_gmacs(model.config) == pytest.approx(breakdown.gmacs.item(), rel=1e-12)


@pytest.mark.parametrize(
    "ats_settings",
    [
        dict(),  # the paper's K = all tokens, ATS in layers 1..3
        dict(ats_max_tokens=0.5),
        dict(ats_max_tokens=[40, 0.3, 12]),
        dict(ats_layers=[0, 2], ats_max_tokens=20),
        dict(ats_max_tokens=25, ats_sampler="top_k"),
        dict(ats_max_tokens=0.4, ats_sampler="random"),
        dict(ats_max_tokens=0.3, ats_merge=-1.0),
    ],
)
def test_tiny_ats_matches_flop_counter(ats_settings):
    model = eager_model(tiny_config(**ats_settings))
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    output, counter = counted(model, image)
    assert output.num_tokens[0, -1] < 65, "the model must drop tokens for this test to mean anything"
    breakdown = mac_breakdown(model.config, output.num_tokens)
    assert_within_one_percent(breakdown.total.item(), counter.get_total_flops() / 2)
    assert (breakdown.ats_merging.item() > 0) == (model.config.ats_merge is not None)
    assert breakdown.total.item() < mac_breakdown(model.config, torch.full_like(output.num_tokens, 65)).total.item()


def test_items_match_their_modules():
    model = eager_model(tiny_config(ats_max_tokens=0.5))
    output, counter = counted(model, torch.randn(1, 3, 32, 32))
    breakdown = mac_breakdown(model.config, output.num_tokens)
    assert breakdown.patch_embedding.item() == module_macs(counter, "embeddings.patch_embeddings.projection")
    assert breakdown.head.item() == module_macs(counter, ".classifier")
    mlp = sum(module_macs(counter, f"layers.{i}.mlp") for i in range(4))
    assert breakdown.mlp.item() == mlp
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    projections = sum(module_macs(counter, f"layers.{i}.attention.{name}") for i in range(4) for name in names)
    assert breakdown.projections.item() == projections
    attention = sum(module_macs(counter, f"layers.{i}.attention") for i in range(4))
    items = breakdown.projections + breakdown.attention + breakdown.ats_scoring
    assert_within_one_percent(items.item(), attention)


def test_non_square_interpolated_input():
    model = eager_model(tiny_config(ats_max_tokens=0.5))
    output, counter = counted(model, torch.randn(1, 3, 32, 48), interpolate_pos_encoding=True)
    num_input_tokens = (32 // 4) * (48 // 4) + 1
    breakdown = mac_breakdown(model.config, output.num_tokens, num_input_tokens=num_input_tokens)
    assert_within_one_percent(breakdown.total.item(), counter.get_total_flops() / 2)
    assert breakdown.patch_embedding.item() == (num_input_tokens - 1) * 3 * 4 * 4 * 32


def test_per_image_count_does_not_depend_on_the_batch(images):
    model = eager_model(tiny_config())
    with torch.no_grad():
        batch_counts = model(images).num_tokens
        alone = torch.cat([model(image[None]).num_tokens for image in images])
    assert batch_counts.unique(dim=0).shape[0] > 1, "images should keep different numbers of tokens"
    torch.testing.assert_close(gmacs_per_image(model.config, batch_counts), gmacs_per_image(model.config, alone))


def test_base_model_without_head():
    config = tiny_config(ats_layers=[])
    counts = torch.full((1, 4), 65)
    with_head, without = gmacs_per_image(config, counts), gmacs_per_image(config, counts, with_head=False)
    assert (with_head - without).item() == pytest.approx(32 * 5 / 1e9)


def test_wrong_number_of_layers_is_an_error():
    with pytest.raises(ValueError, match="3 layers"):
        gmacs_per_image(tiny_config(), torch.full((1, 3), 65))


def test_deit_small_dense_is_4_6_gmacs_and_matches_flop_counter():
    config = AtsViTConfig(**DEIT_S, ats_layers=[])
    assert round(dense_gmacs(config), 1) == 4.6
    model = eager_model(config, peaky=False)
    output, counter = counted(model, torch.randn(1, 3, 224, 224))
    assert_within_one_percent(gmacs_per_image(config, output.num_tokens).item() * 1e9, counter.get_total_flops() / 2)


def test_deit_small_ats_matches_flop_counter():
    model = eager_model(AtsViTConfig(**DEIT_S, ats_max_tokens=0.5), peaky=False)
    output, counter = counted(model, torch.randn(1, 3, 224, 224))
    assert output.num_tokens[0, 3] <= 99
    gmacs = gmacs_per_image(model.config, output.num_tokens).item()
    assert_within_one_percent(gmacs * 1e9, counter.get_total_flops() / 2)
    assert 2.6 < gmacs < 2.9
