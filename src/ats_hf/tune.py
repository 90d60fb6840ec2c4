"""Choosing the ATS settings for a user's budget on their model and data (`ats-hf tune`).

The search runs plug and play (no training) over contiguous ranges of ATS layers, K, the sampler and the merge
option, on a calibration split, and reports the objective on a separate held-out split, so that the choice is not fitted
to the numbers it reports. It works on an image classifier of every family (`forward_from_layer`), and is fast
because candidates share work:
- the layers before a candidate's first ATS layer are dense for every candidate, so their output is computed once
  per first layer and cached (the model runs on from it);
- every candidate is first scored on a quarter of the calibration images; only those on or near the
  objective-vs-GMACs Pareto front (within two standard errors) are scored on all of them.

The front's points (and ToMe's) are then timed against dense in a named runtime and batch size (`SpeedSpec`), so
the report shows measured speed-ups next to GMACs, and a target may be a measured speed-up.

Every score comes from the shared evaluation loop (`ats_hf.evaluation`): images are streamed in batches (never all
in memory; per image and setting only its score and GMACs are kept), and with several processes each scores its
share of the batches, with the same results as one process. Timing runs on the main process only.

Python API: `tune(model, images, labels, target, speed=SpeedSpec()) -> TuneResult`; `candidate_grid(...)`.
"""

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ats_hf_common.grammar import format_settings

from .benchmark.engine import evaluate_method, time_methods
from .benchmark.runtimes import RUNTIMES
from .calibration import capacity_from_counts
from .configuration_ats_core import AtsSettings, input_size, num_input_tokens, num_special_tokens
from .evaluation import (
    ONE_PROCESS,
    Evaluation,
    ImageSource,
    Objective,
    Processes,
    as_source,
    default_objective,
    evaluate_methods,
)
from .evaluation.sources import num_batches
from .families import TOME, family_of
from .flops import dense_gmacs
from .methods import AtsMethod, Method, TomeMethod, dense_method

MAX_TOKENS_GRID = (None, 0.75, 0.5, 0.25)
SAMPLERS_GRID = ("inverse_transform", "top_k")
MERGE_GRID = (None, 0.8)
SCREEN_FRACTION = 0.25  # share of the calibration images every candidate is first scored on
NEAR_FRONT_ERRORS = 2.0  # candidates within this many standard errors of the screening front are scored fully


@dataclass
class Score:
    """The objective's value and mean GMACs of one method (ATS settings, dense, or ToMe) on one split: `total` is
    the sum of the per-image scores (right top-1 answers for accuracy and agreement, cosines for fidelity),
    `squares` the sum of their squares (None: 0/1 scores, where it equals `total`)."""

    method: Method
    total: float
    images: int
    gmacs: float
    squares: float | None = None

    @property
    def value(self) -> float:
        """100 x the mean score: top-1 % for accuracy and agreement, cosine x 100 for fidelity."""
        return 100.0 * self.total / self.images

    @property
    def standard_error(self) -> float:
        """Standard error of `value` over the images, in its points (binomial for 0/1 scores)."""
        mean = self.total / self.images
        second_moment = mean if self.squares is None else self.squares / self.images
        return 100.0 * math.sqrt(max(second_moment - mean * mean, 1e-12) / self.images)

    @property
    def label(self) -> str:
        return self.method.name

    def as_dict(self, dense: float) -> dict:
        return {"setting": self.label, "score": self.value, "standard_error": self.standard_error,
                "gmacs": self.gmacs, "gmacs_fraction": self.gmacs / dense, "images": self.images,
                "method": self.method.to_dict()}


def candidate_method(settings: AtsSettings) -> AtsMethod:
    """A search point: ATS with `settings` (the adaptive mode), named by them ('layers 2-3, K all, ...')."""
    return AtsMethod(format_settings(settings) if settings.layers else "dense", settings)


