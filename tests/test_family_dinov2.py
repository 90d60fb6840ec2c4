"""The DINOv2 family (issue #11): DINOv2 with and without registers, against transformers' own models and a per-image
reference of the official ATS arithmetic."""


import pytest
import torch
from conftest import peaky_weights_
from hf_fixtures import random_image, tiny_image_processor
from huggingface_hub.errors import StrictDataclassClassValidationError
from official_reference import official_picks
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
)

from ats_hf import AtsDinov2Config, AtsDinov2ForImageClassification, AtsDinov2Model, load_ats_classifier
from ats_hf.benchmark.engine import speed_model
from ats_hf.flops import mac_breakdown
from ats_hf.hub import convert

# 32 px images, 4 px patches: 64 patches; with 2 registers, S = 3 special tokens and N = 67 tokens.
TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=2, image_size=32, patch_size=4,
            num_labels=5)
REGISTERS = [0, 2]


def upstream_classifier(registers: int, peaky: bool = True, **fields):
    """transformers' own DINOv2 classifier of the tiny geometry (the registers flavour if `registers`), seeded."""
    torch.manual_seed(0)
    if registers:
        model = Dinov2WithRegistersForImageClassification(
            Dinov2WithRegistersConfig(num_register_tokens=registers, **TINY, **fields)
        )
    else:
        model = Dinov2ForImageClassification(Dinov2Config(**TINY, **fields))
    model = model.eval()
    return peaky_weights_(model) if peaky else model


def ats_twin(upstream, **ats_fields) -> AtsDinov2ForImageClassification:
    """An ATS classifier holding `upstream`'s weights (same names, so a strict state-dict load)."""
    registers = getattr(upstream.config, "num_register_tokens", 0)
    extra = {"use_swiglu_ffn": upstream.config.use_swiglu_ffn}
    config = AtsDinov2Config(**TINY, num_register_tokens=registers, **extra, **ats_fields)
    model = AtsDinov2ForImageClassification(config).eval()
    model.load_state_dict(upstream.state_dict())
    return model


def kept_lists(output, image_index: int) -> list[list[int]]:
    return [row[row >= 0].tolist() for row in output.sampled_token_indices[image_index]]


@torch.no_grad()
def reference_forward(upstream, image: torch.Tensor, max_tokens: dict[int, int]):
    """One image through upstream's own layers, dropping rows by the official sampler after each ATS layer: scores =
    CLS attention row (its query from the layer-normed input), summed over heads, over the patch keys, times the
    patches' value norms. Returns the logits and, per ATS layer, the kept patch positions."""
    backbone = upstream.base_model
    num_special = 1 + getattr(upstream.config, "num_register_tokens", 0)
    heads = upstream.config.num_attention_heads
    x = backbone.embeddings(image[None])
    positions = list(range(x.shape[1]))
    kept_per_layer = []
    for index, layer in enumerate(backbone.encoder.layer):
        out = layer(x)
        if index in max_tokens:
            attention, normed, n = layer.attention, layer.norm1(x), x.shape[1]
            query = attention.q_proj(normed)[:, :1].view(1, 1, heads, -1).transpose(1, 2)
            keys = attention.k_proj(normed).view(1, n, heads, -1).transpose(1, 2)
            cls_row = torch.softmax(query @ keys.transpose(2, 3) * attention.scaling, dim=-1)[0, :, 0]  # (H, n)
            scores = cls_row[:, num_special:].sum(0) * attention.v_proj(normed)[0, num_special:].norm(dim=-1)
            picks = official_picks(scores, max_tokens[index] - num_special + 1)
            rows = list(range(num_special)) + [num_special + p for p in picks]
            out, positions = out[:, rows], [positions[r] for r in rows]
            assert positions[:num_special] == list(range(num_special))
            kept_per_layer.append(sorted(p - num_special for p in positions[num_special:]))
        x = out
    sequence = backbone.layernorm(x)[0]
    features = torch.cat([sequence[0], sequence[num_special:].mean(dim=0)])
    return upstream.classifier(features), kept_per_layer


