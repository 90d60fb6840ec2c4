"""Every default of the benchmark, in one place: the engine's function defaults, the command line's options and
its help text all read them here."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TimingDefaults:
    """What is timed: batch sizes, images per pass (rounded to whole batches), timed passes per method."""

    batch_sizes: tuple[int, ...]
    timing_images: int
    repeats: int


ACCURACY_MODE_TIMING = TimingDefaults(batch_sizes=(1, 256), timing_images=128, repeats=5)
SPEED_MODE_TIMING = TimingDefaults(batch_sizes=(1, 32), timing_images=16, repeats=5)
WARMUP_PASSES = 1  # untimed passes per method before the timed ones
EVAL_BATCH_SIZE = 64  # images per forward pass when measuring accuracy, GMACs and tokens
SEED = 0
# The embedded model's sweep: ATS in layers S..5 for each S (S = 3 is the setting it shipped until 2026-12-01).
SWEEP_FROM_LAYERS = (1, 2, 3, 4, 5)
SPEED_MODE_MAX_TOKENS = 0.5  # K of the ATS method in speed mode
ATTN_IMPLEMENTATION = "sdpa"
DTYPE = "float32"
RUNTIME = "eager"  # where methods are timed: eager, compile or onnxruntime
COMPILE_BACKEND = "inductor"  # torch.compile's backend in the compile runtime
OUTPUT_DIR = Path("outputs") / "benchmark"
SPEED_MODE_OUTPUT_DIR = Path("outputs") / "speed-{geometry}"
# A timing whose repeats differ by more than this fraction of their median ((max - min) / median) is unreliable.
UNRELIABLE_SPREAD = 0.5
