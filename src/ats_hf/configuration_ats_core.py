"""What every ATS configuration shares: the settings value (`AtsSettings`), the config fields and their checks
(`AtsConfigMixin`), and the token geometry.

Self-contained for the Hub: imports only the standard library, transformers and the algorithm beside it
(`.ats_sampling`, for the sampler names). Each family's configuration file (`configuration_ats_vit.py`, ...)
subclasses its upstream config with `AtsConfigMixin` first.
"""

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields

import transformers

# The layouts these files subclass (`layers`, `q_proj`/`k_proj`/`v_proj`, dataclass configs) exist from transformers
# 5.9 on; remote-code users with an older release get this error instead of a confusing one.
MIN_TRANSFORMERS_VERSION = (5, 9)
if tuple(int(part) for part in transformers.__version__.split(".")[:2]) < MIN_TRANSFORMERS_VERSION:
    raise ImportError(
        f"ATS models need transformers >= {'.'.join(map(str, MIN_TRANSFORMERS_VERSION))}, found "
        f"{transformers.__version__}: pip install -U 'transformers>=5.9,<6'"
    )

from .ats_sampling import ATS_SAMPLERS  # noqa: E402  (after the version check, which must come first)

ATS_CONFIG_DOC = r"""
    ats_layers (`list[int]`, *optional*):
        0-based indices of the encoder layers that sample tokens. Defaults to the official recipe scaled to depth:
        `num_hidden_layers // 4 .. num_hidden_layers - 1` (layers 3..11 of a 12-layer model). `[]` is the upstream
        model.
    ats_max_tokens (`int`, `float`, `list`, *optional*):
        K, the most tokens an ATS layer keeps, special tokens (CLS, ...) included. `None` (default): the model's
        initial token count, as in the paper (the kept count then follows from the sampling alone). An `int`: that
        many (at least the special tokens and one patch; an int above the initial token count keeps the same tokens
        as `None`). A `float` in (0, 1]: that fraction of the initial token count, rounded half up. A list gives one
        such value per ATS layer, in the order of `ats_layers` (stored in ascending layer order). With
        `ats_layers=[]` a list is kept as it is, unused, for when layers come back; `model.set_ats(layers=...)`
        with the same layers in any order keeps each layer's value.
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


@dataclass(frozen=True)
class AtsSettings(Mapping):
    """Where and how ATS samples tokens: one frozen value, checked when it is made (`ValueError` naming the bad value
    and the allowed range). The config fields, `model.set_ats`, the command lines and every tool use it.

    Fields (lists are accepted and kept as tuples; per-layer values follow the layers in ascending order):
        layers: 0-based indices of the ATS layers, sorted; `()` is the upstream model.
        max_tokens: K, the most tokens kept, special tokens included: None (all, the paper), an int, a fraction of
            the initial tokens in (0, 1], or one such value per layer.
        sampler: one of `ATS_SAMPLERS`.
        capacity: None (the adaptive mode), or the static mode's rows per ATS layer (int, fraction, or per layer).
        merge: None (dropped tokens leave), or the least cosine similarity in [-1, 1] at which one merges.

    What depends on the model (layer indices below its depth, ints above its special tokens) is checked by
    `check`. The value is also a read-only mapping of its fields, so `model.set_ats(**settings)` works.
    """

    layers: tuple[int, ...] = ()
    max_tokens: int | float | tuple[int | float | None, ...] | None = None
    sampler: str = "inverse_transform"
    capacity: int | float | tuple[int | float, ...] | None = None
    merge: float | None = None

    def __post_init__(self):
        layers = self.layers
        if not isinstance(layers, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) for i in layers):
            raise ValueError(f"ats_layers must be a list of layer indices (ints), got {layers!r}.")
        negative = [i for i in layers if i < 0]
        if negative:
            raise ValueError(
                f"ats_layers={_shown(layers)} has negative indices {_shown(negative)}; layers are 0-based."
            )
        if len(set(layers)) != len(layers):
            raise ValueError(f"ats_layers={_shown(layers)} has duplicate indices; each layer may be listed once.")
        # Model-free: at least one token (a family with no special token may keep one); `check` adds the model's S.
        max_tokens = _per_layer_values("ats_max_tokens", self.max_tokens, layers, True, num_special=None)
        sampler = self.sampler
        if not isinstance(sampler, str) or sampler not in ATS_SAMPLERS:
            raise ValueError(f"ats_sampler={sampler!r} is unknown; choose one of {', '.join(ATS_SAMPLERS)}.")
        capacity = self.capacity
        if capacity is not None:
            capacity = _per_layer_values("ats_capacity", capacity, layers, False, num_special=None)
        merge = self.merge
        number = not isinstance(merge, bool) and isinstance(merge, (int, float))
        if merge is not None and not (number and -1 <= merge <= 1):
            raise ValueError(
                f"ats_merge={merge!r} must be None (drop the tokens an ATS layer does not keep) or the least cosine "
                "similarity in [-1, 1] at which a dropped token merges into a kept one (-1: merge all)."
            )
        object.__setattr__(self, "layers", tuple(sorted(layers)))
        object.__setattr__(self, "max_tokens", max_tokens)
        object.__setattr__(self, "capacity", capacity)
        object.__setattr__(self, "merge", None if merge is None else float(merge))

    @classmethod
    def from_config(cls, config) -> "AtsSettings":
        """The settings in an ATS config's fields (not checked against its geometry: see `AtsConfigMixin`)."""
        return cls(config.ats_layers, config.ats_max_tokens, config.ats_sampler, config.ats_capacity, config.ats_merge)

    def replace(self, **changes) -> "AtsSettings":
        """A copy with some fields changed, checked anew. Per-layer values left out when the layers change follow the
        layers in ascending order: the same layers listed in any order keep their values."""
        layers = changes.get("layers")
        if isinstance(layers, (list, tuple)) and all(isinstance(i, int) for i in layers):
            rank = {layer: position for position, layer in enumerate(sorted(layers))}
            for name in ("max_tokens", "capacity"):
                kept = getattr(self, name)
                if name not in changes and isinstance(kept, tuple) and len(kept) == len(layers):
                    changes[name] = [kept[rank[layer]] for layer in layers]
        return AtsSettings(**{**self.to_dict(), **changes})

    def check(self, num_layers: int, num_special: int = 1) -> "AtsSettings":
        """These settings, after checking them for a model of `num_layers` layers whose first `num_special` tokens
        are always kept; `ValueError` naming the bad value otherwise."""
        bad = [i for i in self.layers if i >= num_layers]
        if bad:
            raise ValueError(
                f"ats_layers={_shown(self.layers)} has indices {_shown(bad)} outside 0..{num_layers - 1} "
                f"(num_hidden_layers={num_layers})."
            )
        _per_layer_values("ats_max_tokens", self.max_tokens, self.layers, True, num_special)
        if self.capacity is not None:
            _per_layer_values("ats_capacity", self.capacity, self.layers, False, num_special)
        return self

    @property
    def static(self) -> bool:
        """Whether the shapes are fixed (the static mode, or no ATS layers): torch.compile(fullgraph), ONNX."""
        return self.capacity is not None or not self.layers

    def resolve(self, num_reference_tokens: int, num_special: int = 1) -> dict[int, tuple[int, int | None]]:
        """`{layer: (K, capacity)}` for a model whose embeddings output `num_reference_tokens` tokens (special tokens
        included): counts as ints (an int K above the token count is the token count), the capacity at most K and
        None in the adaptive mode. `ValueError` when a fraction resolves to too few tokens."""
        max_tokens = _resolve_counts("ats_max_tokens", self.max_tokens, self.layers, num_reference_tokens, num_special)
        if self.capacity is None:
            return {layer: (k, None) for layer, k in max_tokens.items()}
        capacity = _resolve_counts("ats_capacity", self.capacity, self.layers, num_reference_tokens, num_special)
        return {layer: (k, min(capacity[layer], k)) for layer, k in max_tokens.items()}

    def to_dict(self) -> dict:
        """The fields with lists for tuples (JSON, config fields)."""
        return {field.name: _listed(getattr(self, field.name)) for field in fields(self)}

    def __getitem__(self, name: str):
        if name not in _SETTING_NAMES:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(_SETTING_NAMES)

    def __len__(self) -> int:
        return len(_SETTING_NAMES)


