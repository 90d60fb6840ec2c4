"""Run-time ATS settings: `set_ats`, and config fields changed behind the model's back."""

import argparse

import pytest
import torch
from conftest import peaky_weights_, tiny_config

from ats_hf import AtsSettings, AtsViTForImageClassification
from ats_hf_cli.options import add_ats_arguments, settings_from_args
from ats_hf_common.grammar import format_layers, format_max_tokens, parse_capacity, parse_layers, parse_max_tokens

DEFAULTS = AtsSettings(layers=(1, 2, 3, 4, 5))


@pytest.fixture
def model():
    return peaky_weights_(AtsViTForImageClassification(tiny_config(num_hidden_layers=6))).eval()


def run(model, images):
    with torch.no_grad():
        return model(images)


def test_set_ats_takes_effect_and_returns_the_previous_settings(model, images):
    before = run(model, images)
    previous = model.set_ats(layers=[4], max_tokens=10, sampler="top_k")
    assert previous == DEFAULTS
    assert model.config.ats_layers == [4] and model.ats_settings.sampler == "top_k"
    after = run(model, images)
    assert after.num_tokens[:, :4].eq(65).all() and after.num_tokens[:, 4:].eq(10).all()
    model.set_ats(**previous)
    assert torch.equal(run(model, images).num_tokens, before.num_tokens)


def test_set_ats_leaves_out_arguments_unchanged(model):
    model.set_ats(max_tokens=0.5)
    assert model.ats_settings == DEFAULTS.replace(max_tokens=0.5)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(layers=[7]), r"ats_layers=\[7\] has indices \[7\] outside 0\.\.5"),
        (dict(sampler="foo"), r"ats_sampler='foo' is unknown; choose one of inverse_transform, top_k, random"),
        (dict(max_tokens=1), r"ats_max_tokens=1 is too small"),
        (dict(layers=[1, 2], max_tokens=[0.5, 0.5, 0.5]), r"has 3 entries but ats_layers=\[1, 2\] has 2"),
        (dict(layers="3-5"), r"ats_layers must be a list of layer indices"),
    ],
)
def test_set_ats_rejects_bad_values_and_changes_nothing(model, settings, message):
    before = model.ats_settings
    with pytest.raises(ValueError, match=message):
        model.set_ats(**settings)
    assert model.ats_settings == before


def test_set_ats_layers_with_a_per_layer_k_list_needs_new_k(model):
    model.set_ats(layers=[2, 3], max_tokens=[0.5, 20])
    with pytest.raises(ValueError, match=r"ats_max_tokens=\[0.5, 20\] has 2 entries but ats_layers=\[1, 2, 3\] has 3"):
        model.set_ats(layers=[1, 2, 3])
    model.set_ats(layers=[1, 2, 3], max_tokens=0.5)
    assert model.ats_settings.max_tokens == 0.5


def test_per_layer_k_follows_the_layers_order_given(model):
    model.set_ats(layers=[4, 2], max_tokens=[10, 30])
    assert model.ats_settings.layers == (2, 4) and model.ats_settings.max_tokens == (30, 10)
    assert model.config.ats_layers == [2, 4] and model.config.ats_max_tokens == [30, 10]


def test_the_same_layers_in_another_order_keep_their_per_layer_values(model):
    model.set_ats(layers=[1, 4], max_tokens=[10, 30], capacity=[9, 0.25])
    model.set_ats(layers=[4, 1])  # K and capacity left out: each stays with its layer
    assert model.config.resolve_ats_max_tokens(65) == {1: 10, 4: 30}
    assert model.config.resolve_ats_capacity(65) == {1: 9, 4: 16}
    model.set_ats(layers=[5, 2])  # other layers: the values follow them in ascending order
    assert model.config.resolve_ats_max_tokens(65) == {2: 10, 5: 30}


def test_switching_ats_off_works_with_per_layer_values_and_keeps_them(model, images, tmp_path):
    model.set_ats(layers=[2, 3], max_tokens=[0.5, 20], capacity=[30, 12])
    with model.ats_settings_applied(AtsSettings()):
        dense = run(model, images)
    with model.ats_settings_applied(layers=[]):
        assert torch.equal(run(model, images).logits, dense.logits)
    previous = model.set_ats(layers=[])
    assert torch.equal(run(model, images).logits, dense.logits)
    assert model.config.ats_max_tokens == [0.5, 20] and model.config.ats_capacity == [30, 12]
    model.save_pretrained(tmp_path / "off")
    reloaded = AtsViTForImageClassification.from_pretrained(tmp_path / "off").eval()
    assert torch.equal(run(reloaded, images).logits, dense.logits)
    model.set_ats(previous)
    model.save_pretrained(tmp_path / "on")
    off_again = AtsViTForImageClassification.from_pretrained(tmp_path / "on", ats_layers=[]).eval()
    assert torch.equal(run(off_again, images).logits, dense.logits)
    model.set_ats(layers=[3, 2])  # back on: each layer's values again
    assert model.config.resolve_ats_max_tokens(65) == {2: 33, 3: 20}
    assert model.config.resolve_ats_capacity(65) == {2: 30, 3: 12}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("ats_layers", [7], r"ats_layers=\[7\] has indices \[7\] outside 0\.\.5"),
        ("ats_sampler", "foo", r"ats_sampler='foo' is unknown"),
        ("ats_max_tokens", 0.001, r"resolves to 0 token"),
    ],
)
def test_a_bad_config_field_set_directly_fails_at_the_next_forward(model, images, field, value, message):
    run(model, images)  # the settings in force before the change are cached
    setattr(model.config, field, value)
    with pytest.raises(ValueError, match=message):
        run(model, images)


