"""Synthetic Clips: 8-frame 64 x 64 videos of a handwritten digit drifting across a static textured background.

The video counterpart of `synthetic_digits`, drawn with its rendering (same source digits and split, digit
placement, background texture and ink colours). Everything is a pure function of (split, number of clips, seed).

The task: 4 classes, the direction in which the moving digit drifts.

    label 0 "left", 1 "right", 2 "up" (towards row 0), 3 "down"

Each clip is built as follows:

- a static background: one `synthetic_digits` textured canvas (no digit), the same in every frame;
- `distractors` static digits (1 by default), placed like `synthetic_digits` places its digit, the same in every
  frame: ink that is no motion;
- one moving digit of the same ink colour, scaled (16-28 px), rotated and sheared like `synthetic_digits`' digits.
  Frame t shows it shifted by `start + t * speed * direction` pixels from the canvas centre, modulo 64 on both
  axes: it moves a whole number `speed` of pixels per frame (2-4, drawn per clip) in the class direction and wraps
  around the edges (it leaves on one side and comes back on the other). Its shape never changes: frame t + 1's
  moving digit is frame t's, rolled by `speed` pixels.

Why the class needs temporal information: `start` is uniform over all 64 x 64 whole-pixel shifts and independent of
everything else, so in any single frame the moving digit sits at a uniformly random position whatever the class:
the distribution of every single frame is exactly the same for the 4 classes (one frame alone gives 25% at best).
The direction exists only in how frames differ. Most patches are redundant across frames: the background and the
distractor do not change, and the moving digit covers a minority of the 64 patches of a frame.

Labels are exactly balanced: `num_clips` clips hold every class `num_clips // 4` or `num_clips // 4 + 1` times. The
moving and distractor digits of a split come from `synthetic_digits.source_digits(split)`, so test clips never reuse
a training digit.

For a video transformer with tubelets of 2 frames x 8 x 8 px: 4 x 64 = 256 tokens per clip, few of them informative.
`to_pixel_values` normalises like `synthetic_digits` (mean = std = 0.5); the same from a `VivitImageProcessor`:
`VivitImageProcessor(do_resize=False, do_center_crop=False, rescale_factor=1 / 255, offset=False, image_mean=0.5,
image_std=0.5)` on `as_dataset`'s "video" column (a list of frames per clip).
"""

from typing import NamedTuple

import torch

from ats_hf.data.synthetic_digits import (
    DIGIT_SIZE,
    IMAGE_SIZE,
    SPLITS,
    _background_and_ink,
    _place_digits,
    source_digits,
)

NUM_FRAMES = 8
NUM_CLASSES = 4
CLASS_NAMES = ("left", "right", "up", "down")
# (dx, dy) of each class in pixels per unit of speed, y pointing down (row index).
DIRECTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1))
SPEED = (2, 4)
DISTRACTORS = 1
TEST_SEED = 2025
TEST_SIZE = 1000


class Clips(NamedTuple):
    """`generate_with_details`' answer: the clips, their labels and how each was drawn."""

    clips: torch.Tensor  # (N, T, 64, 64, 3) uint8
    labels: torch.Tensor  # (N,) long, index into CLASS_NAMES
    digit_index: torch.Tensor  # (N,) long: the moving digit, a row of source_digits(split)
    distractor_index: torch.Tensor  # (N, distractors) long: the static digits, rows of source_digits(split)
    speed: torch.Tensor  # (N,) long, pixels per frame
    start: torch.Tensor  # (N, 2) long, (x, y) shift of the moving digit from the canvas centre in frame 0, 0..63


