"""The VideoMAE family: videos cut into tubelets, no special token, the mean query scoring, against transformers' own
VideoMAE.

What every classifier family keeps (equal to upstream without ATS, batch invariance under three settings, static =
adaptive, the dense grid, save and load, the Auto class, the pipeline in batches, remote code without ats_hf, GMACs
of the base model) is checked by tests/test_family_contract.py, whose cases include VideoMAE (`family_cases.py`), and
ToMe by tests/test_tome.py, and what both video families keep (the default settings, GMACs per video with the head,
the static mode compiled and in ONNX, the dense grid's rows) by tests/test_video_families.py. Here: the geometry
with S = 0, a naive per-video pass with the official arithmetic and the mean query, `ats-hf convert` of a checkpoint
with the Hub's old `q_bias` / `v_bias`, a pre-training checkpoint, the attention mask, merging and the size-weighted
mean, `bool_masked_pos`, and the first-token head."""

import json

import pytest
import torch
from family_cases import CASES
from official_reference import official_picks
from safetensors.torch import load_file, save_file
from transformers import AutoModelForVideoClassification, VideoMAEConfig, VideoMAEForPreTraining, VideoMAEModel

from ats_hf import AtsVideoMAEConfig, AtsVideoMAEForVideoClassification, AtsVideoMAEModel
from ats_hf.configuration_ats_core import num_input_tokens
from ats_hf_cli import main

VIDEOMAE = next(case for case in CASES if case.family == "videomae")
NUM_TOKENS = 64  # 4 x 4 x 4 tubelets, no special token


@pytest.fixture(scope="module")
def upstream():
    return VIDEOMAE.upstream()


@pytest.fixture(scope="module")
def upstream_folder(upstream, tmp_path_factory):
    """transformers' VideoMAE classifier saved as the Hub's older checkpoints are: `q_bias` and `v_bias` beside
    bias-free query and value projections (MCG-NJU/videomae-base-finetuned-kinetics), and its processor."""
    folder = tmp_path_factory.mktemp("videomae") / "upstream"
    upstream.save_pretrained(folder)
    VIDEOMAE.processor().save_pretrained(folder)
    weights = load_file(folder / "model.safetensors")
    for name in [name for name in weights if name.endswith(("attention.query.bias", "attention.value.bias"))]:
        old = name.replace("query.bias", "q_bias").replace("value.bias", "v_bias")
        weights[old] = weights.pop(name)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def converted(upstream_folder, tmp_path_factory):
    """`ats-hf convert` of the upstream checkpoint, default settings."""
    folder = tmp_path_factory.mktemp("videomae") / "ats"
    assert main(["convert", str(upstream_folder), str(folder)]) == 0
    return folder


@pytest.fixture
def videos():
    return VIDEOMAE.inputs(4, seed=11)


def load(folder, **settings) -> AtsVideoMAEForVideoClassification:
    model = AutoModelForVideoClassification.from_pretrained(folder).eval()
    model.set_ats(**settings)
    return model


@torch.no_grad()
def reference_forward(model: AtsVideoMAEForVideoClassification, video: torch.Tensor):
    """One video, naively: full attention per layer; in an ATS layer the tokens' mean query's attention row (softmax
    over every key, summed over heads) times each value norm, the official sampler on it (K tubelets: K sample
    points), the kept rows in their order. Returns the logits and each ATS layer's kept positions."""
    videomae, config = model.videomae, model.config
    x = videomae.embeddings(video[None], None)
    positions = list(range(x.shape[1]))
    max_tokens = config.resolve_ats_max_tokens(x.shape[1])
    kept_per_layer = []
    for index, layer in enumerate(videomae.encoder.layer):
        block = layer.attention.attention
        n = x.shape[1]
        h = layer.layernorm_before(x)
        q, k, v = (projection(h).view(1, n, config.num_attention_heads, -1).transpose(1, 2)
                   for projection in (block.query, block.key, block.value))
        probs = torch.softmax(q @ k.transpose(2, 3) * block.scaling, dim=-1)
        out = layer.attention.output.dense((probs @ v).transpose(1, 2).reshape(1, n, -1)) + x
        out = out + layer.output.dense(layer.intermediate(layer.layernorm_after(out)))
        if index in max_tokens:
            mean_query = q.mean(dim=2, keepdim=True)  # (1, H, 1, d)
            row = torch.softmax(mean_query @ k.transpose(2, 3) * block.scaling, dim=-1)[0, :, 0].sum(0)
            scores = row * block.value(h)[0].norm(dim=-1)
            rows = official_picks(scores, max_tokens[index] + 1)  # its points: max_tokens - 1
            out = out[:, rows]
            positions = [positions[r] for r in rows]
            kept_per_layer.append(sorted(positions))
        x = out
    return model.classifier(model.fc_norm(x.mean(dim=1)))[0], kept_per_layer


