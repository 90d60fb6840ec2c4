import subprocess
import sys

import pytest
import torch
from conftest import tiny_config
from transformers import AutoConfig, ViTConfig

from ats_hf import AtsViTConfig, AtsViTForImageClassification, configuration_ats_core
from ats_hf.configuration_ats_core import num_input_tokens, patch_grid


def test_defaults_follow_the_official_recipe():
    assert AtsViTConfig().ats_layers == list(range(3, 12))
    assert AtsViTConfig(num_hidden_layers=8).ats_layers == list(range(2, 8))
    config = AtsViTConfig()
    assert config.ats_max_tokens is None and config.ats_sampler == "inverse_transform"
    assert config.resolve_ats_max_tokens(197) == {i: 197 for i in range(3, 12)}


def test_max_tokens_resolution():
    config = tiny_config(ats_layers=[0, 2, 3], ats_max_tokens=[0.5, 10, None])
    assert config.resolve_ats_max_tokens(197) == {0: 99, 2: 10, 3: 197}
    assert tiny_config(ats_max_tokens=1.0).resolve_ats_max_tokens(65) == {1: 65, 2: 65, 3: 65}
    with pytest.raises(ValueError, match=r"ats_max_tokens=0\.005 for layer 1 resolves to 0"):
        tiny_config(ats_max_tokens=0.005).resolve_ats_max_tokens(65)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(ats_layers=[1, 4]), r"indices \[4\] outside 0\.\.3"),
        (dict(ats_layers=list(range(2, 100))), r"ats_layers=\[2, 3, 4, \.\.\., 98, 99\] \(98 values\) has indices "
         r"\[4, 5, 6, \.\.\., 98, 99\] \(96 values\) outside 0\.\.3 \(num_hidden_layers=4\)\.$"),
        (dict(ats_layers=[-1]), r"ats_layers=\[-1\] has negative indices \[-1\]; layers are 0-based"),
        (dict(ats_layers=[1, 1]), "duplicate"),
        (dict(ats_max_tokens=1), r"ats_max_tokens=1 is too small: an int must be >= 2"),
        # Below any model's least (checked before the model's special tokens are known): says they come on top.
        (dict(ats_capacity=0), r"ats_capacity=0 is too small: an int must be >= 1 \(one patch token\), plus the "
         r"model's special tokens \(CLS, and any distillation token or registers\)\."),
        (dict(ats_max_tokens=0.0), r"ats_max_tokens=0\.0 is outside \(0, 1\]"),
        (dict(ats_max_tokens=1.5), r"ats_max_tokens=1\.5 is outside \(0, 1\]"),
        (dict(ats_max_tokens=[10, 20]), r"ats_max_tokens=\[10, 20\] has 2 entries but ats_layers=\[1, 2, 3\] has 3"),
        (dict(ats_sampler="nearest"), r"ats_sampler='nearest' is unknown; choose one of inverse_transform, top_k"),
    ],
)
def test_validation_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_validation_of_overrides_at_model_construction():
    config = tiny_config()
    config.ats_layers = [7]
    with pytest.raises(ValueError, match=r"ats_layers=\[7\]"):
        AtsViTForImageClassification(config)


def test_round_trip(tmp_path):
    config = tiny_config(ats_layers=[3, 1], ats_max_tokens=[0.5, 12], ats_sampler="top_k")
    assert config.ats_layers == [1, 3]
    config.save_pretrained(tmp_path)
    loaded = AtsViTConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert type(AutoConfig.from_pretrained(tmp_path)) is AtsViTConfig


def test_plain_vit_config_loads(tmp_path, caplog):
    ViTConfig(num_hidden_layers=6, hidden_size=48, num_attention_heads=4).save_pretrained(tmp_path)
    config = AtsViTConfig.from_pretrained(tmp_path, ats_layers=[2, 5], ats_max_tokens=0.7)
    assert config.model_type == "ats_vit" and config.hidden_size == 48
    assert config.ats_layers == [2, 5] and config.ats_max_tokens == 0.7
    assert "model of type `vit`" not in caplog.text
    assert AtsViTConfig.from_pretrained(tmp_path).ats_layers == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("image_size, patch_size", [(32, 4), ((32, 48), (4, 8)), ((40, 24), 8)])
def test_token_count_from_the_geometry_matches_the_model(image_size, patch_size):
    config = tiny_config(image_size=image_size, patch_size=patch_size, ats_layers=[])
    model = AtsViTForImageClassification(config).eval()
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    with torch.no_grad():
        output = model(torch.randn(2, 3, height, width))
    assert output.num_tokens[0, 0] == num_input_tokens(config) == patch_grid(config)[0] * patch_grid(config)[1] + 1
    assert num_input_tokens(config, image_size=(height * 2, width)) == 2 * (num_input_tokens(config) - 1) + 1


def test_remote_code_with_a_too_old_transformers_says_which_version_it_needs():
    """Hub users load the configuration file on their own transformers; before 5.9 the ViT layout differs."""
    script = f"""
import importlib.util, transformers
transformers.__version__ = "5.8.1"
spec = importlib.util.spec_from_file_location("configuration_ats_core", {configuration_ats_core.__file__!r})
try:
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
except ImportError as error:
    print(error)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "ATS models need transformers >= 5.9, found 5.8.1" in result.stdout, result.stderr
