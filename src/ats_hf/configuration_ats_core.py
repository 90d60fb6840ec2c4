"""What every ATS configuration shares: the ATS fields, their checks, and the token geometry.

Self-contained for the Hub: imports only the standard library and transformers. Each family's configuration file
(`configuration_ats_vit.py`, ...) subclasses its upstream config with `AtsConfigMixin` first.
"""

import math
from dataclasses import dataclass

import transformers

# The layouts these files subclass (`layers`, `q_proj`/`k_proj`/`v_proj`, dataclass configs) exist from transformers
# 5.9 on; remote-code users with an older release get this error instead of a confusing one.
MIN_TRANSFORMERS_VERSION = (5, 9)
if tuple(int(part) for part in transformers.__version__.split(".")[:2]) < MIN_TRANSFORMERS_VERSION:
    raise ImportError(
        f"ATS models need transformers >= {'.'.join(map(str, MIN_TRANSFORMERS_VERSION))}, found "
        f"{transformers.__version__}: pip install -U 'transformers>=5.9,<6'"
    )

ATS_SAMPLERS = ("inverse_transform", "top_k", "random")

ATS_CONFIG_DOC = r"""
    ats_layers (`list[int]`, *optional*):
        0-based indices of the encoder layers that sample tokens. Defaults to the official recipe scaled to depth:
        `num_hidden_layers // 4 .. num_hidden_layers - 1` (layers 3..11 of a 12-layer model). `[]` is the upstream
        model.
    ats_max_tokens (`int`, `float`, `list`, *optional*):
        K, the most tokens an ATS layer keeps, special tokens (CLS, ...) included. `None` (default): the model's
        initial token count, as in the paper (the kept count then follows from the sampling alone). An `int`: that
        many (at least the special tokens and one patch). A `float` in (0, 1]: that fraction of the initial token
        count, rounded half up. A list gives one such value per ATS layer.
    ats_sampler (`str`, *optional*, defaults to `"inverse_transform"`):
        `"inverse_transform"` (the paper's ATS), or the paper's ablation baselines `"top_k"` (the highest-scoring
        patch tokens) and `"random"` (uniformly random patch tokens).
    ats_capacity (`int`, `float`, `list`, *optional*):
        `None` (default): the adaptive mode, where each ATS layer keeps as many rows as the batch's largest kept
        count (one device-to-host read per layer). Set, it selects the static mode: each ATS layer outputs exactly
        its capacity of rows, special tokens included (an `int`, a fraction of the initial token count in (0, 1],
        or one per ATS layer; cut to the layer's K), real kept tokens packed to the front and the rest masked, with
        no host read and no data-dependent shape, for torch.compile(fullgraph), torch.export and ONNX. Selection is
        the adaptive one whenever an image's kept count fits; an image that samples more keeps its capacity's
        worth of highest-scoring sampled tokens.
    ats_merge (`float`, *optional*):
        `None` (default): dropped tokens leave the sequence (the paper's ATS). A float in [-1, 1]: each token an ATS
        layer drops is merged into the kept patch token whose key is most similar (cosine, heads concatenated;
        special tokens never receive anything) when that similarity is at least this value, and dropped otherwise
        (-1 merges every dropped token). Merged rows are size-weighted means of the layer inputs, sizes add up, and
        later attention is proportional (each key's logit gets `log(size)`), so a merged token weighs like the
        tokens it stands for. Needs `eager` or `sdpa` attention.
    ats_dense_output (`bool`, *optional*, defaults to `False`):
        `False`: `last_hidden_state` holds the kept tokens packed to the front of each row (see `token_mask`).
        `True`: it is on the full input token grid, `(batch_size, num_input_tokens, hidden_size)`, each dropped
        token carrying its value from the last layer that computed it (then the final norm), for feature extraction
        and dense heads. Heads that pool (CLS, mean of patches) still read only the kept tokens.
"""


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


def num_special_tokens(config) -> int:
    """Tokens before the patches that ATS never drops nor scores (CLS first); 1 for a config without ATS fields."""
    return getattr(config, "ats_num_special_tokens", 1)


