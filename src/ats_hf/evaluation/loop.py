"""The evaluation loop that benchmark, tune, calibrate and export share: stream batches from an `ImageSource`, run
every method on each batch (the images are decoded once for all of them), and keep per image only its score, its
tokens per layer and its GMACs, so memory is bounded by the batch size, not by the number of images.

Methods that start with dense layers share them: per batch, the dense hidden states at each method's first ATS
layer are computed once and the method runs on from there (`forward_from_layer`), which gives the same outputs as
the whole forward pass. Batches are numbered; with several processes (`Processes`) each runs its share of the
numbers and the per-image results are gathered back in order, and the random sampler is seeded per batch number, so
the results do not depend on the number of processes.

Shapes: N = images, B = batch, L = encoder layers.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..configuration_ats_core import AtsSettings, input_size, num_input_tokens, num_special_tokens
from ..methods import dense_method
from ..progress import Progress
from .objectives import Objective
from .processes import ONE_PROCESS, Processes
from .sources import ImageSource, num_batches


@dataclass(frozen=True)
class Evaluation:
    """One method on the evaluated images: per image, its objective score (None: no objective), tokens out of each
    layer (special tokens included; None when not asked for), its GMACs at the real tokens and, when asked for, the
    patch positions each ATS layer kept."""

    method: object  # an `ats_hf.methods` method
    scores: torch.Tensor | None  # (N,) float64; 1/0 per image, or a cosine
    num_tokens: torch.Tensor | None  # (N, L) long
    gmacs: torch.Tensor  # (N,) float64
    kept: torch.Tensor | None = None  # (N, ATS layers, P) bool over the P patch positions

    @property
    def score(self) -> float | None:
        """100 x the mean score (top-1 % for accuracy and agreement), or None."""
        return None if self.scores is None else 100.0 * self.scores.mean().item()

    @property
    def standard_error(self) -> float | None:
        """Standard error of `score` over the images, in its points."""
        if self.scores is None:
            return None
        return 100.0 * self.scores.std(unbiased=False).item() / max(1, len(self.scores)) ** 0.5

    @property
    def gmacs_mean(self) -> float:
        return self.gmacs.mean().item()

    def extended(self, other: "Evaluation") -> "Evaluation":
        """This evaluation followed by `other`'s images (the same method, the same details)."""
        return Evaluation(self.method, *(None if mine is None else torch.cat([mine, theirs]) for mine, theirs in (
            (self.scores, other.scores), (self.num_tokens, other.num_tokens), (self.gmacs, other.gmacs),
            (self.kept, other.kept))))


@dataclass(frozen=True)
class LoopStats:
    """Where the loop's time went on this process: waiting for decoded batches vs running the model."""

    images: int
    data_seconds: float
    model_seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.data_seconds + self.model_seconds, 1e-9)

    def to_dict(self) -> dict:
        total = max(self.data_seconds + self.model_seconds, 1e-9)
        return {"images": self.images, "images_per_second": self.images_per_second,
                "data_share": self.data_seconds / total, "model_share": self.model_seconds / total}


@torch.inference_mode()
def evaluate_methods(
    model,
    methods: Sequence,
    source: ImageSource,
    objective: Objective | None = None,
    batch_size: int = 64,
    *,
    num_workers: int = 0,
    seed: int = 0,
    processes: Processes = ONE_PROCESS,
    batch_numbers: Sequence[int] | None = None,
    description: str = "evaluate",
    token_counts: bool = True,
    kept_positions: bool = False,
) -> tuple[list[Evaluation], LoopStats]:
    """Every method of `methods` on the images of `source` (only its batches `batch_numbers`, when given), in eager
    PyTorch; returns one `Evaluation` per method (in batch order) and this process's time shares.

    objective: how each image is scored (None: tokens and GMACs only); agreement and fidelity compare with the
    dense model's outputs on the same batch. batch_size: images per forward pass (the results do not depend on it,
    except the random sampler's draws). num_workers: DataLoader worker processes decoding and processing images.
    token_counts: keep every image's tokens per layer (a search over many methods leaves them out: per image and
    method it then keeps two numbers). kept_positions: keep the patch positions each ATS layer kept (calibration).
    """
    if batch_size < 1 or not methods:
        raise ValueError(f"batch_size={batch_size} must be >= 1, with at least one method (got {len(methods)}).")
    if objective is not None:
        objective.check(model, source.labels is not None)
        objective = objective.for_model(model)
    parameter = next(model.parameters())
    all_numbers = range(num_batches(len(source), batch_size)) if batch_numbers is None else batch_numbers
    mine = [all_numbers[i] for i in processes.shard(len(all_numbers))]
    own: list[tuple[int, list[tuple]]] = []
    data_seconds = model_seconds = 0.0
    sizes = [min(batch_size, len(source) - number * batch_size) for number in all_numbers]
    # All processes run one batch each per round: the progress counts a round's images as this process's batch ends.
    rounds = [sum(sizes[start : start + processes.world_size]) for start in range(0, len(sizes), processes.world_size)]
    with Progress(sum(sizes), f"{description} ({len(methods)} methods)", shown=processes.is_main) as progress:
        batches = source.batches(batch_size, num_workers, mine)
        for number, round_images in zip(mine, rounds, strict=False):
            started = time.perf_counter()
            pixel_values, labels = next(batches)
            loaded = time.perf_counter()
            pixel_values = pixel_values.to(parameter.device, parameter.dtype)
            rows = _run_batch(model, methods, pixel_values, labels, objective, seed + number, kept_positions)
            own.append((number, [row if token_counts else (row[0], None, *row[2:]) for row in rows]))
            data_seconds += loaded - started
            model_seconds += time.perf_counter() - loaded
            progress.update(round_images)
    stats = LoopStats(sum(len(rows[0][2]) for _, rows in own), data_seconds, model_seconds)
    ordered = sorted((item for part in processes.gather(own) for item in part), key=lambda item: item[0])
    evaluations = []
    for index, method in enumerate(methods):
        rows = [per_method[index] for _, per_method in ordered]
        columns = [None if rows[0][column] is None else torch.cat([row[column] for row in rows]) for column in range(4)]
        evaluations.append(Evaluation(method, *columns))
    return evaluations, stats


