"""What the benchmark measures, as dataclasses: each compared method's score / GMACs / tokens, its timings, and a
whole run, with its JSON form. The methods themselves are `ats_hf.methods`."""

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..methods import Method


@dataclass(frozen=True)
class TimingResult:
    """Measured throughput of one method at one batch size, and how it compares with the reference (dense)."""

    batch_size: int
    num_images: int
    images_per_second: float  # median over the repeats
    samples: tuple[float, ...]  # images per second of every timed repeat
    reference_images_per_second: float  # the reference's median, on the same images
    # The ideal speed-up: the reference's GMACs / this method's on the same timed images, each method's executed
    # GMACs when it has them (static mode, dense), else its mean real-token GMACs (adaptive mode).
    gmacs_ratio: float

    @property
    def speedup(self) -> float:
        """Median throughput / the reference's."""
        return self.images_per_second / self.reference_images_per_second

    @property
    def speedup_range(self) -> tuple[float, float]:
        """(slowest, fastest) repeat / the reference's median: how far the speed-up moved with the noise."""
        reference = self.reference_images_per_second
        return min(self.samples) / reference, max(self.samples) / reference

    @property
    def spread(self) -> float:
        """(fastest - slowest repeat) / median: how noisy the measurement was."""
        return (max(self.samples) - min(self.samples)) / statistics.median(self.samples)

    @property
    def efficiency(self) -> float:
        """Measured speed-up / GMACs ratio: 1.0 means the saved compute is fully turned into speed."""
        return self.speedup / self.gmacs_ratio

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup, "spread": self.spread, "efficiency": self.efficiency}


@dataclass(frozen=True)
class MethodResult:
    """Everything measured for one method."""

    method: Method
    score: float | None  # the run's objective x 100 (top-1 % for accuracy and agreement); None: not scored
    gmacs_mean: float
    gmacs_std: float
    tokens_per_layer: tuple[float, ...]  # mean tokens out of each layer, special tokens included
    tokens_per_layer_std: tuple[float, ...]
    timings: dict[int, TimingResult] = field(default_factory=dict)  # batch size -> timing
    gmacs: torch.Tensor | None = field(default=None, repr=False, compare=False)  # (N,) per image; not in JSON
    # GMACs per image the hardware executes when it is the same for every image: the static mode's capacity rows
    # (`flops.static_gmacs`), or dense; None in the adaptive mode (rows = the batch's largest kept count).
    executed_gmacs: float | None = None
    preparation_seconds: float | None = None  # compiling (first calls) or exporting before timing; None in eager
    notes: tuple[str, ...] = ()  # what the runtime reported, e.g. the exported graph's check against PyTorch

    def to_dict(self) -> dict:
        return {
            "method": self.method.to_dict(),
            "score": self.score,
            "gmacs_mean": self.gmacs_mean,
            "gmacs_std": self.gmacs_std,
            "tokens_per_layer": list(self.tokens_per_layer),
            "tokens_per_layer_std": list(self.tokens_per_layer_std),
            "executed_gmacs": self.executed_gmacs,
            "preparation_seconds": self.preparation_seconds,
            "notes": list(self.notes),
            "timings": [timing.to_dict() for timing in self.timings.values()],
        }


@dataclass(frozen=True)
class BenchmarkResult:
    """A whole run: the compared methods (with timings), the sweep points (score and GMACs only), where it ran,
    and notes for the reader (e.g. why there is no accuracy)."""

    model: str
    data: str
    num_images: int
    dense_gmacs: float
    methods: list[MethodResult]
    sweep: list[MethodResult]
    machine: dict
    command: str = ""
    notes: list[str] = field(default_factory=list)
    runtime: str = "eager"  # where the methods were timed: eager, compile or onnxruntime
    profiles: list = field(default_factory=list)  # `profiling.LayerProfile`s of dense and ATS at batch 1 (--profile)
    objective: str = "accuracy"  # what `MethodResult.score` is: accuracy, agreement or fidelity (see evaluation)
    processes: int = 1  # processes that shared the evaluation (timings: the main process alone)
    evaluation: dict = field(default_factory=dict)  # the evaluation loop on the main process: images/s, time shares

    def method(self, name: str) -> MethodResult:
        for result in self.methods:
            if result.method.name == name:
                return result
        raise KeyError(f"no method {name!r}; have {[r.method.name for r in self.methods]}")

    @property
    def batch_sizes(self) -> list[int]:
        """The timed batch sizes, ascending."""
        return sorted({b for r in self.methods for b in r.timings})

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "data": self.data,
            "num_images": self.num_images,
            "dense_gmacs": self.dense_gmacs,
            "runtime": self.runtime,
            "objective": self.objective,
            "processes": self.processes,
            "evaluation_main_process": self.evaluation,  # this process's share under several processes
            "command": self.command,
            "machine": self.machine,
            "notes": list(self.notes),
            "methods": [r.to_dict() for r in self.methods],
            "sweep": [r.to_dict() for r in self.sweep],
            "profiles": [p.to_dict() for p in self.profiles],
        }

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


__all__ = ["BenchmarkResult", "MethodResult", "TimingResult"]