def test_the_geometry_has_no_special_token():
    config = AtsVideoMAEConfig(**{key: value for key, value in VIDEOMAE.build().config.to_dict().items()
                                  if key in AtsVideoMAEConfig().to_dict()})
    assert config.ats_num_special_tokens == 0
    assert config.ats_patch_grid() == (4, 4, 4) and config.ats_num_input_tokens() == NUM_TOKENS
    assert num_input_tokens(config, (32, 32)) == NUM_TOKENS and num_input_tokens(config, (16, 48, 32)) == 8 * 6 * 4
    assert config.ats_patch_values == 3 * 2 * 8 * 8
    assert config.ats_layers == [1, 2, 3]
    # K counts tubelets only: one is the least an ATS layer keeps.
    assert config.resolve_ats_max_tokens(NUM_TOKENS) == {1: 64, 2: 64, 3: 64}
    config.ats_max_tokens = 1
    assert config.resolve_ats_max_tokens(NUM_TOKENS)[1] == 1
    with pytest.raises(ValueError, match=r"ats_max_tokens=0 is too small: an int must be >= 1 \(one patch token\)"):
        AtsVideoMAEConfig(ats_max_tokens=0)
    with pytest.raises(ValueError, match=r"resolves to 0 token\(s\) of 64; an ATS layer must keep at least 1"):
        config.ats_max_tokens = 0.004
        config.resolve_ats_max_tokens(NUM_TOKENS)


@pytest.mark.parametrize("settings", [dict(), dict(max_tokens=0.5, layers=[0, 2]), dict(max_tokens=[40, 9, 2])],
                         ids=["K-all", "K-half", "K-per-layer"])
def test_each_video_follows_the_official_arithmetic_with_the_mean_query(converted, settings):
    model = load(converted, **settings)
    videos = VIDEOMAE.inputs(3, seed=4)
    with torch.no_grad():
        together = model(videos)
    for index, video in enumerate(videos):
        logits, kept = reference_forward(model, video)
        ours = [row[row >= 0].tolist() for row in together.sampled_token_indices[index]]
        assert ours == kept
        assert (together.logits[index] - logits).abs().max() <= 1e-5
    assert (together.num_tokens[:, -1] < NUM_TOKENS).all()


def test_convert_reads_the_old_bias_names_and_equals_upstream_without_ats(converted, upstream, videos):
    saved = json.loads((converted / "config.json").read_text())
    assert saved["model_type"] == "ats_videomae" and saved["architectures"] == ["AtsVideoMAEForVideoClassification"]
    assert saved["auto_map"]["AutoModelForVideoClassification"] == (
        "modeling_ats_videomae.AtsVideoMAEForVideoClassification")
    assert {"modeling_ats_videomae.py", "configuration_ats_videomae.py", "modeling_ats_core.py", "ats_sampling.py",
            "preprocessor_config.json"} <= {path.name for path in converted.iterdir()}
    assert "pipeline_tag: video-classification" in (converted / "README.md").read_text()
    model = load(converted, layers=[])
    with torch.no_grad():
        ours, theirs = model(videos, output_hidden_states=True), upstream(videos, output_hidden_states=True)
    assert (ours.logits - theirs.logits).abs().max() <= 1e-5
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 5
    for mine, upstreams in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        assert (mine - upstreams).abs().max() <= 1e-5


def test_the_command_line_takes_k_of_one_tubelet(upstream_folder, tmp_path):
    """The settings grammar takes any int >= 1; the model's check decides (VideoMAE keeps 1, a ViT refuses it:
    tests/test_convert.py and tests/test_benchmark.py)."""
    assert main(["convert", str(upstream_folder), str(tmp_path / "k1"), "--ats-max-tokens", "1"]) == 0
    model = load(tmp_path / "k1")
    assert model.config.ats_max_tokens == 1
    with torch.no_grad():
        assert model(VIDEOMAE.inputs(2, seed=1)).num_tokens[:, -1].eq(1).all()


def test_masked_tubelets_are_never_kept_and_an_empty_video_is_refused(converted, videos):
    model = load(converted, max_tokens=0.5)
    mask = torch.ones(len(videos), NUM_TOKENS, dtype=torch.long)
    mask[0, :5] = 0  # the first tubelets, which a model with CLS could not mask
    mask[2, 30:] = 0
    with torch.no_grad():
        masked = model(videos, attention_mask=mask)
        unchecked = model(videos, attention_mask=mask, check_attention_mask=False)
    for index in range(len(videos)):
        kept = masked.sampled_token_indices[index]
        assert not set(kept[kept >= 0].tolist()) & set((mask[index] == 0).nonzero().flatten().tolist())
    assert masked.num_tokens[2, 0] == 30 and masked.num_tokens[0, 0] == NUM_TOKENS - 5
    assert torch.equal(unchecked.sampled_token_indices, masked.sampled_token_indices)
    assert (unchecked.logits - masked.logits).abs().max() <= 1e-5
    mask[1] = 0
    with pytest.raises(ValueError, match=r"masks every token of input\(s\) \[1\]; each input needs at least one"):
        model(videos, attention_mask=mask)