def _run_batch(model, methods: Sequence, pixel_values: torch.Tensor, labels: torch.Tensor,
               objective: Objective | None, seed: int, kept_positions: bool) -> list[tuple]:
    """(scores or None, (B, L) tokens, (B,) GMACs, (B, ATS layers, P) kept positions or None) of every method on
    one batch, all on the CPU."""
    input_tokens = num_input_tokens(model.config, input_size(pixel_values))
    num_patches = input_tokens - num_special_tokens(model.config)
    prefixes = _dense_prefixes(model, pixel_values, {_first_layer(method) for method in methods})
    reference = None
    if objective is not None and objective.needs_reference:
        dense = next((m for m in methods if m.kind == "ats" and not m.settings.layers), None)
        reference = objective.reference(_forward(model, dense or dense_method(), pixel_values, prefixes, seed))
    rows = []
    for method in methods:
        output = _forward(model, method, pixel_values, prefixes, seed)
        num_tokens = output.num_tokens.cpu()
        scores = None if objective is None else objective.scores(output, labels, reference)
        kept = None
        if kept_positions:
            kept = _kept_positions(output.sampled_token_indices, num_patches, len(pixel_values))
        rows.append((scores, num_tokens, method.gmacs(model.config, num_tokens, input_tokens), kept))
    return rows


def _kept_positions(sampled_token_indices: torch.Tensor | None, num_patches: int, batch_size: int) -> torch.Tensor:
    """(B, ATS layers, max_kept) -1-padded patch indices (None: no ATS layer) -> (B, ATS layers, P) bool."""
    if sampled_token_indices is None:
        return torch.zeros(batch_size, 0, num_patches, dtype=torch.bool)
    indices = sampled_token_indices.cpu()
    marks = torch.zeros(*indices.shape[:2], num_patches + 1, dtype=torch.bool)
    marks.scatter_(2, indices + 1, True)  # -1 (padding) marks column 0, dropped below
    return marks[:, :, 1:]


def _first_layer(method) -> int | None:
    """The first ATS layer of an ATS method that can start there (dense before it), else None (a whole pass)."""
    layers = method.settings.layers if method.kind == "ats" else ()
    return layers[0] if layers else None


def _dense_prefixes(model, pixel_values: torch.Tensor, starts: set) -> dict[int, torch.Tensor]:
    """{layer S: (B, N, D) dense input of layer S} for the first ATS layers in `starts` (models that run from a
    layer: classifiers and base models of every family)."""
    if not hasattr(model, "forward_from_layer"):
        return {}
    base = model.base_model
    # A start beyond the model is a bad setting: its method raises the settings' own error when it is applied.
    starts = sorted(start for start in starts if start is not None and 0 < start < len(base.ats_encoder_layers))
    if not starts:
        return {}
    prefixes, current = {}, 0
    with model.ats_settings_applied(AtsSettings()):
        hidden = base.ats_embed(pixel_values)
        for start in starts:
            hidden = base.run_layers(hidden, None, current, start).hidden_states
            prefixes[start], current = hidden, start
    return prefixes


def _forward(model, method, pixel_values: torch.Tensor, prefixes: dict[int, torch.Tensor], seed: int):
    """The model's output for `method` on the batch (from a shared dense prefix when there is one); the random
    sampler draws from `seed`."""
    torch.manual_seed(seed)
    start = _first_layer(method)
    with method.applied(model):
        if start in prefixes:
            return model.forward_from_layer(prefixes[start], start)
        return method.forward(model, pixel_values)


__all__ = ["Evaluation", "LoopStats", "evaluate_methods"]
