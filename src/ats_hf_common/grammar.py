"""The one grammar for ATS settings on command lines and in scripts: parsing and formatting, standard library only
(so that a command checks its options before torch loads).

Grammar (every command and the example script take the same forms; values may be separated by commas, spaces
or both, so `--ats-layers 3-11`, `--ats-layers 3 4 5` and `--ats-layers 1,3,5-7` all work):

    layers      "none" (plain ViT) | ITEM ("," ITEM)*     ITEM = INT | INT "-" INT (inclusive, first <= last)
    max_tokens  VALUE ("," VALUE)*                        VALUE = "all" | INT >= 1 | FRACTION in (0, 1]
                one value for every ATS layer, or one per ATS layer
    sampler     "inverse_transform" | "top_k" | "random"
    capacity    "adaptive" | COUNT ("," COUNT)*              COUNT = INT >= 1 | FRACTION in (0, 1]
                the static mode's rows per ATS layer (one, or one per ATS layer); "adaptive" switches it off
    merge       "off" | SIMILARITY in [-1, 1]: merge each dropped token into its most similar kept one when at least
                that similar (-1: all), or drop them ("off", the paper)

Whether the layers exist, the number of K values fits and an int count keeps more than the model's special tokens
(at least 2 with CLS; 1 is allowed for a family without special tokens, VideoMAE) is checked against the model by
`AtsSettings.check`.
"""

from collections.abc import Iterable, Mapping, Sequence

# The sampler names of `ats_hf.ats_sampling.ATS_SAMPLERS` (a test keeps them equal; importing that module would load
# torch).
ATS_SAMPLERS = ("inverse_transform", "top_k", "random")

MaxTokens = int | float | Sequence[int | float | None] | None

LAYERS_HELP = "ATS layers, 0-based: '3-11', '3 4 5', '1,3,5-7' or 'none' (plain ViT)"
MAX_TOKENS_HELP = ("K, most tokens kept incl. CLS: 'all', an int (> the special tokens) or a fraction in (0, 1]; one, "
                   "or one per layer")
SAMPLER_HELP = f"token sampler: {', '.join(ATS_SAMPLERS)}"
MERGE_HELP = ("merge each token an ATS layer drops into its most similar kept token when their key cosine "
              "similarity is at least SIM (-1: all), or 'off' to drop them as the paper does")
CAPACITY_HELP = ("static mode: rows each ATS layer allocates, incl. CLS: an int (> the special tokens) or a fraction "
                 "in (0, 1]; one, or one per layer; 'adaptive' for the adaptive mode")


def _parts(text: str | Iterable[str]) -> list[str]:
    """'1, 3 5-7' or ['1,3', '5-7'] -> ['1', '3', '5-7']."""
    joined = text if isinstance(text, str) else " ".join(text)
    return [part for part in joined.replace(",", " ").split() if part]


def parse_layers(text: str | Iterable[str]) -> list[int]:
    """'3-11' -> [3, ..., 11]; '1,3,5-7' -> [1, 3, 5, 6, 7]; 'none' -> [] (plain ViT). ValueError otherwise."""
    parts = _parts(text)
    shown = text if isinstance(text, str) else " ".join(text)
    if not parts:
        raise ValueError("ats layers: nothing given; write 'none' for no ATS layers, or e.g. '3-11'.")
    if [part.lower() for part in parts] == ["none"]:
        return []
    layers = []
    for part in parts:
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(
                f"ats layers {shown!r}: {part!r} is not a layer index (int >= 0) or an inclusive range like '3-11'."
            )
        start, stop = int(first), int(last) if dash else int(first)
        if stop < start:
            raise ValueError(f"ats layers {shown!r}: the range {part!r} is reversed; write '{stop}-{start}'.")
        layers.extend(range(start, stop + 1))
    return layers