def test_merging_weighs_the_mean_by_the_tokens_each_row_stands_for(converted, videos):
    model = load(converted, max_tokens=0.25, merge=-1.0)  # every dropped tubelet merges into a kept one
    with torch.no_grad():
        output = model.videomae(videos)
        logits = model(videos).logits
    sizes = output.token_sizes
    assert sizes is not None and sizes.max() > 1 and torch.equal(sizes.sum(dim=1), torch.full((len(videos),), 64.0))
    assert torch.equal(sizes > 0, output.token_mask.bool())
    weights = sizes[..., None]
    mean = (output.last_hidden_state * weights).sum(dim=1) / weights.sum(dim=1)
    torch.testing.assert_close(logits, model.classifier(model.fc_norm(mean)), atol=1e-5, rtol=0)
    model.config.ats_dense_output = True  # the grid carries each kept row's size at its position, 0 elsewhere
    with torch.no_grad():
        grid = model.videomae(videos)
        grid_logits = model(videos).logits
    assert torch.equal(grid.token_sizes.sum(dim=1), torch.full((len(videos),), 64.0))
    assert torch.equal(grid.token_sizes[grid.token_sizes > 0].sort().values, sizes[sizes > 0].sort().values)
    torch.testing.assert_close(grid_logits, logits, atol=1e-5, rtol=0)


def test_bool_masked_pos_removes_tubelets_before_the_first_layer_as_upstream(upstream):
    torch.manual_seed(0)
    base = VideoMAEModel(upstream.config).eval()
    base.load_state_dict(upstream.videomae.state_dict())
    model = AtsVideoMAEModel(AtsVideoMAEConfig(**upstream.config.to_dict(), ats_layers=[])).eval()
    model.load_state_dict(base.state_dict())
    videos = VIDEOMAE.inputs(2, seed=3)
    masked = torch.zeros(2, NUM_TOKENS, dtype=torch.bool)
    masked[:, ::4] = True  # the same count per video, as upstream requires
    with torch.no_grad():
        ours, theirs = model(videos, bool_masked_pos=masked), base(videos, bool_masked_pos=masked)
        model.set_ats(layers=[1], max_tokens=0.5)
        sampled = model(videos, bool_masked_pos=masked)
    assert ours.last_hidden_state.shape == theirs.last_hidden_state.shape == (2, 48, 32)
    assert (ours.last_hidden_state - theirs.last_hidden_state).abs().max() <= 1e-5
    assert sampled.num_tokens[:, 1].eq(24).all()  # K = half of the 48 visible tubelets
    # An attention mask over every tubelet is read at the visible ones; one over the visible ones as it is.
    mask = torch.ones(2, NUM_TOKENS, dtype=torch.long)
    mask[0, 1:12] = 0  # 9 of these 11 are visible (4 and 8 are removed)
    with torch.no_grad():
        over_all = model(videos, bool_masked_pos=masked, attention_mask=mask)
        over_visible = model(videos, bool_masked_pos=masked, attention_mask=mask[~masked].view(2, -1))
    assert over_all.num_tokens[:, 0].tolist() == [39, 48]
    assert torch.equal(over_all.last_hidden_state, over_visible.last_hidden_state)


def test_the_first_token_head_equals_upstream_and_refuses_ats_layers():
    config = VideoMAEConfig(**{**VIDEOMAE.build().config.to_dict(), "use_mean_pooling": False})
    torch.manual_seed(0)
    from transformers import VideoMAEForVideoClassification

    upstream = VideoMAEForVideoClassification(config).eval()
    model = AtsVideoMAEForVideoClassification(AtsVideoMAEConfig(**config.to_dict(), ats_layers=[])).eval()
    model.load_state_dict(upstream.state_dict())
    videos = VIDEOMAE.inputs(2, seed=6)
    with torch.no_grad():
        assert (model(videos).logits - upstream(videos).logits).abs().max() <= 1e-5
        model.set_ats(layers=[1])
        with pytest.raises(ValueError, match=r"use_mean_pooling=False reads the first token, which ATS layers \[1\]"):
            model(videos)


def test_a_pre_training_checkpoint_loads_for_fine_tuning(upstream, tmp_path):
    pretraining = VideoMAEForPreTraining(VideoMAEConfig(**{**upstream.config.to_dict(), "decoder_hidden_size": 16,
                                                          "decoder_intermediate_size": 32,
                                                          "decoder_num_attention_heads": 2}))
    pretraining.save_pretrained(tmp_path)
    model = AtsVideoMAEForVideoClassification.from_pretrained(tmp_path, num_labels=3).eval()
    encoder = pretraining.videomae.state_dict()
    assert all(torch.equal(value, encoder[name]) for name, value in model.videomae.state_dict().items())
    with torch.no_grad():
        assert model(VIDEOMAE.inputs(2, seed=1)).logits.shape == (2, 3)
