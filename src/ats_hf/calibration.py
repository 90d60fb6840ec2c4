"""Choosing the static mode's capacities from data (`ats-hf calibrate`).

The static mode (`ats_capacity`) allocates a fixed number of rows in every ATS layer. Too few rows truncate images
that sample more tokens (they keep their highest-scoring sampled tokens, which may cost accuracy); too many waste
compute on padding. `calibrate_capacity` runs the model in the adaptive mode on calibration images, proposes for
each ATS layer the `quantile` of the kept counts (CLS included, rounded up), and then runs the static mode at those
capacities to report what they cost and change: accuracy (dense accuracy too, with labels), real-token and executed
GMACs, truncated images.

    result = calibrate_capacity(model, pixel_values, labels, quantile=0.99)
    model.set_ats(result.settings)              # the static mode at the proposed capacities

    ats-hf calibrate --quantile 0.99 --output calibrated/    # a checkpoint with the capacities in its config
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ats_hf_common.grammar import format_layers, format_max_tokens, format_settings

from .configuration_ats_core import AtsSettings, num_input_tokens, num_special_tokens
from .flops import dense_gmacs, gmacs_per_image, static_gmacs
from .progress import Progress
from .reporting import format_grid

DEFAULT_QUANTILE = 0.99
DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class LayerCalibration:
    """One ATS layer: its K, the adaptive kept counts (CLS included) over the images, the proposed capacity, and
    how many images it truncates."""

    layer: int
    max_tokens: int  # K
    kept_mean: float
    kept_quantile: float  # the quantile of the kept counts (linear interpolation), before rounding up
    kept_max: int
    capacity: int
    over_capacity: int  # images whose adaptive kept count exceeds the capacity here
    truncated: int  # images whose static kept tokens here differ from the adaptive ones


@dataclass(frozen=True)
class CalibrationResult:
    """Proposed capacities and what they do on the calibration images.

    `predicted_truncated` counts images whose adaptive kept count exceeds the capacity in some ATS layer;
    `truncated` counts images whose kept tokens in the static mode differ from the adaptive ones in some ATS layer
    (an image truncated in one layer can also keep other tokens in the next ones). GMACs are per image:
    `*_gmacs` at the real kept tokens (the papers' convention), `executed_gmacs` what the static mode computes (its
    capacity rows, padding included, the same for every image), `dense_gmacs` the model without ATS.
    """

    quantile: float
    settings: AtsSettings  # the static mode at the proposed capacities (`model.set_ats(result.settings)`)
    layers: tuple[LayerCalibration, ...]
    num_images: int
    predicted_truncated: int
    truncated: int
    dense_accuracy: float | None  # top-1 %, None without labels
    adaptive_accuracy: float | None
    static_accuracy: float | None
    adaptive_gmacs: float
    static_gmacs: float
    executed_gmacs: float
    dense_gmacs: float
    notes: list[str] = field(default_factory=list)

    @property
    def capacity(self) -> dict[int, int]:
        """{layer: rows} proposed for every ATS layer."""
        return {entry.layer: entry.capacity for entry in self.layers}

    def to_dict(self) -> dict:
        return {
            "quantile": self.quantile,
            "settings": self.settings.to_dict(),
            "capacity": {str(layer): rows for layer, rows in self.capacity.items()},
            "layers": [vars(entry) for entry in self.layers],
            "num_images": self.num_images,
            "predicted_truncated": self.predicted_truncated,
            "truncated": self.truncated,
            "dense_accuracy": self.dense_accuracy,
            "adaptive_accuracy": self.adaptive_accuracy,
            "static_accuracy": self.static_accuracy,
            "adaptive_gmacs": self.adaptive_gmacs,
            "static_gmacs": self.static_gmacs,
            "executed_gmacs": self.executed_gmacs,
            "dense_gmacs": self.dense_gmacs,
            "notes": list(self.notes),
        }


@dataclass
class _Pass:
    """What one mode did on every image."""

    num_tokens: torch.Tensor  # (N, layers)
    kept: torch.Tensor | None  # (N, ATS layers, P) bool: kept patch positions per ATS layer; None without ATS
    correct: int


@torch.inference_mode()
def calibrate_capacity(
    model,
    pixel_values: torch.Tensor,
    labels: torch.Tensor | None = None,
    quantile: float = DEFAULT_QUANTILE,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> CalibrationResult:
    """Propose static-mode capacities for the model's ATS settings (layers, K, sampler) from calibration images.

    Args:
        model: an ATS image classifier of any family with at least one ATS layer (any mode; its settings are
            restored afterwards).
        pixel_values: (N, C, H, W) processed calibration images; labels: (N,) class ids for accuracy, or None.
        quantile: in (0, 1]; each ATS layer's capacity is ceil(this quantile of the adaptive kept counts). 1.0 fits
            every calibration image (the static mode then keeps exactly what the adaptive one keeps).
        batch_size: images per forward pass (the results do not depend on it).
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile={quantile} must be in (0, 1].")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    if len(pixel_values) == 0:
        raise ValueError("calibration needs at least one image.")
    settings = model.ats_settings.replace(capacity=None)
    layers = list(settings.layers)
    if not layers:
        raise ValueError("the model has no ATS layers (ats_layers=[]): there is no capacity to calibrate.")
    model.eval()
    config = model.config
    input_tokens = num_input_tokens(config, tuple(pixel_values.shape[-2:]))
    with model.ats_settings_applied(settings):
        max_tokens = config.resolve_ats_max_tokens(input_tokens)
        adaptive = _run(model, pixel_values, labels, batch_size, "calibrate: adaptive")
    counts = adaptive.num_tokens[:, layers].double()
    quantiles = torch.quantile(counts, quantile, dim=0)
    # Rounded up, but not past a whole count that the interpolation misses by a rounding error.
    least = num_special_tokens(config) + 1
    capacity = [max(least, math.ceil(value - 1e-9)) for value in quantiles.tolist()]
    static_settings = settings.replace(capacity=capacity)
    with model.ats_settings_applied(static_settings):
        static = _run(model, pixel_values, labels, batch_size, "calibrate: static")
        executed = static_gmacs(config, num_input_tokens=input_tokens)
    dense = None
    if labels is not None:
        with model.ats_settings_applied(AtsSettings()):
            dense = _run(model, pixel_values, labels, batch_size, "calibrate: dense")
    differs = (static.kept != adaptive.kept).any(dim=2)  # (N, ATS layers)
    over = counts > torch.tensor(capacity, dtype=counts.dtype)
    entries = tuple(
        LayerCalibration(
            layer=layer,
            max_tokens=max_tokens[layer],
            kept_mean=counts[:, i].mean().item(),
            kept_quantile=quantiles[i].item(),
            kept_max=int(counts[:, i].max()),
            capacity=capacity[i],
            over_capacity=int(over[:, i].sum()),
            truncated=int(differs[:, i].sum()),
        )
        for i, layer in enumerate(layers)
    )

    def mean_gmacs(run: _Pass) -> float:
        return gmacs_per_image(config, run.num_tokens, num_input_tokens=input_tokens).mean().item()

    def accuracy(run: _Pass) -> float | None:
        return None if labels is None else 100.0 * run.correct / len(pixel_values)

    return CalibrationResult(
        quantile=quantile,
        settings=static_settings,
        layers=entries,
        num_images=len(pixel_values),
        predicted_truncated=int(over.any(dim=1).sum()),
        truncated=int(differs.any(dim=1).sum()),
        dense_accuracy=None if dense is None else accuracy(dense),
        adaptive_accuracy=accuracy(adaptive),
        static_accuracy=accuracy(static),
        adaptive_gmacs=mean_gmacs(adaptive),
        static_gmacs=mean_gmacs(static),
        executed_gmacs=executed,
        dense_gmacs=dense_gmacs(config, num_input_tokens=input_tokens),
    )


