"""Configuration of ATS-ViT: a ViT whose chosen encoder layers keep an adaptive subset of tokens.

Self-contained for the Hub: imports only the standard library, huggingface_hub and transformers.
"""

import math

import transformers
from huggingface_hub.dataclasses import strict
from transformers import ViTConfig

# The ViT layout these files subclass (`layers`, `q_proj`/`k_proj`/`v_proj`/`o_proj`, dataclass configs) exists from
# transformers 5.9 on; remote-code users with an older release get this error instead of a confusing one.
MIN_TRANSFORMERS_VERSION = (5, 9)
if tuple(int(part) for part in transformers.__version__.split(".")[:2]) < MIN_TRANSFORMERS_VERSION:
    raise ImportError(
        f"ATS-ViT needs transformers >= {'.'.join(map(str, MIN_TRANSFORMERS_VERSION))}, found "
        f"{transformers.__version__}: pip install -U 'transformers>=5.9,<6'"
    )

ATS_SAMPLERS = ("inverse_transform", "top_k", "random")


def default_ats_layers(num_hidden_layers: int) -> list[int]:
    """The official recipe scaled to depth: layers `L // 4 .. L - 1` (3..11 of a 12-layer model)."""
    return list(range(num_hidden_layers // 4, num_hidden_layers))


def patch_shape(config) -> tuple[int, int]:
    """(height, width) of one patch in pixels, from an int or a pair `patch_size`."""
    return _pair(config.patch_size)


def patch_grid(config, image_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
    """(rows, columns) of patches for `image_size` (default: the config's), square or rectangular patches."""
    image_h, image_w = _pair(config.image_size if image_size is None else image_size)
    patch_h, patch_w = patch_shape(config)
    return image_h // patch_h, image_w // patch_w


def num_input_tokens(config, image_size: int | tuple[int, int] | None = None) -> int:
    """Tokens entering the first encoder layer, CLS included, for `image_size` (default: the config's)."""
    rows, columns = patch_grid(config, image_size)
    return rows * columns + 1


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@strict
class AtsViTConfig(ViTConfig):
    r"""
    A [`ViTConfig`] plus the settings of Adaptive Token Sampling (Fayyaz et al., ECCV 2022).

    ats_layers (`list[int]`, *optional*):
        0-based indices of the encoder layers that sample tokens. Defaults to the official recipe scaled to depth:
        `num_hidden_layers // 4 .. num_hidden_layers - 1` (layers 3..11 of a 12-layer model). `[]` is plain ViT.
    ats_max_tokens (`int`, `float`, `list`, *optional*):
        K, the most tokens an ATS layer keeps, CLS included. `None` (default): the model's initial token count, as in
        the paper (the kept count then follows from the sampling alone). An `int >= 2`: that many. A `float` in
        (0, 1]: that fraction of the initial token count, rounded half up. A list gives one such value per ATS layer.
    ats_sampler (`str`, *optional*, defaults to `"inverse_transform"`):
        `"inverse_transform"` (the paper's ATS), or the paper's ablation baselines `"top_k"` (the K-1
        highest-scoring patch tokens) and `"random"` (K-1 uniformly random patch tokens).
    """

    model_type = "ats_vit"
    # Per-image, variable-width outputs that Trainer should not gather during evaluation.
    keys_to_ignore_at_inference = ["sampled_token_indices", "token_mask", "hidden_states", "attentions"]

    ats_layers: list[int] | tuple[int, ...] | None = None
    ats_max_tokens: int | float | list[int | float | None] | tuple[int | float | None, ...] | None = None
    ats_sampler: str = "inverse_transform"

    def __post_init__(self, **kwargs):
        if self.ats_layers is None:
            self.ats_layers = default_ats_layers(self.num_hidden_layers)
        super().__post_init__(**kwargs)
        self.check_ats_settings()

    def check_ats_settings(self) -> None:
        """Normalise the ATS fields in place; raise `ValueError` naming any bad value and what is allowed."""
        self.ats_layers, self.ats_max_tokens, self.ats_sampler = self.validated_ats_settings(
            self.ats_layers, self.ats_max_tokens, self.ats_sampler
        )

    def validated_ats_settings(self, layers, max_tokens, sampler) -> tuple[list[int], object, str]:
        """The given ATS settings checked against this config's depth and normalised (layers sorted, lists for
        tuples), without changing the config. Raises `ValueError` naming the bad value and the allowed range."""
        if not isinstance(layers, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) for i in layers):
            raise ValueError(f"ats_layers must be a list of layer indices (ints), got {layers!r}.")
        bad = [i for i in layers if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(
                f"ats_layers={list(layers)} has indices {bad} outside 0..{self.num_hidden_layers - 1} "
                f"(num_hidden_layers={self.num_hidden_layers})."
            )
        if len(set(layers)) != len(layers):
            raise ValueError(f"ats_layers={list(layers)} has duplicate indices; each layer may be listed once.")

        if isinstance(max_tokens, (list, tuple)):
            if len(max_tokens) != len(layers):
                raise ValueError(
                    f"ats_max_tokens={list(max_tokens)} has {len(max_tokens)} entries but ats_layers={list(layers)} "
                    f"has {len(layers)}; give one value per ATS layer, or a single value for all."
                )
            for value in max_tokens:
                _check_max_tokens_value(value)
            # One value per layer, in the order of the layers as given; stored in ascending layer order.
            max_tokens = [value for _, value in sorted(zip(layers, max_tokens, strict=True))]
        else:
            _check_max_tokens_value(max_tokens)

        if not isinstance(sampler, str) or sampler not in ATS_SAMPLERS:
            raise ValueError(f"ats_sampler={sampler!r} is unknown; choose one of {', '.join(ATS_SAMPLERS)}.")
        return sorted(layers), max_tokens, sampler

    def resolve_ats_max_tokens(self, num_reference_tokens: int) -> dict[int, int]:
        """K of every ATS layer, for a model whose embeddings output `num_reference_tokens` tokens (CLS included).

        Returns `{layer_index: K}`. Raises `ValueError` when a fraction resolves to fewer than 2 tokens.
        """
        values = self.ats_max_tokens
        if not isinstance(values, list):
            values = [values] * len(self.ats_layers)
        resolved = {}
        for layer_index, value in zip(self.ats_layers, values, strict=True):
            if value is None:
                tokens = num_reference_tokens
            elif isinstance(value, float):
                tokens = math.floor(value * num_reference_tokens + 0.5)
            else:
                tokens = value
            if tokens < 2:
                raise ValueError(
                    f"ats_max_tokens={value!r} for layer {layer_index} resolves to {tokens} token(s) of "
                    f"{num_reference_tokens}; an ATS layer must keep at least 2 (CLS and one patch token)."
                )
            resolved[layer_index] = tokens
        return resolved

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """Read a config; a plain ViT config (`model_type="vit"`) is accepted as the base of an ATS model."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == "vit":
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs


def _check_max_tokens_value(value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"ats_max_tokens entries must be None, an int >= 2 or a float in (0, 1]; got {value!r}.")
    if isinstance(value, int) and value < 2:
        raise ValueError(f"ats_max_tokens={value} is too small: an int must be >= 2 (CLS and one patch token).")
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise ValueError(f"ats_max_tokens={value} is outside (0, 1]: a float is a fraction of the initial tokens.")


__all__ = ["ATS_SAMPLERS", "AtsViTConfig", "default_ats_layers", "num_input_tokens", "patch_grid", "patch_shape"]
