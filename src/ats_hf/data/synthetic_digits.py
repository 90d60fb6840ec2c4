"""Synthetic Digits: object-centric 64 x 64 images, one handwritten digit on a large textured background.

Each image places one of scikit-learn's bundled 8 x 8 handwritten digits (UCI optdigits, offline), scaled to
16..28 px, slightly rotated and sheared, in light ink at a random position on a 64 x 64 RGB canvas filled with a
darker, smooth random colour texture. With 8 px patches, 64 patches of which most show only background: the
situation in which token sampling pays off. Everything is a pure function of (split, number of images, seed).

The 1797 source digits are split once (fixed permutation): 1347 for "train", 450 for "test", so test images
never reuse a training digit.
"""

import math

import torch
import torch.nn.functional as F

IMAGE_SIZE = 64
NUM_CLASSES = 10
SPLITS = ("train", "test")
TEST_SEED = 2024
TEST_SIZE = 2000
DIGIT_SIZE = (16.0, 28.0)
_NUM_TEST_SOURCES = 450
_SPLIT_SEED = 0


def source_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The source digits of a split: (n, 8, 8) float32 ink in [0, 1] and (n,) long labels."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; choose one of {', '.join(SPLITS)}.")
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "synthetic_digits draws scikit-learn's bundled handwritten digits: pip install 'scikit-learn>=1.3'"
        ) from error

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    chosen = order[-_NUM_TEST_SOURCES:] if split == "test" else order[:-_NUM_TEST_SOURCES]
    return images[chosen], labels[chosen]


def generate(
    split: str,
    num_images: int,
    seed: int,
    digit_size: tuple[float, float] = DIGIT_SIZE,
    spread: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render `num_images` canvases from the digits of `split`.

    Args:
        digit_size: (smallest, largest) digit height in pixels, each in [4, 64]; drawn uniformly per image.
        spread: how far from the centre digits may sit, from 0 (always centred) to 1 (anywhere on the canvas).
    Returns:
        images: (N, 64, 64, 3) uint8, channels last.
        labels: (N,) long, the digit 0..9.
    """
    if num_images < 1:
        raise ValueError(f"num_images={num_images} must be >= 1.")
    if not 4 <= digit_size[0] <= digit_size[1] <= IMAGE_SIZE:
        raise ValueError(f"digit_size={digit_size} must be (smallest, largest) with 4 <= smallest <= largest <= 64.")
    if not 0.0 <= spread <= 1.0:
        raise ValueError(f"spread={spread} is outside [0, 1].")
    digits, digit_labels = source_digits(split)
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape, low=0.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    choice = torch.randint(len(digit_labels), (num_images,), generator=generator)
    ink = _place_digits(digits[choice], uniform, digit_size, spread)
    background, ink_color = _background_and_ink(num_images, uniform, generator)
    canvas = background * (1 - ink) + ink_color * ink
    images = (canvas.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return images, digit_labels[choice]


def test_split(num_images: int = TEST_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed evaluation split (seed `TEST_SEED`); its first n images are `test_split(n)`'s images too."""
    images, labels = generate("test", TEST_SIZE, TEST_SEED)
    return images[:num_images], labels[:num_images]


def to_pixel_values(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]: what the embedded model's image processor (mean = std =
    0.5) makes of them."""
    return (images.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


def as_dataset(images: torch.Tensor, labels: torch.Tensor):
    """A `datasets.Dataset` with an `image` (PIL) and a `label` (ClassLabel "0".."9") column."""
    from datasets import ClassLabel, Dataset, Features, Image

    features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(NUM_CLASSES)])})
    return Dataset.from_dict({"image": list(images.numpy()), "label": labels.tolist()}, features=features)


def _place_digits(digits: torch.Tensor, uniform, digit_size: tuple[float, float], spread: float) -> torch.Tensor:
    """(N, 8, 8) ink -> (N, 1, 64, 64) ink, each digit scaled, rotated, sheared and moved at random."""
    num_images = digits.shape[0]
    size = uniform(num_images, low=float(digit_size[0]), high=float(digit_size[1]))
    angle = uniform(num_images, low=-15.0, high=15.0) * math.pi / 180
    shear = uniform(num_images, low=-0.15, high=0.15)
    margin = spread * (1 - size / IMAGE_SIZE)
    center_x = uniform(num_images, low=-1.0, high=1.0) * margin
    center_y = uniform(num_images, low=-1.0, high=1.0) * margin
    # affine_grid maps output (canvas) coordinates to input (digit) coordinates, both in [-1, 1].
    scale = IMAGE_SIZE / size
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    linear = torch.stack([torch.stack([cos, sin + shear * cos], -1), torch.stack([-sin, cos - shear * sin], -1)], 1)
    offset = -(linear @ torch.stack([center_x, center_y], -1)[..., None])
    theta = torch.cat([linear, offset], dim=2)
    grid = F.affine_grid(theta, [num_images, 1, IMAGE_SIZE, IMAGE_SIZE], align_corners=False)
    return F.grid_sample(digits[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _background_and_ink(num_images: int, uniform, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 64, 64) textured backgrounds and (N, 3, 1, 1) ink colours that contrast with them."""

    def noise(channels, cells):
        field = torch.randn(num_images, channels, cells, cells, generator=generator)
        return F.interpolate(field, size=IMAGE_SIZE, mode="bicubic", align_corners=False)

    level = uniform(num_images, 1, 1, 1, low=0.1, high=0.45)
    tint = uniform(num_images, 3, 1, 1, low=-0.08, high=0.08)
    texture = 0.06 * noise(1, 4) + 0.04 * noise(3, 8) + 0.03 * noise(1, 32)
    background = level + tint + texture
    # Light ink on a darker background.
    ink_color = uniform(num_images, 1, 1, 1, low=0.75, high=1.0) + uniform(num_images, 3, 1, 1, low=-0.1, high=0.1)
    return background, ink_color


__all__ = [
    "DIGIT_SIZE",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "TEST_SEED",
    "TEST_SIZE",
    "as_dataset",
    "generate",
    "source_digits",
    "test_split",
    "to_pixel_values",
]