_SETTING_NAMES = tuple(field.name for field in fields(AtsSettings))


def _listed(value):
    return list(value) if isinstance(value, tuple) else value


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


def num_input_tokens(config, image_size: int | tuple[int, ...] | None = None) -> int:
    """Tokens entering the first encoder layer, special tokens included, for an input of `image_size` (default: the
    config's): an image's (height, width); a video family's (height, width) at its configured frame count, or
    (frames, height, width). An ATS config answers for its family (`ats_num_input_tokens`; asked by name, since the
    code saved for remote-code users may be loaded twice); another config is read as a ViT's."""
    if hasattr(config, "ats_num_input_tokens"):
        return config.ats_num_input_tokens(image_size)
    return math.prod(patch_grid(config, image_size)) + num_special_tokens(config)


def input_size(pixel_values) -> tuple[int, ...]:
    """The size `num_input_tokens` reads from a batch: (height, width) of images (B, C, H, W), (frames, height,
    width) of videos (B, T, C, H, W)."""
    shape = tuple(pixel_values.shape)
    return shape[-2:] if len(shape) == 4 else (shape[1], *shape[-2:])


def patch_values(config) -> int:
    """Input values one patch token embeds (channels x patch pixels; a video tubelet's frames too), so that the patch
    embedding costs `patch_values(config) * hidden_size` multiply-adds per patch token. An ATS config answers for
    its family (`ats_patch_values`); another config is read as a ViT's."""
    if hasattr(config, "ats_patch_values"):
        return config.ats_patch_values
    return config.num_channels * math.prod(patch_shape(config))


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
    """The ATS fields (documented in `ATS_CONFIG_DOC`), read and written as one `AtsSettings` value. A family config
    lists it first among its bases and says which upstream `model_type`s it accepts as a base
    (`ats_base_model_types`)."""

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
        """Leading tokens that are always kept and never scored (1: CLS). Families with more, or none (VideoMAE: its
        mean query scores), override this."""
        return 1

    def ats_patch_grid(self, input_size: int | tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Patch tokens along each axis of an input of `input_size` (default: the config's): (rows, columns) of an
        image of (height, width). A video family adds its time axis in front."""
        return patch_grid(self, input_size)

    def ats_num_input_tokens(self, input_size: int | tuple[int, ...] | None = None) -> int:
        """Tokens entering the first encoder layer for an input of `input_size` (see `ats_patch_grid`): the patch
        tokens and the special tokens."""
        return math.prod(self.ats_patch_grid(input_size)) + self.ats_num_special_tokens

    @property
    def ats_patch_values(self) -> int:
        """Input values one patch token embeds: channels x patch height x patch width (a video tubelet: x frames)."""
        return self.num_channels * math.prod(patch_shape(self))

    def __post_init__(self, **kwargs):
        if self.ats_layers is None:
            self.ats_layers = default_ats_layers(self.num_hidden_layers)
        super().__post_init__(**kwargs)
        self.check_ats_settings()

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """transformers' `from_dict`; the fields that `from_pretrained(..., ats_layers=...)` sets after construction
        are checked too."""
        result = super().from_dict(config_dict, **kwargs)
        (result[0] if isinstance(result, tuple) else result).check_ats_settings()
        return result

    @property
    def ats_settings(self) -> AtsSettings:
        """The settings in the fields now, checked for this model (`ValueError` naming a bad value)."""
        return AtsSettings.from_config(self).check(self.num_hidden_layers, self.ats_num_special_tokens)

    def apply_ats_settings(self, settings: AtsSettings) -> None:
        """Write `settings` into the fields, after checking them for this model (nothing changes on error)."""
        settings.check(self.num_hidden_layers, self.ats_num_special_tokens)
        for name, value in settings.to_dict().items():
            setattr(self, f"ats_{name}", value)

    def check_ats_settings(self) -> None:
        """Normalise the fields in place (sorted layers, per-layer lists in layer order); `ValueError` naming any bad
        value and what is allowed."""
        self.apply_ats_settings(self.ats_settings)

    def resolve_ats_max_tokens(self, num_reference_tokens: int) -> dict[int, int]:
        """K of every ATS layer, `{layer_index: K}`, for `num_reference_tokens` initial tokens (see
        `AtsSettings.resolve`)."""
        resolved = self.ats_settings.resolve(num_reference_tokens, self.ats_num_special_tokens)
        return {layer: k for layer, (k, _) in resolved.items()}

    def resolve_ats_capacity(self, num_reference_tokens: int) -> dict[int, int] | None:
        """Rows each ATS layer outputs in the static mode, `{layer_index: capacity}` (each at most the layer's K), or
        None in the adaptive mode."""
        if self.ats_capacity is None:
            return None
        resolved = self.ats_settings.resolve(num_reference_tokens, self.ats_num_special_tokens)
        return {layer: capacity for layer, (_, capacity) in resolved.items()}


def _per_layer_values(field: str, values, layers, allow_none: bool, num_special: int | None = 1):
    """A token count setting (one value, or one per layer in the order of `layers`) checked; a sequence comes back
    as a tuple in ascending layer order."""
    if not isinstance(values, (list, tuple)):
        _check_count_value(field, values, allow_none, num_special)
        return values
    if layers and len(values) != len(layers):  # with no ATS layer, per-layer values wait, unused, for layers to come
        raise ValueError(
            f"{field}={list(values)} has {len(values)} entries but ats_layers={list(layers)} has {len(layers)}; give "
            "one value per ATS layer, or a single value for all."
        )
    for value in values:
        _check_count_value(field, value, allow_none, num_special)
    if not layers:
        return tuple(values)
    return tuple(value for _, value in sorted(zip(layers, values, strict=True)))


def _check_count_value(field: str, value, allow_none: bool, num_special: int | None) -> None:
    least = (num_special or 0) + 1
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        allowed = ("None, " if allow_none else "") + "an int (a token count) or a float in (0, 1]"
        raise ValueError(f"{field} entries must be {allowed}; got {value!r}.")
    if isinstance(value, int) and value < least:
        raise ValueError(
            f"{field}={value} is too small: an int must be >= {least} ({_kept_at_least(num_special)})."
        )
    if isinstance(value, float) and not 0.0 < value <= 1.0:
        raise ValueError(f"{field}={value} is outside (0, 1]: a float is a fraction of the initial tokens.")


def _shown(values, most: int = 8) -> str:
    """A list for an error message, its middle elided when long (a layer range typed by mistake can be hundreds)."""
    values = list(values)
    if len(values) <= most:
        return str(values)
    return f"[{', '.join(map(str, values[:3]))}, ..., {', '.join(map(str, values[-2:]))}] ({len(values)} values)"


def _kept_at_least(num_special: int | None) -> str:
    """What the least count keeps, in words (None: the model, and so its special tokens, is not known yet)."""
    if num_special is None:
        return "one patch token), plus the model's special tokens (CLS, and any distillation token or registers"
    return f"the {num_special} special token(s) and one patch token" if num_special else "one patch token"


def _resolve_counts(field: str, values, layers, num_reference_tokens: int, num_special: int) -> dict[int, int]:
    """`{layer: tokens}` for a token count setting: None = all, a fraction rounded half up, an int (at most all)."""
    if not layers:
        return {}
    if not isinstance(values, tuple):
        values = [values] * len(layers)
    resolved = {}
    for layer_index, value in zip(layers, values, strict=True):
        if value is None:
            tokens = num_reference_tokens
        elif isinstance(value, float):
            tokens = math.floor(value * num_reference_tokens + 0.5)
        else:
            tokens = min(value, num_reference_tokens)
        if tokens <= num_special:
            raise ValueError(
                f"{field}={value!r} for layer {layer_index} resolves to {tokens} token(s) of {num_reference_tokens}; "
                f"an ATS layer must keep at least {num_special + 1} ({_kept_at_least(num_special)})."
            )
        resolved[layer_index] = tokens
    return resolved


__all__ = [
    "ATS_CONFIG_DOC",
    "ATS_SAMPLERS",
    "AtsBaseModelTypesMixin",
    "AtsConfigMixin",
    "AtsSettings",
    "default_ats_layers",
    "num_input_tokens",
    "num_special_tokens",
    "patch_grid",
    "patch_shape",
    "patch_values",
]