def generate(
    split: str,
    num_clips: int,
    seed: int,
    num_frames: int = NUM_FRAMES,
    digit_size: tuple[float, float] = DIGIT_SIZE,
    speed: tuple[int, int] = SPEED,
    distractors: int = DISTRACTORS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render `num_clips` clips from the digits of `split`.

    Args:
        num_frames: frames per clip, >= 2.
        digit_size: (smallest, largest) digit height in pixels, each in [4, 64]; drawn uniformly per digit.
        speed: (slowest, fastest) whole pixels per frame, 1 <= slowest <= fastest <= 16; drawn uniformly per clip.
        distractors: static digits per clip, >= 0.
    Returns:
        clips: (N, T, 64, 64, 3) uint8, channels last.
        labels: (N,) long, the direction: 0 left, 1 right, 2 up, 3 down (`CLASS_NAMES`).
    """
    details = generate_with_details(split, num_clips, seed, num_frames, digit_size, speed, distractors)
    return details.clips, details.labels


def generate_with_details(
    split: str,
    num_clips: int,
    seed: int,
    num_frames: int = NUM_FRAMES,
    digit_size: tuple[float, float] = DIGIT_SIZE,
    speed: tuple[int, int] = SPEED,
    distractors: int = DISTRACTORS,
) -> Clips:
    """`generate`, with the source digits, speed and start of every clip (the same clips and labels)."""
    if num_clips < 1:
        raise ValueError(f"num_clips={num_clips} must be >= 1.")
    if num_frames < 2:
        raise ValueError(f"num_frames={num_frames} must be >= 2: the class is a motion.")
    if not 4 <= digit_size[0] <= digit_size[1] <= IMAGE_SIZE:
        raise ValueError(f"digit_size={digit_size} must be (smallest, largest) with 4 <= smallest <= largest <= 64.")
    if not (isinstance(speed[0], int) and isinstance(speed[1], int) and 1 <= speed[0] <= speed[1] <= 16):
        raise ValueError(
            f"speed={speed} must be whole pixels per frame (slowest, fastest) with 1 <= slowest <= fastest <= 16."
        )
    if distractors < 0:
        raise ValueError(f"distractors={distractors} must be >= 0.")
    digits, _ = source_digits(split)  # checks the split
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape, low=0.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    labels = torch.randperm(num_clips, generator=generator) % NUM_CLASSES
    digit_index = torch.randint(len(digits), (num_clips,), generator=generator)
    distractor_index = torch.randint(len(digits), (num_clips, distractors), generator=generator)
    mover = _place_digits(digits[digit_index], uniform, digit_size, spread=0.0)[:, 0]  # centred, (N, 64, 64)
    static = torch.zeros(num_clips, 1, IMAGE_SIZE, IMAGE_SIZE)
    if distractors:
        placed = _place_digits(digits[distractor_index.flatten()], uniform, digit_size, spread=1.0)
        static = placed.view(num_clips, distractors, IMAGE_SIZE, IMAGE_SIZE).amax(dim=1, keepdim=True)
    background, ink_color = _background_and_ink(num_clips, uniform, generator)
    clip_speed = torch.randint(speed[0], speed[1] + 1, (num_clips,), generator=generator)
    start = torch.randint(IMAGE_SIZE, (num_clips, 2), generator=generator)

    velocity = torch.tensor(DIRECTIONS)[labels] * clip_speed[:, None]  # (N, 2) as (x, y)
    contrast = ink_color - background  # canvas = background * (1 - ink) + ink_color * ink
    pixels = torch.arange(IMAGE_SIZE)
    clips = torch.empty(num_clips, num_frames, IMAGE_SIZE, IMAGE_SIZE, 3, dtype=torch.uint8)
    for frame in range(num_frames):
        shift_x, shift_y = (start + frame * velocity).unbind(-1)
        # Roll every clip's moving digit by its own shift: out[y, x] = mover[(y - shift_y) % 64, (x - shift_x) % 64].
        rows = (pixels[None, :] - shift_y[:, None]) % IMAGE_SIZE
        cols = (pixels[None, :] - shift_x[:, None]) % IMAGE_SIZE
        moved = mover.gather(1, rows[:, :, None].expand(-1, -1, IMAGE_SIZE))
        moved = moved.gather(2, cols[:, None, :].expand(-1, IMAGE_SIZE, -1))
        ink = torch.maximum(moved[:, None], static)
        canvas = torch.addcmul(background, contrast, ink).clamp_(0, 1).mul_(255).round_()
        clips[:, frame] = canvas.permute(0, 2, 3, 1)  # to uint8
    return Clips(clips, labels, digit_index, distractor_index, clip_speed, start)


def test_split(num_clips: int = TEST_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed evaluation split (seed `TEST_SEED`); its first n clips are `test_split(n)`'s clips too."""
    clips, labels = generate("test", TEST_SIZE, TEST_SEED)
    return clips[:num_clips], labels[:num_clips]


def to_pixel_values(clips: torch.Tensor) -> torch.Tensor:
    """(N, T, H, W, 3) uint8 -> (N, T, 3, H, W) float in [-1, 1]: mean = std = 0.5, as `synthetic_digits`."""
    return (clips.permute(0, 1, 4, 2, 3).float() / 255.0 - 0.5) / 0.5


def as_dataset(clips: torch.Tensor, labels: torch.Tensor):
    """A `datasets.Dataset` with a `video` column (a list of T PIL frames per clip, what `VivitImageProcessor` takes)
    and a `label` column (ClassLabel of `CLASS_NAMES`)."""
    from datasets import ClassLabel, Dataset, Features, Image, Sequence
    from PIL import Image as PILImage

    features = Features({"video": Sequence(Image()), "label": ClassLabel(names=list(CLASS_NAMES))})
    videos = [[PILImage.fromarray(frame) for frame in clip] for clip in clips.numpy()]
    return Dataset.from_dict({"video": videos, "label": labels.tolist()}, features=features)


__all__ = [
    "CLASS_NAMES",
    "DIGIT_SIZE",
    "DIRECTIONS",
    "DISTRACTORS",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "NUM_FRAMES",
    "SPEED",
    "SPLITS",
    "TEST_SEED",
    "TEST_SIZE",
    "Clips",
    "as_dataset",
    "generate",
    "generate_with_details",
    "test_split",
    "to_pixel_values",
]
