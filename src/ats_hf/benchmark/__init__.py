"""The benchmark: dense vs ATS vs top-K vs random, in accuracy, GMACs and measured speed (`ats-hf benchmark`).

One concern per module: `results` (dataclasses, JSON), `engine` (evaluating and timing methods, sweeps, speed-mode
models), `timing` (interleaved throughput and its reliability), `report` (table, plots), `cli` (the command),
`defaults` (every default, in one place).

    from ats_hf.benchmark import run_benchmark, format_table, write_report
    result = run_benchmark(model, pixel_values, labels)
    print(format_table(result)); write_report(result, "outputs/benchmark")
"""

from ..data import DEFAULT_MODEL_DIR
from .engine import (
    GEOMETRIES,
    describe_machine,
    evaluate_method,
    matched_baselines,
    run_benchmark,
    run_speed_benchmark,
    speed_model,
    sweep_methods,
    time_methods,
)
from .report import format_table, timing_warning, write_report
from .results import BenchmarkResult, Method, MethodResult, TimingResult
from .timing import Throughput, interleaved_throughput

__all__ = [
    "DEFAULT_MODEL_DIR",
    "GEOMETRIES",
    "BenchmarkResult",
    "Method",
    "MethodResult",
    "Throughput",
    "TimingResult",
    "describe_machine",
    "evaluate_method",
    "format_table",
    "interleaved_throughput",
    "matched_baselines",
    "run_benchmark",
    "run_speed_benchmark",
    "speed_model",
    "sweep_methods",
    "time_methods",
    "timing_warning",
    "write_report",
]
