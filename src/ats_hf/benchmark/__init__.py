"""The benchmark: dense vs ATS vs top-K vs random vs ToMe, in accuracy, GMACs and measured speed (`ats-hf benchmark`).

One concern per module: `results` (dataclasses, JSON), `engine` (evaluating and timing methods, sweeps, speed-mode
models), `timing` (interleaved throughput and its reliability), `runtimes` (eager, compile, onnxruntime), `report`
(table, plots). Every default is in `ats_hf_common.benchmark_defaults`; the methods compared are `ats_hf.methods`.

    from ats_hf.benchmark import run_benchmark, format_table, write_report
    result = run_benchmark(model, open_images(dataset, processor, model.config.id2label))
    print(format_table(result)); write_report(result, "outputs/benchmark")
"""

from .engine import (
    GEOMETRIES,
    default_ats_method,
    evaluate_method,
    matched_baselines,
    matched_tome,
    run_benchmark,
    run_speed_benchmark,
    speed_model,
    sweep_methods,
    time_methods,
)
from .report import format_table, timing_warning, write_report
from .results import BenchmarkResult, MethodResult, TimingResult
from .timing import Throughput, interleaved_throughput

__all__ = [
    "GEOMETRIES",
    "BenchmarkResult",
    "MethodResult",
    "Throughput",
    "TimingResult",
    "default_ats_method",
    "evaluate_method",
    "format_table",
    "interleaved_throughput",
    "matched_baselines",
    "matched_tome",
    "run_benchmark",
    "run_speed_benchmark",
    "speed_model",
    "sweep_methods",
    "time_methods",
    "timing_warning",
    "write_report",
]
