"""The distilled DeiT family: two special tokens (CLS, distillation), scores from the CLS row, two heads."""

import json
from pathlib import Path

import pytest
import torch
from conftest import counting_host_reads, peaky_weights_
from hf_fixtures import tiny_image_processor
from official_reference import official_picks
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
)

import ats_hf
from ats_hf import (
    AtsDeiTConfig,
    AtsDeiTForImageClassification,
    AtsDeiTForImageClassificationWithTeacher,
    AtsDeiTModel,
)
from ats_hf.benchmark.engine import GEOMETRIES, speed_config, speed_model
from ats_hf.configuration_ats_core import num_input_tokens
from ats_hf.flops import dense_gmacs
from ats_hf.hub.checkpoint import ats_model_class, load_ats_classifier

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=32,
            patch_size=4, num_labels=5)
TOKENS = 66  # 64 patches + CLS + distillation token


def deit_config(**overrides) -> AtsDeiTConfig:
    """A 4-layer distilled DeiT on 32 px images with 4 px patches: 66 tokens, ATS in layers 1..3 by default."""
    return AtsDeiTConfig(**{**TINY, **overrides})


def plain_deit_config(**overrides) -> DeiTConfig:
    return DeiTConfig(**{**TINY, **overrides})


def distinct_special_tokens_(model: torch.nn.Module) -> torch.nn.Module:
    """DeiT initialises CLS, the distillation token and the position embeddings to zero, which makes the two special
    tokens identical; give them (seeded) values of their own, as a trained model has."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("cls_token", "distillation_token", "position_embeddings")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return model


def build(cls=AtsDeiTForImageClassificationWithTeacher, attn_implementation="sdpa", peaky=True, **overrides):
    torch.manual_seed(0)
    model = distinct_special_tokens_(cls(deit_config(**overrides)).eval())
    model.set_attn_implementation(attn_implementation)
    return peaky_weights_(model) if peaky else model


def plain_teacher(attn_implementation="sdpa", **overrides):
    model = DeiTForImageClassificationWithTeacher(plain_deit_config(**overrides)).eval()
    model.set_attn_implementation(attn_implementation)
    return model


def kept_lists(output, image_index):
    return [row[row >= 0].tolist() for row in output.sampled_token_indices[image_index]]


@torch.no_grad()
def reference_forward(model, image: torch.Tensor, score_row: int = 0):
    """A naive per-image ATS-DeiT pass: full attention, the official sampler, CLS and the distillation token always
    kept; patches scored by attention row `score_row` (0 = CLS, the implementation's choice). Returns the logits,
    the kept patch positions per ATS layer, and the final hidden states."""
    deit, config = model.deit, model.config
    x = deit.embeddings(image[None])
    positions = list(range(x.shape[1]))
    max_tokens = config.resolve_ats_max_tokens(x.shape[1])
    kept_per_layer = []
    for index, layer in enumerate(deit.layers):
        attention, n = layer.attention, x.shape[1]
        h = layer.layernorm_before(x)
        q, k, v = (
            projection(h).view(1, n, config.num_attention_heads, -1).transpose(1, 2)
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj)
        )
        probs = torch.softmax(q @ k.transpose(2, 3) * attention.scaling, dim=-1)
        out = attention.o_proj((probs @ v).transpose(1, 2).reshape(1, n, -1)) + x
        out = out + layer.mlp(layer.layernorm_after(out))
        if index in max_tokens:
            scores = probs[0, :, score_row, 2:].sum(0) * attention.v_proj(h)[0, 2:].norm(dim=-1)
            # The official sampler counts K with one special token: K - 1 leaves K - 2 patches besides CLS and dist.
            rows = [0, 1] + [p + 2 for p in official_picks(scores, max_tokens[index] - 1)]
            out = out[:, rows]
            positions = [positions[r] for r in rows]
            kept_per_layer.append(sorted(p - 2 for p in positions[2:]))
        x = out
    final = deit.layernorm(x)
    logits = (model.cls_classifier(final[:, 0]) + model.distillation_classifier(final[:, 1]))[0] / 2
    return logits, kept_per_layer, positions


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


def test_config_counts_two_special_tokens():
    config = deit_config()
    assert config.model_type == "ats_deit" and config.ats_num_special_tokens == 2
    assert num_input_tokens(config) == TOKENS and config.ats_layers == [1, 2, 3]
    assert config.resolve_ats_max_tokens(TOKENS) == {1: 66, 2: 66, 3: 66}
    with pytest.raises(ValueError, match=r"must be >= 3 \(the 2 special token\(s\) and one patch token\)"):
        deit_config(ats_max_tokens=2)
    with pytest.raises(ValueError, match="at least 3"):
        deit_config(ats_max_tokens=0.03).resolve_ats_max_tokens(TOKENS)
    assert deit_config(ats_max_tokens=3).resolve_ats_max_tokens(TOKENS)[1] == 3


def test_a_plain_distilled_config_is_read_as_an_ats_one(tmp_path):
    plain_deit_config().save_pretrained(tmp_path)
    config = AtsDeiTConfig.from_pretrained(tmp_path, ats_max_tokens=0.5)
    assert config.model_type == "ats_deit" and config.hidden_size == 32 and config.ats_max_tokens == 0.5


# ----------------------------------------------------------------------------------------------------------------
# Forward pass
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_same_tokens_and_logits_as_a_naive_reference_scoring_by_cls(images, attn_implementation):
    model = build(attn_implementation=attn_implementation, ats_max_tokens=[None, 30, 0.25])
    with torch.no_grad():
        output = model(images)
    assert output.num_tokens[:, -1].float().mean() < 40, "test needs a model that actually drops tokens"
    distillation_row_differs = False
    for i, image in enumerate(images):
        logits, kept, _ = reference_forward(model, image)
        assert kept_lists(output, i) == kept
        torch.testing.assert_close(output.logits[i], logits, atol=1e-5, rtol=1e-5)
        distillation_row_differs |= reference_forward(model, image, score_row=1)[1] != kept
    assert distillation_row_differs, "scoring by the distillation row must pick differently, or this test is blind"


def test_cls_and_distillation_token_are_always_kept_first(images):
    model = build(ats_layers=[1], ats_max_tokens=3)  # the fewest allowed: the two special tokens and one patch
    with torch.no_grad():
        output = model.deit(images)
    assert output.num_tokens[:, 1:].eq(3).all() and output.last_hidden_state.shape[1] == 3
    for i, image in enumerate(images):
        _, kept, positions = reference_forward(model, image)
        assert positions[:2] == [0, 1] and kept_lists(output, i) == kept
    assert output.sampled_token_indices.min() >= 0 and output.sampled_token_indices.max() < 64


@pytest.mark.parametrize("batch_size", [1, 6])
def test_keeping_every_token_is_upstream_deit(images, batch_size):
    ats = build(peaky=False, ats_sampler="top_k", ats_max_tokens=1.0)
    plain = plain_teacher()
    plain.load_state_dict(ats.state_dict())
    with torch.no_grad():
        ours, theirs = ats(images[:batch_size]), plain(images[:batch_size])
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=0)
    assert ours.sampled_token_indices.tolist() == [[list(range(64))] * 3] * batch_size


def test_logits_are_the_mean_of_both_heads_on_their_own_tokens(images):
    model = build(ats_max_tokens=0.5)
    with torch.no_grad():
        output = model(images)
        hidden = model.deit(images).last_hidden_state
    torch.testing.assert_close(output.cls_logits, model.cls_classifier(hidden[:, 0]))
    torch.testing.assert_close(output.distillation_logits, model.distillation_classifier(hidden[:, 1]))
    torch.testing.assert_close(output.logits, (output.cls_logits + output.distillation_logits) / 2)
    assert not torch.allclose(output.cls_logits, output.distillation_logits)


def test_at_most_one_host_read_per_ats_layer(images, monkeypatch):
    model = build()
    with torch.no_grad(), counting_host_reads(monkeypatch) as reads:
        output = model(images)
    assert not output.token_mask.all(), "test needs a padded batch"
    assert len(reads) <= len(model.config.ats_layers), reads


def test_user_mask_and_a_masked_distillation_token(images):
    model = build()
    mask = torch.ones(6, TOKENS, dtype=torch.long)
    mask[2, 10:30] = 0
    with torch.no_grad():
        output = model(images, attention_mask=mask)
    assert not any(p in row for p in range(8, 28) for row in kept_lists(output, 2))
    mask[4, 1] = 0
    with pytest.raises(ValueError, match=r"masks a special token \(position 1\) of image\(s\) \[4\]"):
        model(images, attention_mask=mask)
    mask[4, 1], mask[3, 0] = 1, 0
    with pytest.raises(ValueError, match=r"masks the CLS token \(position 0\) of image\(s\) \[3\]"):
        model(images, attention_mask=mask)


def test_merging_never_feeds_the_special_tokens(images):
    """In the one ATS layer, merging changes the kept patch rows but not CLS nor the distillation token."""
    model = build(ats_layers=[1], ats_max_tokens=0.5, ats_merge=-1.0)
    with torch.no_grad():
        merged = model(images, output_hidden_states=True)
        model.set_ats(merge=None)
        dropped = model(images, output_hidden_states=True)
    assert torch.equal(merged.sampled_token_indices, dropped.sampled_token_indices)
    after_ats_layer = merged.hidden_states[2], dropped.hidden_states[2]
    torch.testing.assert_close(after_ats_layer[0][:, :2], after_ats_layer[1][:, :2], atol=1e-6, rtol=0)
    assert not torch.allclose(after_ats_layer[0][:, 2:], after_ats_layer[1][:, 2:])


def test_dense_output_puts_every_token_on_the_full_grid(images):
    model = build(ats_dense_output=True)
    with torch.no_grad():
        dense = model.deit(images)
        model.config.ats_dense_output = False
        packed = model.deit(images)
    assert dense.last_hidden_state.shape == (6, TOKENS, 32)
    torch.testing.assert_close(dense.last_hidden_state[:, :2], packed.last_hidden_state[:, :2])


def test_interpolated_position_embeddings_follow_the_input_size():
    model = build(ats_max_tokens=0.5)
    with torch.no_grad():
        output = model(torch.randn(2, 3, 48, 48), interpolate_pos_encoding=True)
    assert output.num_tokens[:, 0].eq(144 + 2).all() and output.num_tokens[:, 1:].max() <= 73


def test_labels_train_both_heads(images):
    model = build(ats_max_tokens=0.5).train()
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    output = model(images, labels=labels)
    ce = torch.nn.functional.cross_entropy
    expected = (ce(output.cls_logits, labels) + ce(output.distillation_logits, labels)) / 2
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    for head in (model.cls_classifier, model.distillation_classifier):
        assert head.weight.grad.abs().sum() > 0
    assert model.deit.embeddings.distillation_token.grad.abs().sum() > 0


def test_cls_head_class_reads_the_cls_token(images):
    ats = build(AtsDeiTForImageClassification, peaky=False, ats_layers=[])
    plain = DeiTForImageClassification(plain_deit_config()).eval()
    plain.load_state_dict(ats.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ats(images).logits, plain(images).logits, atol=1e-5, rtol=0)
    sampled = build(AtsDeiTForImageClassification, ats_max_tokens=0.5)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    output = sampled(images, labels=labels)
    assert output.loss is not None and output.num_tokens[:, -1].max() <= 33


def test_base_model_outputs(images):
    model = AtsDeiTModel(deit_config()).eval()
    with torch.no_grad():
        output = model(images)
    assert output.pooler_output.shape == (6, 32)
    assert output.last_hidden_state.shape[1] == output.token_mask.shape[1]


# ----------------------------------------------------------------------------------------------------------------
# Loading, saving, auto classes
# ----------------------------------------------------------------------------------------------------------------


def save_plain_distilled(directory):
    """A tiny upstream distilled DeiT in the Hub's old weight names, with its image processor."""
    torch.manual_seed(0)
    plain = peaky_weights_(distinct_special_tokens_(plain_teacher()), scale=6.0)
    plain.save_pretrained(directory, save_original_format=True)
    tiny_image_processor().save_pretrained(directory)
    return plain


def test_upstream_distilled_checkpoint_loads_every_weight(tmp_path, images):
    plain = save_plain_distilled(tmp_path)
    assert any("encoder.layer.0.attention.attention.query" in k for k in load_file(tmp_path / "model.safetensors"))
    model, info = AtsDeiTForImageClassificationWithTeacher.from_pretrained(
        tmp_path, ats_layers=[], output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images).logits, plain(images).logits, atol=1e-5, rtol=0)
    assert ats_model_class(tmp_path) is AtsDeiTForImageClassificationWithTeacher
    ats = load_ats_classifier(tmp_path, ats_max_tokens=0.5).eval()
    assert isinstance(ats, AtsDeiTForImageClassificationWithTeacher) and ats.config.model_type == "ats_deit"
    with torch.no_grad():
        assert ats(images).num_tokens[:, -1].max() <= 33