def test_a_good_config_field_set_directly_takes_effect(model, images):
    run(model, images)
    model.config.ats_layers = [5]
    model.config.ats_max_tokens = 12
    assert run(model, images).num_tokens[:, 5].eq(12).all()
    model.config.ats_layers.append(4)  # in-place edits are seen too
    output = run(model, images)
    assert output.num_tokens[:, 4].eq(12).all() and model.config.ats_layers == [4, 5]
    model.config.ats_layers = []
    assert run(model, images).num_tokens.eq(65).all()


def test_settings_applied_restores_after_an_error(model, images):
    with pytest.raises(RuntimeError), model.ats_settings_applied(layers=[5], sampler="random"):
        assert model.ats_settings.sampler == "random"
        raise RuntimeError
    assert model.ats_settings == DEFAULTS


@pytest.mark.parametrize(
    "text, layers",
    [("3-11", list(range(3, 12))), ("3 4 5", [3, 4, 5]), ("1,3,5-7", [1, 3, 5, 6, 7]), ("none", []),
     (["1,", "2"], [1, 2]), ("4-4", [4])],
)
def test_layer_grammar(text, layers):
    assert parse_layers(text) == layers
    if layers:
        assert parse_layers(format_layers(layers)) == layers


@pytest.mark.parametrize("text", ["5-3", "a", "3-", "-1", "1.5", "", "none 3"])
def test_layer_grammar_errors(text):
    with pytest.raises(ValueError, match="ats layers"):
        parse_layers(text)


@pytest.mark.parametrize(
    "text, value",
    [("all", None), ("0.5", 0.5), ("98", 98), ("all,0.5 20", [None, 0.5, 20]), ("1.0", 1.0), ("1", 1)],  # 1: VideoMAE
)
def test_max_tokens_grammar(text, value):
    assert parse_max_tokens(text) == value
    assert parse_max_tokens(format_max_tokens(value)) == value


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "0.0", "many", ""])
def test_max_tokens_grammar_errors(text):
    with pytest.raises(ValueError, match="ats max tokens"):
        parse_max_tokens(text)


def test_command_line_options_use_the_grammar(capsys):
    parser = argparse.ArgumentParser(prog="cmd")
    add_ats_arguments(parser)
    assert settings_from_args(parser.parse_args([])) == {}
    args = parser.parse_args(["--ats-layers", "2", "4-5", "--ats-max-tokens", "all", "--ats-sampler", "top_k"])
    assert settings_from_args(args) == {"layers": [2, 4, 5], "max_tokens": None, "sampler": "top_k"}
    for bad in (["--ats-layers", "5-3"], ["--ats-max-tokens", "0"], ["--ats-sampler", "foo"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(bad)
        assert exit_info.value.code == 2
    assert "reversed" in capsys.readouterr().err


@pytest.mark.parametrize("text, value", [("adaptive", None), ("64", 64), ("0.5", 0.5), ("40 30,0.2", [40, 30, 0.2]),
                                         ("1", 1)])
def test_capacity_grammar(text, value):
    assert parse_capacity(text) == value


@pytest.mark.parametrize("text", ["0", "all", "none", "1.5", "", "adaptive 3"])
def test_capacity_grammar_errors(text):
    with pytest.raises(ValueError, match="ats capacity"):
        parse_capacity(text)


def test_capacity_option_reaches_set_ats(model, images):
    parser = argparse.ArgumentParser(prog="cmd")
    add_ats_arguments(parser)
    settings = settings_from_args(parser.parse_args(["--ats-capacity", "20"]))
    assert settings == {"capacity": 20}
    model.set_ats(**settings)
    assert run(model, images).token_mask.shape[1] == 20


def test_merge_option_reaches_set_ats(model, capsys):
    parser = argparse.ArgumentParser(prog="cmd")
    add_ats_arguments(parser)
    assert settings_from_args(parser.parse_args(["--ats-merge", "0.8"])) == {"merge": 0.8}
    assert settings_from_args(parser.parse_args(["--ats-merge", "off"])) == {"merge": None}
    for bad in ("1.5", "yes"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--ats-merge", bad])
    assert "write 'off' or a cosine similarity in [-1, 1]" in capsys.readouterr().err
    model.set_ats(merge=-1)
    assert model.config.ats_merge == -1.0
    for bad in ("yes", True, 2.0):
        with pytest.raises(ValueError, match=r"ats_merge=.* must be None .* or the least cosine similarity"):
            model.set_ats(merge=bad)