@dataclass
class Target:
    """What the user wants: at most `max_gmacs_fraction` of dense GMACs (highest score wins), at most
    `max_accuracy_drop` points below dense (fewest GMACs win), or a measured speed-up over dense of at least
    `min_speedup` in the `SpeedSpec`'s runtime and batch size (highest score wins). Scores and drops are in the
    objective's points. Exactly one is set."""

    max_gmacs_fraction: float | None = None
    max_accuracy_drop: float | None = None
    min_speedup: float | None = None

    def __post_init__(self):
        given = [v for v in (self.max_gmacs_fraction, self.max_accuracy_drop, self.min_speedup) if v is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one target: a GMACs budget, a largest accepted accuracy drop or a least speed-up."
            )
        if self.max_gmacs_fraction is not None and not 0.0 < self.max_gmacs_fraction <= 1.0:
            raise ValueError(f"GMACs budget {self.max_gmacs_fraction} is outside (0, 1] (a fraction of dense).")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise ValueError(f"accuracy drop {self.max_accuracy_drop} must be >= 0 points.")
        if self.min_speedup is not None and not self.min_speedup > 0:
            raise ValueError(f"speed-up {self.min_speedup} must be > 0 (a ratio to dense throughput, e.g. 1.5).")

    def describe(self, speed: "SpeedSpec | None" = None, objective: str = "accuracy") -> str:
        """The target in words, for the objective the scores are."""
        best = f"highest {objective} on the calibration split"
        if self.max_gmacs_fraction is not None:
            return f"at most {self.max_gmacs_fraction:.0%} of dense GMACs, {best}"
        if self.max_accuracy_drop is not None:
            return (f"at most {self.max_accuracy_drop:g} points of {objective} below dense, fewest GMACs on the "
                    "calibration split")
        where = "" if speed is None else f" ({speed.describe()})"
        return f"at least {self.min_speedup:g}x dense throughput{where}, {best}"