@pytest.mark.parametrize("registers", REGISTERS)
def test_upstream_config_loads_into_the_ats_config(registers, tmp_path):
    upstream_classifier(registers).config.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == ("dinov2_with_registers" if registers else "dinov2")
    config = AtsDinov2Config.from_pretrained(tmp_path, ats_layers=[2])
    assert config.model_type == "ats_dinov2" and config.num_register_tokens == registers
    assert config.ats_num_special_tokens == 1 + registers and config.ats_layers == [2]
    with pytest.raises(StrictDataclassClassValidationError, match="num_register_tokens=-1 must be an int >= 0"):
        AtsDinov2Config(num_register_tokens=-1)
    with pytest.raises(ValueError, match=rf"an int must be >= {registers + 2}"):
        AtsDinov2Config(**TINY, num_register_tokens=registers, ats_max_tokens=registers + 1)


@pytest.mark.parametrize("registers", REGISTERS)
@pytest.mark.parametrize("swiglu", [False, True], ids=["mlp", "swiglu"])
@pytest.mark.parametrize("original_format", [False, True], ids=["current-names", "original-names"])
def test_upstream_checkpoints_load_strictly_and_without_ats_layers_equal_upstream(
    registers, swiglu, original_format, images, tmp_path
):
    upstream = upstream_classifier(registers, peaky=False, use_swiglu_ffn=swiglu)
    upstream.save_pretrained(tmp_path, save_original_format=original_format)
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
    assert any("attention.attention.query" in name for name in names) == original_format
    assert any("mlp.weights_in" in name for name in names) == (original_format and swiglu)

    # The strict from_pretrained raises on any missing or unexpected weight.
    ats = AtsDinov2ForImageClassification.from_pretrained(tmp_path, ats_layers=[]).eval()
    ats_base = AtsDinov2Model.from_pretrained(tmp_path, ats_layers=[]).eval()
    with torch.no_grad():
        ours, theirs = ats(images, output_hidden_states=True), upstream(images, output_hidden_states=True)
        our_base, their_base = ats_base(images), upstream.base_model(images)
    assert (ours.logits - theirs.logits).abs().max() <= 1e-5
    for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (our_base.last_hidden_state - their_base.last_hidden_state).abs().max() <= 1e-5
    assert (our_base.pooler_output - their_base.pooler_output).abs().max() <= 1e-5
    assert ours.num_tokens.eq(65 + registers).all() and ours.sampled_token_indices is None


@pytest.mark.parametrize("registers", REGISTERS)
def test_position_embeddings_are_interpolated_to_other_sizes_as_upstream(registers):
    """Upstream always interpolates (no flag); K defaults follow the actual token count."""
    upstream = upstream_classifier(registers)
    pixel_values = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        dense, theirs = ats_twin(upstream, ats_layers=[])(pixel_values), upstream(pixel_values)
        sampled = ats_twin(upstream, ats_max_tokens=0.5)(pixel_values)
    assert (dense.logits - theirs.logits).abs().max() <= 1e-5
    tokens = 12 * 10 + 1 + registers
    assert dense.num_tokens.eq(tokens).all() and sampled.num_tokens[:, 1:].max() <= (tokens + 1) // 2


