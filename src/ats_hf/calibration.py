"""Choosing the static mode's capacities from data (`ats-hf calibrate`).

The static mode (`ats_capacity`) allocates a fixed number of rows in every ATS layer. Too few rows truncate images
that sample more tokens (they keep their highest-scoring sampled tokens, which may cost accuracy); too many waste
compute on padding. `calibrate_capacity` runs the model in the adaptive mode on calibration images, proposes for
each ATS layer the `quantile` of the kept counts (special tokens included, rounded up), and then runs the static
mode at those capacities to report what they cost and change: the objective (accuracy with labels, else agreement
with the dense model for a classifier, fidelity for a feature extractor), real-token and executed GMACs, truncated
images. It runs on the shared evaluation loop (`ats_hf.evaluation`): images are streamed, and shared over several
processes.

    result = calibrate_capacity(model, pixel_values, labels, quantile=0.99)
    model.set_ats(result.settings)              # the static mode at the proposed capacities

    ats-hf calibrate --quantile 0.99 --output calibrated/    # a checkpoint with the capacities in its config
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ats_hf_common.grammar import format_layers, format_max_tokens, format_settings

from .configuration_ats_core import AtsSettings, input_size, num_input_tokens, num_special_tokens
from .evaluation import ONE_PROCESS, Objective, Processes, as_source, default_objective, evaluate_methods
from .flops import dense_gmacs, static_gmacs
from .methods import AtsMethod, dense_method
from .reporting import format_grid

DEFAULT_QUANTILE = 0.99
DEFAULT_BATCH_SIZE = 64


@dataclass(frozen=True)
class LayerCalibration:
    """One ATS layer: its K, the adaptive kept counts (special tokens included) over the images, the proposed
    capacity, and how many images it truncates."""

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
    (an image truncated in one layer can also keep other tokens in the next ones). Scores are the objective's x 100
    (top-1 % for accuracy and agreement, cosine x 100 for fidelity; dense scores 100 against itself). GMACs are per
    image: `*_gmacs` at the real kept tokens (the papers' convention), `executed_gmacs` what the static mode computes
    (its capacity rows, padding included, the same for every image), `dense_gmacs` the model without ATS.
    """

    quantile: float
    settings: AtsSettings  # the static mode at the proposed capacities (`model.set_ats(result.settings)`)
    layers: tuple[LayerCalibration, ...]
    num_images: int
    predicted_truncated: int
    truncated: int
    objective: str | None  # what the scores are (None: not scored)
    dense_score: float | None
    adaptive_score: float | None
    static_score: float | None
    adaptive_gmacs: float
    static_gmacs: float
    executed_gmacs: float
    dense_gmacs: float
    processes: int = 1

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
            "objective": self.objective,
            "dense_score": self.dense_score,
            "adaptive_score": self.adaptive_score,
            "static_score": self.static_score,
            "adaptive_gmacs": self.adaptive_gmacs,
            "static_gmacs": self.static_gmacs,
            "executed_gmacs": self.executed_gmacs,
            "dense_gmacs": self.dense_gmacs,
            "processes": self.processes,
        }


def capacity_from_counts(counts: torch.Tensor, quantile: float, least: int) -> tuple[list[int], torch.Tensor]:
    """Each ATS layer's capacity: ceil of the `quantile` of its kept counts (N, ATS layers), at least `least` rows
    (S + 1). Returns the capacities and the (ATS layers,) quantiles before rounding."""
    quantiles = torch.quantile(counts.double(), quantile, dim=0)
    # Rounded up, but not past a whole count that the interpolation misses by a rounding error.
    return [max(least, math.ceil(value - 1e-9)) for value in quantiles.tolist()], quantiles