def test_missing_encoder_weights_fail_loudly(tmp_path):
    save_plain_distilled(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in state.items() if "distillation_token" not in k}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"distillation_token"):
        AtsDeiTForImageClassificationWithTeacher.from_pretrained(tmp_path)


def test_round_trip_and_auto_classes_pick_the_saved_head(tmp_path, images):
    teacher = build(ats_max_tokens=[0.5, 20, None])
    cls_head = build(AtsDeiTForImageClassification, ats_max_tokens=0.5)
    teacher.save_pretrained(tmp_path / "teacher")
    cls_head.save_pretrained(tmp_path / "cls")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "teacher"), AtsDeiTConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path / "teacher"), AtsDeiTModel)
    for directory, original in ((tmp_path / "teacher", teacher), (tmp_path / "cls", cls_head)):
        for loaded in (AutoModelForImageClassification.from_pretrained(directory), load_ats_classifier(directory)):
            assert type(loaded) is type(original)
            with torch.no_grad():
                a, b = original(images), loaded.eval()(images)
            assert torch.equal(a.logits, b.logits) and torch.equal(a.sampled_token_indices, b.sampled_token_indices)
    auto_maps = {
        name: json.loads((tmp_path / name / "config.json").read_text())["auto_map"] for name in ("teacher", "cls")
    }
    assert auto_maps["teacher"] == {
        "AutoConfig": "configuration_ats_deit.AtsDeiTConfig",
        "AutoModel": "modeling_ats_deit.AtsDeiTModel",
        "AutoModelForImageClassification": "modeling_ats_deit.AtsDeiTForImageClassificationWithTeacher",
    }
    assert auto_maps["cls"]["AutoModelForImageClassification"] == "modeling_ats_deit.AtsDeiTForImageClassification"
    package = Path(ats_hf.__file__).parent
    for name in ("configuration_ats_core.py", "configuration_ats_deit.py", "modeling_ats_core.py",
                 "modeling_ats_deit.py"):
        assert (tmp_path / "teacher" / name).read_bytes() == (package / name).read_bytes(), name
    assert not (tmp_path / "teacher" / "modeling_ats_vit.py").exists()