def _run(model, pixel_values, labels, batch_size: int, description: str) -> _Pass:
    device = next(model.parameters()).device
    config = model.config
    num_patches = num_input_tokens(config, tuple(pixel_values.shape[-2:])) - num_special_tokens(config)
    num_tokens, kept, correct = [], [], 0
    with Progress(len(pixel_values), description) as progress:
        for start in range(0, len(pixel_values), batch_size):
            output = model(pixel_values[start : start + batch_size].to(device))
            if labels is not None:
                correct += int((output.logits.argmax(-1).cpu() == labels[start : start + batch_size]).sum())
            num_tokens.append(output.num_tokens.cpu())
            if output.sampled_token_indices is not None:
                kept.append(_kept_positions(output.sampled_token_indices.cpu(), num_patches))
            progress.update(len(output.logits))
    return _Pass(torch.cat(num_tokens), torch.cat(kept) if kept else None, correct)


def _kept_positions(sampled_token_indices: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(B, ATS layers, max_kept) -1-padded patch indices -> (B, ATS layers, P) bool."""
    marks = torch.zeros(*sampled_token_indices.shape[:2], num_patches + 1, dtype=torch.bool)
    marks.scatter_(2, sampled_token_indices + 1, True)  # -1 (padding) marks column 0, dropped below
    return marks[:, :, 1:]


def format_result(result: CalibrationResult) -> str:
    """The calibration as plain-text tables."""
    q = f"q{result.quantile:g}"
    rows = [
        [str(e.layer), str(e.max_tokens), f"{e.kept_mean:.1f}", f"{e.kept_quantile:.2f}", str(e.kept_max),
         str(e.capacity), str(e.over_capacity), str(e.truncated)]
        for e in result.layers
    ]
    header = ["layer", "K", "kept mean", f"kept {q}", "kept max", "capacity", "images over", "truncated"]
    layers = format_grid(header, rows)

    def accuracy(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    modes = format_grid(
        ["mode", "top-1 %", "GMACs (real tokens)", "GMACs executed"],
        [
            ["dense", accuracy(result.dense_accuracy), f"{result.dense_gmacs:.4f}", f"{result.dense_gmacs:.4f}"],
            ["adaptive", accuracy(result.adaptive_accuracy), f"{result.adaptive_gmacs:.4f}", "varies with the batch"],
            ["static", accuracy(result.static_accuracy), f"{result.static_gmacs:.4f}", f"{result.executed_gmacs:.4f}"],
        ],
    )
    settings = result.settings
    share = 100.0 * result.truncated / result.num_images
    return "\n".join([
        f"ATS settings: {format_settings(settings.replace(capacity=None))}",
        f"capacity per ATS layer: ceil of the {result.quantile:g} quantile of the adaptive kept counts (CLS included) "
        f"over {result.num_images} images",
        "",
        layers,
        "",
        modes,
        "",
        f"truncated images: {result.predicted_truncated} of {result.num_images} keep more than the capacity in some "
        f"ATS layer in the adaptive mode; in the static mode {result.truncated} ({share:.1f}%) keep other tokens than "
        "the adaptive mode.",
        f"static mode: --ats-layers {format_layers(settings.layers)} --ats-max-tokens "
        f"{format_max_tokens(settings.max_tokens)} --ats-capacity {format_max_tokens(settings.capacity)}",
        *[f"note: {text}" for text in result.notes],
    ])


def save_calibrated_checkpoint(model, processor, result: CalibrationResult, output: Path, model_name: str,
                               data_name: str) -> None:
    """A checkpoint of `model` in the static mode at the proposed capacities (weights, config, image processor,
    code, model card) and calibration.json, in `output` (the caller checks that it may be written)."""
    from .hub.checkpoint import save_ats_checkpoint

    model.set_ats(result.settings)
    card = {"ats_gmacs": result.static_gmacs, "gmacs_measured_on": data_name}
    if result.static_accuracy is not None:
        card["metrics"] = {"accuracy": result.static_accuracy / 100.0}
    save_ats_checkpoint(model.cpu(), output, processor, **card)
    report = {"model": model_name, "data": data_name, **result.to_dict()}
    (output / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")


__all__ = ["CalibrationResult", "LayerCalibration", "calibrate_capacity", "format_result", "save_calibrated_checkpoint"]