def calibrate_capacity(
    model,
    images,
    labels: torch.Tensor | None = None,
    quantile: float = DEFAULT_QUANTILE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    objective: Objective | None = None,
    num_workers: int = 0,
    processes: Processes = ONE_PROCESS,
) -> CalibrationResult:
    """Propose static-mode capacities for the model's ATS settings (layers, K, sampler) from calibration images.

    Args:
        model: an ATS model of any family (classifier or feature extractor) with at least one ATS layer (any mode;
            its settings are restored afterwards).
        images: (N, C, H, W) processed calibration images with `labels` (N,) class ids or None, or an
            `ats_hf.evaluation.ImageSource` (streamed; its own labels).
        quantile: in (0, 1]; each ATS layer's capacity is ceil(this quantile of the adaptive kept counts). 1.0 fits
            every calibration image (the static mode then keeps exactly what the adaptive one keeps).
        batch_size: images per forward pass (the results do not depend on it).
        objective: how the modes are scored (default: accuracy with labels, else agreement for a classifier,
            fidelity for a feature extractor). num_workers, processes: as `evaluate_methods`.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile={quantile} must be in (0, 1].")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    source = as_source(images, labels)
    if len(source) == 0:
        raise ValueError("calibration needs at least one image.")
    settings = model.ats_settings.replace(capacity=None)
    layers = list(settings.layers)
    if not layers:
        raise ValueError("the model has no ATS layers (ats_layers=[]): there is no capacity to calibrate.")
    objective = objective or default_objective(model, source.labels is not None)
    objective.check(model, source.labels is not None)
    model.eval()
    config = model.config
    input_tokens = num_input_tokens(config, input_size(source.head(1)))
    options = {"objective": objective, "batch_size": batch_size, "num_workers": num_workers,
               "processes": processes, "kept_positions": True}
    (dense, adaptive), _ = evaluate_methods(model, [dense_method(), AtsMethod("adaptive", settings)], source,
                                            description="calibrate: dense and adaptive", **options)
    counts = adaptive.num_tokens[:, layers]
    capacity, quantiles = capacity_from_counts(counts, quantile, num_special_tokens(config) + 1)
    static_settings = settings.replace(capacity=capacity)
    (static,), _ = evaluate_methods(model, [AtsMethod("static", static_settings)], source,
                                    description="calibrate: static", **options)
    with model.ats_settings_applied(static_settings):
        executed = static_gmacs(config, num_input_tokens=input_tokens)
    max_tokens = {layer: k for layer, (k, _) in settings.resolve(input_tokens, num_special_tokens(config)).items()}
    differs = (static.kept != adaptive.kept).any(dim=2)  # (N, ATS layers)
    over = counts > torch.tensor(capacity)
    entries = tuple(
        LayerCalibration(
            layer=layer,
            max_tokens=max_tokens[layer],
            kept_mean=counts[:, i].double().mean().item(),
            kept_quantile=quantiles[i].item(),
            kept_max=int(counts[:, i].max()),
            capacity=capacity[i],
            over_capacity=int(over[:, i].sum()),
            truncated=int(differs[:, i].sum()),
        )
        for i, layer in enumerate(layers)
    )
    return CalibrationResult(
        quantile=quantile,
        settings=static_settings,
        layers=entries,
        num_images=len(source),
        predicted_truncated=int(over.any(dim=1).sum()),
        truncated=int(differs.any(dim=1).sum()),
        objective=objective.name,
        dense_score=dense.score,
        adaptive_score=adaptive.score,
        static_score=static.score,
        adaptive_gmacs=adaptive.gmacs_mean,
        static_gmacs=static.gmacs_mean,
        executed_gmacs=executed,
        dense_gmacs=dense_gmacs(config, num_input_tokens=input_tokens),
        processes=processes.world_size,
    )


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

    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    unit = "score" if result.objective is None else Objective(result.objective).unit
    modes = format_grid(
        ["mode", unit, "GMACs (real tokens)", "GMACs executed"],
        [
            ["dense", score(result.dense_score), f"{result.dense_gmacs:.4f}", f"{result.dense_gmacs:.4f}"],
            ["adaptive", score(result.adaptive_score), f"{result.adaptive_gmacs:.4f}", "varies with the batch"],
            ["static", score(result.static_score), f"{result.static_gmacs:.4f}", f"{result.executed_gmacs:.4f}"],
        ],
    )
    settings = result.settings
    share = 100.0 * result.truncated / result.num_images
    return "\n".join([
        f"ATS settings: {format_settings(settings.replace(capacity=None))}",
        f"capacity per ATS layer: ceil of the {result.quantile:g} quantile of the adaptive kept counts (special "
        f"tokens included) over {result.num_images} images",
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
    ])


def save_calibrated_checkpoint(model, processor, result: CalibrationResult, output: Path, model_name: str,
                               data_name: str) -> None:
    """A checkpoint of `model` in the static mode at the proposed capacities (weights, config, image processor,
    code, model card) and calibration.json, in `output` (the caller checks that it may be written)."""
    from .hub.checkpoint import save_ats_checkpoint

    model.set_ats(result.settings)
    card = {"ats_gmacs": result.static_gmacs, "gmacs_measured_on": data_name}
    if result.static_score is not None:
        card["metrics"] = {f"static-mode {result.objective}": result.static_score}
    save_ats_checkpoint(model.cpu(), output, processor, **card)
    report = {"model": model_name, "data": data_name, **result.to_dict()}
    (output / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")


__all__ = ["CalibrationResult", "LayerCalibration", "calibrate_capacity", "format_result", "save_calibrated_checkpoint"]