def num_input_tokens(config, image_size: int | tuple[int, int] | None = None) -> int:
    """Tokens entering the first encoder layer, special tokens included, for `image_size` (default: the config's)."""
    rows, columns = patch_grid(config, image_size)
    return rows * columns + num_special_tokens(config)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class AtsBaseModelTypesMixin:
    """Reads a config whose `model_type` is one of the upstream types in `ats_base_model_types` as this ATS config
    (listed before the upstream config class)."""

    ats_base_model_types = ()

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """Read a config; an upstream config of a base type (`ats_base_model_types`) is accepted as an ATS one."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") in cls.ats_base_model_types:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs


@dataclass(kw_only=True, repr=False)
class AtsConfigMixin(AtsBaseModelTypesMixin):
    """The ATS fields (documented in `ATS_CONFIG_DOC`) and their checks. A family config lists it first among its
    bases and says which upstream `model_type`s it accepts as a base (`ats_base_model_types`)."""

    ats_layers: list[int] | tuple[int, ...] | None = None
    ats_max_tokens: int | float | list[int | float | None] | tuple[int | float | None, ...] | None = None
    ats_sampler: str = "inverse_transform"
    ats_capacity: int | float | list[int | float] | tuple[int | float, ...] | None = None
    ats_merge: float | None = None
    ats_dense_output: bool = False

    # Per-image, variable-width outputs that Trainer should not gather during evaluation.
    keys_to_ignore_at_inference = ["sampled_token_indices", "token_mask", "hidden_states", "attentions"]

    @property
    def ats_num_special_tokens(self) -> int:
        """Leading tokens that are always kept and never scored (1: CLS). Families with more override this."""
        return 1

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
        self.ats_capacity = self.validated_ats_capacity(self.ats_layers, self.ats_capacity)
        self.ats_merge = self.validated_ats_merge(self.ats_merge)

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

        max_tokens = _per_layer_values("ats_max_tokens", max_tokens, layers, True, self.ats_num_special_tokens)
        if not isinstance(sampler, str) or sampler not in ATS_SAMPLERS:
            raise ValueError(f"ats_sampler={sampler!r} is unknown; choose one of {', '.join(ATS_SAMPLERS)}.")
        return sorted(layers), max_tokens, sampler

    @staticmethod
    def validated_ats_merge(merge) -> float | None:
        """The merge threshold, checked: None (drop) or a cosine similarity in [-1, 1]."""
        if merge is None:
            return None
        if isinstance(merge, bool) or not isinstance(merge, (int, float)) or not -1.0 <= merge <= 1.0:
            raise ValueError(
                f"ats_merge={merge!r} must be None (drop the tokens an ATS layer does not keep) or the least cosine "
                "similarity in [-1, 1] at which a dropped token merges into a kept one (-1: merge all)."
            )
        return float(merge)

    def validated_ats_capacity(self, layers, capacity):
        """The static mode's capacity checked for `layers` (already validated) and normalised; None = adaptive."""
        if capacity is None:
            return None
        return _per_layer_values("ats_capacity", capacity, layers, False, self.ats_num_special_tokens)

    def resolve_ats_max_tokens(self, num_reference_tokens: int) -> dict[int, int]:
        """K of every ATS layer, for a model whose embeddings output `num_reference_tokens` tokens (specials
        included). Returns `{layer_index: K}`. Raises `ValueError` when a fraction resolves to too few tokens."""
        return _resolve_counts(
            "ats_max_tokens", self.ats_max_tokens, self.ats_layers, num_reference_tokens, self.ats_num_special_tokens
        )

    def resolve_ats_capacity(self, num_reference_tokens: int) -> dict[int, int] | None:
        """Rows each ATS layer outputs in the static mode, `{layer_index: capacity}` (each at most the layer's K), or
        None in the adaptive mode."""
        if self.ats_capacity is None:
            return None
        capacity = _resolve_counts(
            "ats_capacity", self.ats_capacity, self.ats_layers, num_reference_tokens, self.ats_num_special_tokens
        )
        max_tokens = self.resolve_ats_max_tokens(num_reference_tokens)
        return {layer: min(rows, max_tokens[layer]) for layer, rows in capacity.items()}


def _per_layer_values(field: str, values, layers, allow_none: bool, num_special: int):
    """A token count setting (one value, or one per layer in the order of `layers`) checked; a list comes back in
    ascending layer order."""
    if not isinstance(values, (list, tuple)):
        _check_count_value(field, values, allow_none, num_special)
        return values
    if len(values) != len(layers):
        raise ValueError(
            f"{field}={list(values)} has {len(values)} entries but ats_layers={list(layers)} has {len(layers)}; give "
            "one value per ATS layer, or a single value for all."
        )
    for value in values:
        _check_count_value(field, value, allow_none, num_special)
    return [value for _, value in sorted(zip(layers, values, strict=True))]


def _check_count_value(field: str, value, allow_none: bool, num_special: int) -> None:
    least = num_special + 1
    allowed = ("None, " if allow_none else "") + f"an int >= {least} or a float in (0, 1]"
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} entries must be {allowed}; got {value!r}.")
    if isinstance(value, int) and value < least:
        raise ValueError(
            f"{field}={value} is too small: an int must be >= {least} (the {num_special} special token(s) and one "
            "patch token)."
        )
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise ValueError(f"{field}={value} is outside (0, 1]: a float is a fraction of the initial tokens.")


def _resolve_counts(field: str, values, layers, num_reference_tokens: int, num_special: int) -> dict[int, int]:
    """`{layer: tokens}` for a token count setting: None = all, a fraction rounded half up, or an int."""
    if not isinstance(values, list):
        values = [values] * len(layers)
    resolved = {}
    for layer_index, value in zip(layers, values, strict=True):
        if value is None:
            tokens = num_reference_tokens
        elif isinstance(value, float):
            tokens = math.floor(value * num_reference_tokens + 0.5)
        else:
            tokens = value
        if tokens <= num_special:
            raise ValueError(
                f"{field}={value!r} for layer {layer_index} resolves to {tokens} token(s) of {num_reference_tokens}; "
                f"an ATS layer must keep at least {num_special + 1} (the {num_special} special token(s) and one patch "
                "token)."
            )
        resolved[layer_index] = tokens
    return resolved


__all__ = [
    "ATS_CONFIG_DOC",
    "ATS_SAMPLERS",
    "AtsBaseModelTypesMixin",
    "AtsConfigMixin",
    "default_ats_layers",
    "num_input_tokens",
    "num_special_tokens",
    "patch_grid",
    "patch_shape",
]
