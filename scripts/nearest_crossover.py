"""Time the sampler's two nearest-value paths against each other: the (B, R, P) distance matrix and the binary
search (`ats_hf.ats_sampling._nearest`), on the shapes an ATS layer gives them, to place the device's limit
(`NEAREST_BY_DISTANCES_LIMIT` on the CPU, `NEAREST_BY_DISTANCES_LIMIT_ACCELERATOR` elsewhere) where they cross.

    python scripts/nearest_crossover.py                   # CPU, 1 thread; prints a table
    python scripts/nearest_crossover.py --device cuda      # on a GPU machine
    python scripts/nearest_crossover.py --quick            # two small shapes (what the test runs)

Each shape is timed interleaved (matrix, search, matrix, ...), medians of `--repeats`; the script exits with status 1
if the two paths ever pick different positions.
"""

import argparse
import statistics
import sys
import time

import torch

from ats_hf import ats_sampling

# (B, R, P): DeiT-S at batch 1 (K = 0.5, all), the clips at K = 1.0, DeiT-S at batches 8-256 (K = 0.5), videos of
# 513 and 1153 tokens at K = all.
SHAPES = ((1, 97, 195), (1, 195, 195), (1, 255, 256), (8, 97, 195), (32, 97, 195), (256, 97, 195), (1, 512, 512),
          (1, 1152, 1152))
QUICK_SHAPES = ((1, 8, 16), (4, 15, 32))


def sorted_cdf(batch_size: int, num_points: int, num_values: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A sampler's input to `_nearest`: (B, 1, P) normalised CDF values (three lowest patches at 0, marked 2; the last
    value exactly 1) and its (B, R, 1) points."""
    generator = torch.Generator().manual_seed(batch_size * 7 + num_points)
    values = torch.rand(batch_size, 1, num_values - 3, generator=generator).sort(dim=2).values
    values = torch.cat([torch.full((batch_size, 1, 3), 2.0), values], dim=2)
    values[:, :, -1] = 1.0
    values = values.to(device)
    lowest = values.masked_fill(values > 1, 3.0).amin(dim=2, keepdim=True)
    return values, ats_sampling._sample_points(lowest, num_points)


def time_path(values: torch.Tensor, points: torch.Tensor, limit: int, calls: int) -> tuple[float, torch.Tensor]:
    """Microseconds per `_nearest` call with the device's limit set to `limit`, and its result."""
    name = "NEAREST_BY_DISTANCES_LIMIT" if values.device.type == "cpu" else "NEAREST_BY_DISTANCES_LIMIT_ACCELERATOR"
    saved = getattr(ats_sampling, name)
    setattr(ats_sampling, name, limit)
    try:
        result = ats_sampling._nearest(values, points)
        if values.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            ats_sampling._nearest(values, points)
        if values.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / calls * 1e6, result
    finally:
        setattr(ats_sampling, name, saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats per shape (default 5)")
    parser.add_argument("--quick", action="store_true", help="two small shapes, few calls")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be >= 1")
    if args.threads < 1:
        parser.error(f"--threads {args.threads}: must be >= 1")
    torch.set_num_threads(args.threads)
    calls = 2 if args.quick else 20
    print(f"device {args.device}, {torch.get_num_threads()} threads; microseconds per call, medians of {args.repeats}")
    print(f"{'B':>4} {'R':>5} {'P':>5} {'entries':>9} {'matrix':>8} {'search':>8}  faster")
    agree = True
    for batch_size, num_points, num_values in QUICK_SHAPES if args.quick else SHAPES:
        values, points = sorted_cdf(batch_size, num_points, num_values, args.device)
        times = {"matrix": [], "search": []}
        for _ in range(args.repeats):
            for path, limit in (("matrix", 1 << 62), ("search", 0)):
                seconds, result = time_path(values, points, limit, calls)
                times[path].append(seconds)
                if path == "matrix":
                    expected = result
                elif not torch.equal(result, expected):
                    agree = False
        matrix, search = statistics.median(times["matrix"]), statistics.median(times["search"])
        entries = batch_size * num_points * num_values
        print(f"{batch_size:>4} {num_points:>5} {num_values:>5} {entries:>9} {matrix:>8.0f} {search:>8.0f}  "
              f"{'matrix' if matrix <= search else 'search'}")
    if not agree:
        print("the two paths picked different positions", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
