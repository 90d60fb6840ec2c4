"""Wall-clock throughput of several settings of one workload, measured interleaved, and whether it can be trusted.

Every repeat times one pass of each setting in turn (the order rotates from repeat to repeat), so that slow
phases of a shared machine hit all settings alike; the reported figure is the median over repeats. When repeats of
the same pass still differ a lot, another process was competing for the machine: `unreliable` names those timings.
"""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ats_hf_common.benchmark_defaults import UNRELIABLE_SPREAD, WARMUP_PASSES

from ..progress import Progress


@dataclass(frozen=True)
class Throughput:
    """Images per second of one setting: the median and every repeat's value."""

    images_per_second: float
    samples: tuple[float, ...]

    @property
    def spread(self) -> float:
        """(max - min) / median of the repeats: how noisy the measurement was."""
        return (max(self.samples) - min(self.samples)) / self.images_per_second


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (CUDA); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_throughput(
    passes: dict[str, Callable[[], int]],
    device: torch.device,
    repeats: int,
    warmup: int = WARMUP_PASSES,
    description: str = "timing",
) -> dict[str, Throughput]:
    """Time each pass `warmup + repeats` times, interleaved, and return its median throughput.

    Args:
        passes: setting name -> callable that runs one pass of the workload and returns how many images it ran.
        device: where the work runs (synchronised before and after every pass).
        repeats: timed passes per setting (>= 1); warmup: untimed passes per setting first (>= 0).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0.")
    names = list(passes)
    samples: dict[str, list[float]] = {name: [] for name in names}
    with Progress((warmup + repeats) * len(names), description) as progress:
        for round_index in range(warmup + repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                synchronize(device)
                start = time.perf_counter()
                num_images = passes[name]()
                synchronize(device)
                elapsed = time.perf_counter() - start
                if round_index >= warmup:
                    samples[name].append(num_images / elapsed)
                progress.update()
    return {name: Throughput(statistics.median(values), tuple(values)) for name, values in samples.items()}


def unreliable(spreads: dict[str, float], threshold: float = UNRELIABLE_SPREAD) -> dict[str, float]:
    """The timings (name -> spread) whose repeats differ by more than `threshold` of their median."""
    return {name: spread for name, spread in spreads.items() if spread > threshold}


def unreliable_timing_message(spreads: dict[str, float], threshold: float = UNRELIABLE_SPREAD) -> str | None:
    """A plain warning, with what to do, when any timing (name -> spread) is unreliable; None when all are fine."""
    noisy = unreliable(spreads, threshold)
    if not noisy:
        return None
    worst = max(noisy, key=noisy.get)
    threads = torch.get_num_threads()
    advice = (
        "rerun on a quiet machine (close other programs), and try one torch thread (--threads 1 of ats-hf benchmark, "
        "or OMP_NUM_THREADS=1 before any command)" if threads > 1
        else "rerun on a quiet machine (close other programs)"
    )
    return (
        f"warning: the timings are unreliable: {len(noisy)} of {len(spreads)} vary by more than "
        f"{100 * threshold:.0f}% between repeats (worst: {worst}, {100 * noisy[worst]:.0f}%). Another process is "
        f"probably competing for the CPU with this run's {threads} torch thread(s), which also makes the run slow. "
        f"Do not trust the speed-ups; {advice}."
    )


__all__ = ["Throughput", "interleaved_throughput", "synchronize", "unreliable", "unreliable_timing_message"]