def test_an_upstream_cls_head_checkpoint_gets_the_cls_head_class(tmp_path, images):
    torch.manual_seed(0)
    plain = distinct_special_tokens_(DeiTForImageClassification(plain_deit_config()).eval())
    plain.save_pretrained(tmp_path, save_original_format=True)
    assert ats_model_class(tmp_path) is AtsDeiTForImageClassification
    model = load_ats_classifier(tmp_path, ats_layers=[]).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images).logits, plain(images).logits, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Speed mode and compute
# ----------------------------------------------------------------------------------------------------------------


def test_speed_mode_geometry():
    assert GEOMETRIES["deit-s-distilled"]["family"] == "deit"
    config = speed_config("deit-s-distilled")
    assert isinstance(config, AtsDeiTConfig) and num_input_tokens(config) == 198
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (
        384, 12, 6, 1536)
    small = dict(GEOMETRIES["deit-s-distilled"], num_hidden_layers=2, image_size=64, ats_layers=[1])
    model = speed_model(small, num_labels=10)
    assert isinstance(model, AtsDeiTForImageClassificationWithTeacher)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).num_tokens[0, 0] == 18


def test_flops_count_two_special_tokens():
    config = deit_config(ats_layers=[])
    patch_embedding = 64 * 3 * 4 * 4 * 32
    per_layer = 4 * TOKENS * 32**2 + 2 * TOKENS**2 * 32 + 2 * TOKENS * 32 * 64
    assert dense_gmacs(config, with_head=False) * 1e9 == pytest.approx(patch_embedding + 4 * per_layer)