@pytest.mark.parametrize("registers", REGISTERS)
@pytest.mark.parametrize(("attn_implementation", "max_tokens"), [("sdpa", None), ("eager", [0.5, 20, None])])
def test_kept_tokens_and_logits_equal_the_reference(registers, attn_implementation, max_tokens, images):
    upstream = upstream_classifier(registers)
    model = ats_twin(upstream, ats_max_tokens=max_tokens)
    model.set_attn_implementation(attn_implementation)
    with torch.no_grad():
        output = model(images)
    assert output.num_tokens[:, -1].float().mean() < 40, "the test needs a model that drops tokens"
    resolved = model.config.resolve_ats_max_tokens(65 + registers)
    for i, image in enumerate(images):
        logits, kept = reference_forward(upstream, image, resolved)
        assert kept_lists(output, i) == kept
        torch.testing.assert_close(output.logits[i], logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("registers", REGISTERS)
def test_special_tokens_are_always_kept_and_never_scored(registers, images):
    model = ats_twin(upstream_classifier(registers), ats_max_tokens=registers + 2)  # one patch per ATS layer
    num_special = 1 + registers
    base = model.base_model
    with torch.no_grad():
        run = base.run_layers(base.ats_embed(images))
    assert run.state.positions.shape[1] == num_special + 1
    assert torch.equal(run.state.positions[:, :num_special], torch.arange(num_special).expand(len(images), -1))
    assert (run.state.positions[:, num_special:] >= num_special).all()  # the kept patch is a patch
    assert run.num_tokens[:, 1:].eq(num_special + 1).all()


def test_the_head_pools_kept_patches_only(images):
    """Hand-computed: concat(CLS, mean of each image's real kept patch rows), registers and padding excluded."""
    model = ats_twin(upstream_classifier(2))
    with torch.no_grad():
        output = model(images)
        base = model.base_model(images)
    features = []
    for hidden, mask in zip(base.last_hidden_state, base.token_mask, strict=True):
        patches = hidden[3:][mask[3:].bool()]
        assert len(patches) == len(kept_lists(base, len(features))[-1])
        features.append(torch.cat([hidden[0], patches.mean(dim=0)]))
    torch.testing.assert_close(output.logits, model.classifier(torch.stack(features)), atol=1e-6, rtol=1e-6)
    assert base.token_mask.eq(0).any(), "the batch should have padding rows"


@pytest.mark.parametrize("capacity", [None, 40])
def test_sampled_token_indices_are_padded_with_minus_one(capacity, images):
    """Padding rows point at CLS; with 3 special tokens they must still read -1, not -3."""
    with torch.no_grad():
        output = ats_twin(upstream_classifier(2), ats_capacity=capacity)(images)
    indices = output.sampled_token_indices
    assert indices.min() == -1 and ((indices >= 0) | (indices == -1)).all()
    kept_counts = [len(kept_lists(output, i)[-1]) for i in range(6)]
    assert kept_counts == (output.num_tokens[:, -1] - 3).tolist()


@pytest.mark.parametrize("capacity", [None, 40])
def test_dense_output_is_the_full_grid_and_the_head_still_pools_kept_tokens(capacity, images):
    upstream = upstream_classifier(2)
    packed = ats_twin(upstream, ats_capacity=capacity)
    dense = ats_twin(upstream, ats_capacity=capacity, ats_dense_output=True)
    with torch.no_grad():
        p, d = packed.base_model(images), dense.base_model(images)
        p_logits, d_logits = packed(images).logits, dense(images).logits
    assert d.last_hidden_state.shape == (6, 67, 32)
    torch.testing.assert_close(d_logits, p_logits, atol=1e-5, rtol=1e-5)
    for i in range(6):
        real = p.token_mask[i].bool()
        grid_rows = torch.cat([torch.arange(3), 3 + torch.tensor(kept_lists(p, i)[-1], dtype=torch.long)])
        torch.testing.assert_close(d.last_hidden_state[i, grid_rows], p.last_hidden_state[i, real], atol=1e-6, rtol=0)
    torch.testing.assert_close(d.pooler_output, p.pooler_output, atol=1e-6, rtol=0)


@pytest.mark.parametrize("registers", REGISTERS)
def test_load_ats_classifier_and_convert_detect_the_family(registers, images, tmp_path):
    upstream = upstream_classifier(registers)
    upstream.save_pretrained(tmp_path / "upstream", save_original_format=True)
    tiny_image_processor().save_pretrained(tmp_path / "upstream")
    model = load_ats_classifier(tmp_path / "upstream", ats_layers=[2, 3]).eval()
    assert type(model) is AtsDinov2ForImageClassification and model.config.num_register_tokens == registers

    out = convert.convert_to_ats(tmp_path / "upstream", tmp_path / "ats", ats_layers=[1, 2, 3], ats_max_tokens=0.5)
    assert (out / "modeling_ats_dinov2.py").exists() and (out / "configuration_ats_dinov2.py").exists()
    converted = AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(converted) is AtsDinov2ForImageClassification and converted.config.ats_max_tokens == 0.5
    expected = ats_twin(upstream, ats_max_tokens=0.5)
    with torch.no_grad():
        assert torch.equal(converted(images).logits, expected(images).logits)


def eager_flops(model, images) -> tuple:
    from torch.utils.flop_counter import FlopCounterMode

    model.set_attn_implementation("eager")  # FlopCounterMode does not see inside CPU sdpa kernels
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        output = model(images)
    return output, counter.get_total_flops() / 2  # FLOPs -> MACs


@pytest.mark.parametrize("swiglu", [False, True], ids=["mlp", "swiglu"])
def test_gmacs_match_a_hand_count_and_the_flop_counter(swiglu, images):
    model = ats_twin(upstream_classifier(2, use_swiglu_ffn=swiglu), ats_layers=[])
    output, measured = eager_flops(model, images[:1])
    breakdown = mac_breakdown(model.config, output.num_tokens)
    n, d, layers, labels = 67, 32, 4, 5
    width = (int(64 * 2 / 3) + 7) // 8 * 8 if swiglu else 64
    mlp = n * d * width * (3 if swiglu else 2)
    hand = 64 * 3 * 16 * d + layers * (4 * n * d * d + 2 * n * n * d + mlp) + d * labels
    assert breakdown.total.item() == hand
    # The counter also sees the head's second half (the patch mean, D x num_labels), which flops.py leaves out.
    assert measured == hand + d * labels

    ats = ats_twin(upstream_classifier(2, use_swiglu_ffn=swiglu))
    output, measured = eager_flops(ats, images[:1])
    # The counter sees matrix products only, not the CLS row's scoring (an elementwise product and sum).
    breakdown = mac_breakdown(ats.config, output.num_tokens)
    ours = (breakdown.total - breakdown.ats_scoring).item()
    assert output.num_tokens[0, -1] < n
    assert abs(ours + d * labels - measured) <= 1e-3 * measured


def test_speed_mode_geometries_build():
    model = speed_model({"family": "dinov2", "image_size": 28, "patch_size": 14, "hidden_size": 32,
                         "num_hidden_layers": 2, "num_attention_heads": 2, "num_register_tokens": 4}, num_labels=3)
    assert type(model) is AtsDinov2ForImageClassification and model.config.ats_num_special_tokens == 5
    from ats_hf.benchmark.engine import GEOMETRIES, speed_config

    for name, heads in (("dinov2-s14-reg", 6), ("dinov2-b14-reg", 12)):
        config = speed_config(name)
        assert type(config) is AtsDinov2Config and config.num_attention_heads == heads
        assert (config.image_size, config.patch_size, config.num_register_tokens) == (224, 14, 4)
        assert GEOMETRIES[name]["family"] == "dinov2"


def test_training_with_stochastic_depth_runs_and_gradients_flow(images):
    model = ats_twin(upstream_classifier(2, drop_path_rate=0.2)).train()
    output = model(images, labels=torch.arange(6) % 5)
    output.loss.backward()
    assert output.loss.isfinite()
    grad = model.base_model.embeddings.patch_embeddings.projection.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_calibration_and_token_map_take_the_family(images):
    from ats_hf.calibration import calibrate_capacity
    from ats_hf.visualize import token_map

    model = ats_twin(upstream_classifier(2))
    with torch.no_grad():
        kept = model(images).num_tokens
    result = calibrate_capacity(model, images, quantile=1.0)  # quantile 1: the most any image keeps, specials included
    assert result.capacity == {layer: int(kept[:, layer].max()) for layer in (1, 2, 3)}
    assert model.ats_settings["capacity"] is None  # restored
    picture = token_map(random_image(0), model, tiny_image_processor())
    assert picture.mode == "RGB" and picture.size[0] > picture.size[1]


@pytest.mark.slow  # exports and checks the graph in onnxruntime: about 35 s
def test_static_mode_exports_to_onnx_and_the_graph_agrees(images, tmp_path):
    from ats_hf.export import export_onnx, verify_onnx

    model = ats_twin(upstream_classifier(2), ats_capacity=[60, 50, 40])
    report = verify_onnx(export_onnx(model, tmp_path / "model.onnx", images[:2]), model, images)
    assert report["passed"] and report["identical_kept_tokens"], report


def test_a_mask_over_a_register_is_refused_by_position(images):
    model = ats_twin(upstream_classifier(2), ats_layers=[1])
    num_tokens = model.config.ats_num_special_tokens + 64
    mask = torch.ones(len(images), num_tokens, dtype=torch.long)
    mask[3, 2] = 0
    with pytest.raises(ValueError, match=r"masks a special token \(positions 1\.\.2\) of image\(s\) \[3\]"):
        model(images, attention_mask=mask)
    mask[3, 2], mask[3, 7] = 1, 0  # a patch may be masked
    assert model(images, attention_mask=mask).logits.shape == (len(images), model.config.num_labels)
