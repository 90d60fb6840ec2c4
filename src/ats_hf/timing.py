"""Wall-clock throughput of several settings of one workload, measured interleaved.

Every repeat times one pass of each setting in turn (the order rotates from repeat to repeat), so that slow
phases of a shared machine hit all settings alike; the reported figure is the median over repeats.
"""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class Throughput:
    """Images per second of one setting: the median and every repeat's value."""

    images_per_second: float
    samples: list[float]

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
    repeats: int = 5,
    warmup: int = 1,
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
    with tqdm(total=(warmup + repeats) * len(names), desc=description, leave=False, disable=None) as progress:
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
    return {name: Throughput(statistics.median(values), values) for name, values in samples.items()}


__all__ = ["Throughput", "interleaved_throughput", "synchronize"]