@dataclass(frozen=True)
class SpeedSpec:
    """Where the front is timed: `runtime` (eager, compile or onnxruntime; the last two time the static mode, with
    capacities calibrated at `capacity_quantile` of the calibration split's kept counts), `batch_size`, the first
    `images` calibration images, `repeats` interleaved timed passes per setting (median)."""

    runtime: str = "eager"
    batch_size: int = 1
    images: int = 64
    repeats: int = 5
    capacity_quantile: float = 0.99

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime={self.runtime!r} is unknown; choose one of {', '.join(RUNTIMES)}.")
        for name in ("batch_size", "images", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")
        if not 0.0 < self.capacity_quantile <= 1.0:
            raise ValueError(f"capacity_quantile={self.capacity_quantile} must be in (0, 1].")

    @property
    def static(self) -> bool:
        """Whether the settings are timed in the static mode (compiled graphs and ONNX want fixed shapes)."""
        return self.runtime != "eager"

    def describe(self) -> str:
        mode = "static mode" if self.static else "adaptive mode"
        return f"{self.runtime}, {mode}, batch {self.batch_size}, {torch.get_num_threads()} thread(s)"


@dataclass(frozen=True)
class SearchStats:
    """How fast the search scored (timing of the front excluded): `images` read over all its passes (an image read
    in the screening and again for the rest counts twice), `evaluations` image x setting forward passes, wall-clock
    `seconds` of all processes together."""

    images: int
    evaluations: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images / max(self.seconds, 1e-9)

    @property
    def evaluations_per_second(self) -> float:
        return self.evaluations / max(self.seconds, 1e-9)

    def describe(self, processes: int) -> str:
        return (f"{self.images} images read in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s, "
                f"{self.evaluations_per_second:.0f} image x setting evaluations/s) on {processes} process(es)")

    def to_dict(self) -> dict:
        return {"images": self.images, "evaluations": self.evaluations, "seconds": self.seconds,
                "images_per_second": self.images_per_second, "evaluations_per_second": self.evaluations_per_second}


@dataclass
class TuneResult:
    """The search: dense, every calibration score, the calibration Pareto front, the choice, and held-out scores
    of the front (and ToMe at matching budgets)."""

    target: Target
    dense_gmacs: float
    dense_calibration: Score
    dense_held_out: Score
    calibration: list[Score]
    front: list[Score]
    chosen: Score | None
    held_out: dict[str, Score] = field(default_factory=dict)  # by label
    tome_calibration: list[Score] = field(default_factory=list)
    tome_held_out: dict[str, Score] = field(default_factory=dict)
    candidates_screened: int = 0
    candidates_scored_fully: int = 0
    speed: "SpeedSpec | None" = None
    speedups: dict[str, float] = field(default_factory=dict)  # measured speed-up over dense, by label
    notes: list[str] = field(default_factory=list)  # what the reader should know (e.g. why ToMe is missing)
    objective: str = "accuracy"  # what the scores are (`ats_hf.evaluation.objectives`)
    search: "SearchStats | None" = None
    processes: int = 1

    def speedup(self, score: Score) -> float | None:
        return self.speedups.get(score.label)

    def to_dict(self) -> dict:
        dense = self.dense_gmacs
        return {
            "target": dataclasses.asdict(self.target),
            "objective": self.objective,
            "dense_gmacs": dense,
            "dense": {"calibration": self.dense_calibration.as_dict(dense),
                      "held_out": self.dense_held_out.as_dict(dense)},
            "chosen": None if self.chosen is None else {
                "calibration": self.chosen.as_dict(dense), "held_out": self.held_out[self.chosen.label].as_dict(dense)},
            "front": [{"calibration": s.as_dict(dense), "held_out": self.held_out[s.label].as_dict(dense)}
                      for s in self.front],
            "tome": [{"calibration": s.as_dict(dense), "held_out": self.tome_held_out[s.label].as_dict(dense)}
                     for s in self.tome_calibration],
            "calibration_scores": [s.as_dict(dense) for s in self.calibration],
            "speed": None if self.speed is None else {
                **dataclasses.asdict(self.speed), "threads": torch.get_num_threads(), "speedups": self.speedups},
            "candidates_screened": self.candidates_screened,
            "candidates_scored_fully": self.candidates_scored_fully,
            "search": None if self.search is None else self.search.to_dict(),
            "processes": self.processes,
            "notes": list(self.notes),
        }


def candidate_grid(
    num_layers: int,
    first_layers: tuple[int, ...] | None = None,
    max_tokens: tuple = MAX_TOKENS_GRID,
    samplers: tuple[str, ...] = SAMPLERS_GRID,
    merges: tuple = MERGE_GRID,
) -> list[AtsSettings]:
    """Every contiguous range of ATS layers S..E (S in `first_layers`, default 1..L-1), times K, sampler and merge.
    top-K at K = all keeps every token, so it is left out."""
    first_layers = tuple(range(1, num_layers)) if first_layers is None else first_layers
    grid = []
    for start in first_layers:
        for end in range(start, num_layers):
            for k in max_tokens:
                for sampler in samplers:
                    if sampler == "top_k" and k is None:
                        continue
                    grid += [AtsSettings(tuple(range(start, end + 1)), k, sampler, merge=merge) for merge in merges]
    return grid


class _Scorer:
    """Scores methods on batches of a split through the shared evaluation loop, and counts what it did."""

    def __init__(self, model, objective: Objective, batch_size: int, num_workers: int, processes: Processes):
        self.model, self.objective, self.batch_size = model, objective, batch_size
        self.num_workers, self.processes = num_workers, processes
        self.images = self.evaluations = 0
        self.seconds = 0.0

    def __call__(self, methods: list[Method], source: ImageSource, batch_numbers=None,
                 description: str = "tune") -> list[Score]:
        """The `Score` of every method on the batches `batch_numbers` of `source` (default all): one pass of the
        loop, which computes the dense layers before each first ATS layer once per batch."""
        started = time.perf_counter()
        evaluations, _ = evaluate_methods(
            self.model, methods, source, self.objective, self.batch_size, num_workers=self.num_workers,
            processes=self.processes, batch_numbers=batch_numbers, description=description, token_counts=False)
        self.seconds += time.perf_counter() - started
        self.images += len(evaluations[0].gmacs)
        self.evaluations += len(evaluations[0].gmacs) * len(methods)
        return [_score_of(evaluation) for evaluation in evaluations]

    @property
    def stats(self) -> SearchStats:
        return SearchStats(self.images, self.evaluations, self.seconds)


def _score_of(evaluation: Evaluation) -> Score:
    scores = evaluation.scores
    return Score(evaluation.method, float(scores.sum()), len(scores), evaluation.gmacs_mean,
                 float(scores.square().sum()))


def _joined(first: Score, rest: Score) -> Score:
    """One method's scores on two disjoint sets of images, as one."""
    images = first.images + rest.images
    return Score(first.method, first.total + rest.total, images,
                 (first.gmacs * first.images + rest.gmacs * rest.images) / images, first.squares + rest.squares)


def pareto_front(scores: list[Score]) -> list[Score]:
    """Scores no other score beats in both value (higher) and GMACs (lower), by increasing GMACs."""
    front, best = [], -1.0
    for score in sorted(scores, key=lambda s: (s.gmacs, -s.value)):
        if score.value > best:
            front.append(score)
            best = score.value
    return front


def _near_front(scores: list[Score], front: list[Score]) -> list[Score]:
    """Scores within NEAR_FRONT_ERRORS standard errors of the best front value at their GMACs or fewer."""
    kept = []
    for score in scores:
        reachable = [f.value for f in front if f.gmacs <= score.gmacs]
        best = max(reachable, default=-1.0)
        if score.value >= best - NEAR_FRONT_ERRORS * max(score.standard_error, 1e-9):
            kept.append(score)
    return kept


def choose(
    front: list[Score], target: Target, dense: Score, dense_gmacs_value: float, speedups: dict[str, float] | None = None
) -> Score | None:
    """The front point that meets `target` (see `Target`), or None if none does; a speed-up target reads the
    measured `speedups` (by label)."""
    if target.min_speedup is not None:
        fast = [s for s in front if (speedups or {}).get(s.label, 0.0) >= target.min_speedup]
        return max(fast, key=lambda s: (s.value, -s.gmacs), default=None)
    if target.max_gmacs_fraction is not None:
        within = [s for s in front if s.gmacs <= target.max_gmacs_fraction * dense_gmacs_value]
        return max(within, key=lambda s: (s.value, -s.gmacs), default=None)
    good = [s for s in front if s.value >= dense.value - target.max_accuracy_drop]
    return min(good, key=lambda s: (s.gmacs, -s.value), default=None)


def tune(
    model,
    images,
    labels: torch.Tensor | None,
    target: Target,
    candidates: list[AtsSettings] | None = None,
    held_out_fraction: float = 0.5,
    batch_size: int = 250,
    tome_r: tuple[int, ...] = (),
    speed: SpeedSpec | None = None,
    objective: Objective | None = None,
    *,
    num_workers: int = 0,
    processes: Processes = ONE_PROCESS,
) -> TuneResult:
    """Search `candidates` (default `candidate_grid`) on a calibration split of the images and report the front and
    the choice on the held-out rest. The model's own settings come back afterwards.

    Args:
        model: an ATS model of any family: a classifier, or a feature extractor (objective fidelity).
        images: (N, C, H, W) processed images with `labels` (N,) model label ids or None (unlabelled), or an
            `ats_hf.evaluation.ImageSource` (streamed; its own labels, `labels` None). The last `held_out_fraction`
            of them is held out (shuffle beforehand if they are ordered; `open_images` does).
        tome_r: ToMe merge counts per block to score next to the front, for comparison.
        speed: time the front (and ToMe) against dense there (on the main process); required by a speed-up target.
        objective: what the search maximises (`ats_hf.evaluation.objectives`; default: accuracy with labels, else
            agreement with dense for a classifier, fidelity for a feature extractor). An accuracy-drop target is in
            that objective's points.
        num_workers: DataLoader worker processes decoding images; processes: share the batches over the processes
            of a launcher (`ats_hf.evaluation.join_processes`); every process returns the same result.
    """
    source = as_source(images, labels)
    has_labels = source.labels is not None
    objective = objective or default_objective(model, has_labels)
    objective.check(model, has_labels)
    if target.min_speedup is not None and speed is None:
        raise ValueError("a speed-up target needs a SpeedSpec (where to time): pass speed=SpeedSpec(...).")
    if len(source) < 8:
        raise ValueError(f"tune needs at least 8 images, got {len(source)}.")
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction={held_out_fraction} must be in (0, 1).")
    model = model.eval()
    notes = []
    if tome_r and TOME not in family_of(model).capabilities:
        notes.append(f"ToMe left out: the {family_of(model).title} family has no ToMe path.")
        tome_r = ()
    if tome_r and objective.needs_token_grid:
        notes.append(f"ToMe left out: it merges tokens, so {objective.name} has no token grid to compare.")
        tome_r = ()
    split = len(source) - max(1, int(len(source) * held_out_fraction))
    calibration = source.subset(0, split, "calibration split")
    held = source.subset(split, len(source), "held-out split")
    candidates = candidate_grid(model.config.num_hidden_layers) if candidates is None else candidates
    reference_tokens = num_input_tokens(model.config, input_size(source.head(1)))
    dense_value = dense_gmacs(model.config, reference_tokens)
    tomes = [TomeMethod(f"ToMe r={r}", r) for r in tome_r]
    fixed = [dense_method(), *tomes]  # scored on every calibration image
    scorer = _Scorer(model, objective, batch_size, num_workers, processes)

    batches = num_batches(len(calibration), batch_size)
    screen_batches = max(1, round(batches * SCREEN_FRACTION))
    screened_all = scorer(fixed + [candidate_method(c) for c in candidates], calibration, range(screen_batches),
                          "tune: screening")
    screened = screened_all[len(fixed):]
    survivors = _near_front(screened, pareto_front(screened))
    if screen_batches < batches:
        rest = scorer(fixed + [s.method for s in survivors], calibration, range(screen_batches, batches),
                      "tune: the rest of the calibration split")
        fixed_scores = [_joined(a, b) for a, b in zip(screened_all[: len(fixed)], rest[: len(fixed)], strict=True)]
        scored = [_joined(a, b) for a, b in zip(survivors, rest[len(fixed):], strict=True)]
    else:
        fixed_scores, scored = screened_all[: len(fixed)], survivors
    dense_calibration, tome_calibration = fixed_scores[0], fixed_scores[1:]
    front = pareto_front(scored)
    held_scores = scorer([dense_method(), *tomes, *(s.method for s in front)], held,
                         description="tune: held-out split")
    speedups = {}
    if speed is not None:
        speedups = measure_speedups(model, front, tome_calibration, calibration, speed, batch_size=batch_size,
                                    num_workers=num_workers, processes=processes)
    chosen = choose(front, target, dense_calibration, dense_value, speedups)
    return TuneResult(
        target=target,
        dense_gmacs=dense_value,
        dense_calibration=dense_calibration,
        dense_held_out=held_scores[0],
        calibration=scored,
        front=front,
        chosen=chosen,
        held_out={s.label: s for s in held_scores[1 + len(tomes):]},
        tome_calibration=tome_calibration,
        tome_held_out={s.label: s for s in held_scores[1 : 1 + len(tomes)]},
        candidates_screened=len(candidates),
        candidates_scored_fully=len(scored),
        speed=speed,
        speedups=speedups,
        notes=notes,
        objective=objective.name,
        search=scorer.stats,
        processes=processes.world_size,
    )


def static_capacities(model, methods: list[AtsMethod], source: ImageSource, quantile: float, batch_size: int = 64,
                      *, num_workers: int = 0, processes: Processes = ONE_PROCESS) -> list[AtsSettings]:
    """Each ATS method's settings in the static mode, with capacities calibrated at `quantile` of its adaptive kept
    counts on `source` (`ats_hf.calibration`): one pass of the loop for all of them."""
    evaluations, _ = evaluate_methods(model, methods, source, None, batch_size, num_workers=num_workers,
                                      processes=processes, description="tune: static-mode capacities")
    least = num_special_tokens(model.config) + 1
    calibrated = []
    for method, evaluation in zip(methods, evaluations, strict=True):
        if not method.settings.layers:  # dense: nothing to calibrate
            calibrated.append(method.settings)
            continue
        counts = evaluation.num_tokens[:, list(method.settings.layers)]
        calibrated.append(method.settings.replace(capacity=capacity_from_counts(counts, quantile, least)[0]))
    return calibrated


def measure_speedups(model, front: list[Score], tome: list[Score], calibration: ImageSource, speed: SpeedSpec,
                     batch_size: int = 64, *, num_workers: int = 0,
                     processes: Processes = ONE_PROCESS) -> dict[str, float]:
    """Measured throughput / dense throughput of every front point and ToMe point, timed interleaved on the main
    process on the first `speed.images` of the `calibration` images; the static mode's capacities come from all of
    them. Returns `{label: speed-up}` on every process."""
    methods = [AtsMethod(score.label, score.method.settings) for score in front]
    if speed.static:
        static = static_capacities(model, methods, calibration, speed.capacity_quantile, batch_size,
                                   num_workers=num_workers, processes=processes)
        methods = [AtsMethod(method.name, settings) for method, settings in zip(methods, static, strict=True)]
    methods = [dense_method(), *methods, *(score.method for score in tome)]
    speedups = None
    if processes.is_main:
        images = calibration.head(speed.images)
        results = [evaluate_method(model, method, images, batch_size=speed.batch_size) for method in methods]
        timed = time_methods(model, results, images, (speed.batch_size,), len(images), speed.repeats,
                             runtime=speed.runtime)
        speedups = {result.method.name: result.timings[speed.batch_size].speedup for result in timed[1:]}
    return processes.broadcast(speedups)


def format_report(result: TuneResult) -> str:
    """The front and the choice as a text table (the objective +- standard error, in points)."""
    dense = result.dense_gmacs
    lines = [f"target: {result.target.describe(result.speed, result.objective)}",
             f"objective: {result.objective} ({Objective(result.objective).unit}); +- one standard error",
             f"searched {result.candidates_screened} settings; {result.candidates_scored_fully} scored on the whole "
             f"calibration split ({result.dense_calibration.images} images); held out: "
             f"{result.dense_held_out.images} images",
             "",
             f"{'setting':58} {'GMACs':>8} {'% dense':>8} {'calibration':>14} {'held out':>14} {'speed-up':>9}"]

    def row(mark: str, calibration: Score, held: Score) -> str:
        speedup = 1.0 if calibration is result.dense_calibration else result.speedup(calibration)
        measured = "" if result.speed is None else ("      n/a" if speedup is None else f"{speedup:8.2f}x")
        return (f"{mark}{calibration.label:57.57} {calibration.gmacs:8.4f} {100 * calibration.gmacs / dense:7.1f}% "
                f"{calibration.value:7.2f} +-{calibration.standard_error:4.2f} "
                f"{held.value:7.2f} +-{held.standard_error:4.2f} {measured}").rstrip()

    if result.search is not None:
        lines.insert(3, f"search: {result.search.describe(result.processes)}")
    if result.speed is not None:
        lines.insert(2, f"speed-up: measured throughput / dense's ({result.speed.describe()}, "
                        f"{result.speed.images} calibration images, median of {result.speed.repeats})")
    lines.append(row(" ", result.dense_calibration, result.dense_held_out))
    for score in result.front:
        lines.append(row("*" if score is result.chosen else " ", score, result.held_out[score.label]))
    for score in result.tome_calibration:
        lines.append(row(" ", score, result.tome_held_out[score.label]))
    lines.append("")
    if result.chosen is None:
        lines.append("no setting on the front meets the target; the front above shows what is reachable")
    else:
        lines.append(f"chosen (*): {result.chosen.label}")
    lines += [f"note: {text}" for text in result.notes]
    return "\n".join(lines)


def plot_front(result: TuneResult, path: Path) -> Path:
    """The objective vs % of dense GMACs: every calibration score, the front (held-out scores with error bars),
    ToMe and the choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = result.dense_gmacs
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.scatter([100 * s.gmacs / dense for s in result.calibration], [s.value for s in result.calibration],
                 s=10, color="0.7", label="searched (calibration)")
    front_x = [100 * s.gmacs / dense for s in result.front]
    held = [result.held_out[s.label] for s in result.front]
    axes.errorbar(front_x, [h.value for h in held], yerr=[h.standard_error for h in held], marker="o",
                  color="tab:blue", label="front (held out)")
    if result.tome_calibration:
        tome = [result.tome_held_out[s.label] for s in result.tome_calibration]
        axes.errorbar([100 * s.gmacs / dense for s in tome], [s.value for s in tome],
                      yerr=[s.standard_error for s in tome], marker="s", color="tab:red", label="ToMe (held out)")
    if result.chosen is not None:
        chosen = result.held_out[result.chosen.label]
        axes.scatter([100 * chosen.gmacs / dense], [chosen.value], s=160, facecolors="none", edgecolors="black",
                     label="chosen")
    axes.axhline(result.dense_held_out.value, color="black", linestyle=":", label="dense (held out)")
    axes.set_xlabel("% of dense GMACs")
    axes.set_ylabel(Objective(result.objective).unit)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_tune_output(model, processor, result: TuneResult, output: Path, data_name: str) -> None:
    """Write tune.json and tune.png into `output`, and, when a setting was chosen, a checkpoint with it (config,
    weights, image processor, code, model card naming the objective and the held-out accuracy). The caller checks
    that `output` may be written (`ats_hf_common.paths.check_target`)."""
    from .hub.checkpoint import save_ats_checkpoint

    output.mkdir(parents=True, exist_ok=True)
    (output / "tune.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    plot_front(result, output / "tune.png")
    if result.chosen is None:
        return
    held = result.held_out[result.chosen.label]
    name = result.objective
    metrics = {f"held-out {name}": held.value, f"calibration {name}": result.chosen.value,
               f"dense held-out {name}": result.dense_held_out.value}
    model.set_ats(result.chosen.method.settings)
    save_ats_checkpoint(model, output, processor, model_id=output.name, base_model=None, ats_gmacs=held.gmacs,
                        gmacs_measured_on=data_name, metrics=metrics)


__all__ = ["Score", "SearchStats", "SpeedSpec", "Target", "TuneResult", "candidate_grid", "candidate_method",
           "choose", "format_report", "measure_speedups", "pareto_front", "plot_front", "static_capacities", "tune",
           "write_tune_output"]