def parse_max_tokens(text: str | Iterable[str]) -> MaxTokens:
    """'all' -> None; '0.5' -> a fraction; '100' -> a count; several values -> one per ATS layer."""
    parts = _parts(text)
    shown = text if isinstance(text, str) else " ".join(text)
    if not parts:
        raise ValueError("ats max tokens: nothing given; write 'all', an int >= 1 or a fraction in (0, 1].")
    values = [_max_tokens_value(part, shown) for part in parts]
    return values[0] if len(values) == 1 else values


def _max_tokens_value(part: str, shown: str) -> int | float | None:
    if part.lower() == "all":
        return None
    value = _count(part)
    if value is None:
        raise ValueError(f"ats max tokens {shown!r}: {part!r} is not 'all', an int >= 1 or a fraction in (0, 1].")
    return value


def parse_capacity(text: str | Iterable[str]) -> int | float | list[int | float] | None:
    """'adaptive' -> None (the adaptive mode); '0.5' -> a fraction; '64' -> rows; several -> one per ATS layer."""
    parts = _parts(text)
    shown = text if isinstance(text, str) else " ".join(text)
    if [part.lower() for part in parts] == ["adaptive"]:
        return None
    values = [_count(part) for part in parts]
    if not parts or None in values:
        raise ValueError(
            f"ats capacity {shown!r}: write 'adaptive', or rows as an int >= 1 or a fraction in (0, 1], one or one "
            "per ATS layer."
        )
    return values[0] if len(values) == 1 else values


def parse_merge(text: str) -> float | None:
    """'off' -> None (dropped tokens leave); a cosine similarity in [-1, 1] -> the merge threshold."""
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not -1.0 <= value <= 1.0:
        raise ValueError(f"ats merge {text!r}: write 'off' or a cosine similarity in [-1, 1] (e.g. 0.8; -1: all).")
    return value


def _count(part: str) -> int | float | None:
    """A token count: an int >= 1 (the model checks it against its special tokens) or a fraction in (0, 1]; None if
    `part` is neither."""
    try:
        value = float(part) if any(c in part for c in ".eE") else int(part)
    except ValueError:
        return None
    if (isinstance(value, int) and value >= 1) or (isinstance(value, float) and 0.0 < value <= 1.0):
        return value
    return None


def parse_sampler(text: str) -> str:
    """A sampler name, checked."""
    if text not in ATS_SAMPLERS:
        raise ValueError(f"ats sampler {text!r} is unknown; choose one of {', '.join(ATS_SAMPLERS)}.")
    return text


def format_settings(settings: Mapping) -> str:
    """Settings (an `AtsSettings` or its dict) in the grammar above, e.g. 'layers 3-11, K all, inverse_transform',
    with the static mode's capacity and the merge threshold when set."""
    text = f"layers {format_layers(settings['layers'])}, K {format_max_tokens(settings['max_tokens'])}, "
    text += settings["sampler"]
    if settings.get("capacity") is not None:
        text += f", capacity {format_max_tokens(settings['capacity'])}"
    if settings.get("merge") is not None:
        text += f", merge >= {settings['merge']:g}"
    return text


def format_layers(layers: Sequence[int]) -> str:
    """[3, 4, 5, 7] -> '3-5,7'; [] -> 'none' (parse_layers reads it back)."""
    if not layers:
        return "none"
    runs = []
    for layer in layers:
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def format_max_tokens(max_tokens: MaxTokens) -> str:
    """None -> 'all'; [0.5, None] -> '0.5,all' (parse_max_tokens reads it back)."""
    values = max_tokens if isinstance(max_tokens, list | tuple) else [max_tokens]
    return ",".join("all" if value is None else str(value) for value in values)


__all__ = [
    "ATS_SAMPLERS",
    "CAPACITY_HELP",
    "LAYERS_HELP",
    "MAX_TOKENS_HELP",
    "MERGE_HELP",
    "SAMPLER_HELP",
    "format_layers",
    "format_max_tokens",
    "format_settings",
    "parse_capacity",
    "parse_layers",
    "parse_max_tokens",
    "parse_merge",
    "parse_sampler",
]
