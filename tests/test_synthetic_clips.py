"""The synthetic video benchmark's data (ats_hf.data.synthetic_clips): a digit drifting left, right, up or down."""

import pytest
import torch

from ats_hf.data import synthetic_clips as clips_module
from ats_hf.data import synthetic_digits


@pytest.fixture(scope="module")
def full_test_split():
    return clips_module.test_split()


def test_generator_is_a_pure_function_of_its_arguments():
    first, first_labels = clips_module.generate("test", 12, seed=5)
    again, again_labels = clips_module.generate("test", 12, seed=5)
    other, _ = clips_module.generate("test", 12, seed=6)
    train, _ = clips_module.generate("train", 12, seed=5)
    assert first.shape == (12, clips_module.NUM_FRAMES, 64, 64, 3) and first.dtype == torch.uint8
    assert first_labels.shape == (12,) and first_labels.dtype == torch.long
    assert torch.equal(first, again) and torch.equal(first_labels, again_labels)
    assert not torch.equal(first, other) and not torch.equal(first, train)
    longer, _ = clips_module.generate("test", 3, seed=5, num_frames=16)
    assert longer.shape == (3, 16, 64, 64, 3)
    assert clips_module.NUM_CLASSES == len(clips_module.CLASS_NAMES) == len(clips_module.DIRECTIONS) == 4


def test_test_split_is_fixed_and_balanced(full_test_split):
    prefix, prefix_labels = clips_module.test_split(10)
    full, full_labels = full_test_split
    assert len(full) == clips_module.TEST_SIZE and torch.equal(prefix, full[:10])
    assert torch.equal(prefix_labels, full_labels[:10])
    counts = torch.bincount(full_labels, minlength=clips_module.NUM_CLASSES)
    assert counts.tolist() == [clips_module.TEST_SIZE // 4] * 4
    _, odd_labels = clips_module.generate("train", 103, seed=1)
    odd_counts = torch.bincount(odd_labels, minlength=4)
    assert odd_counts.sum() == 103 and odd_counts.max() - odd_counts.min() <= 1, "exactly balanced for any count"


def _shift_between(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(x, y) whole-pixel circular shift s maximising sum_p first(p) * second(p + s), in [-32, 31]; (..., 64, 64)."""
    correlation = torch.fft.ifft2(torch.fft.fft2(first).conj() * torch.fft.fft2(second)).real
    peak = correlation.flatten(-2).argmax(-1)
    shift_y, shift_x = (peak // 64 + 32) % 64 - 32, (peak % 64 + 32) % 64 - 32
    return torch.stack([shift_x, shift_y], -1)


def test_the_only_change_between_frames_is_the_digit_moving_in_the_labelled_direction():
    details = clips_module.generate_with_details("test", 200, seed=7)
    frames = details.clips.float().sum(-1)  # (N, T, 64, 64)
    expected = torch.tensor(clips_module.DIRECTIONS)[details.labels] * details.speed[:, None]  # (N, 2) as (x, y)
    assert details.speed.min() >= clips_module.SPEED[0] and details.speed.max() <= clips_module.SPEED[1]
    # Background and distractor cancel in frame differences; what is left moves by the clip's velocity.
    changes = frames[:, 1:] - frames[:, :-1]
    measured = _shift_between(changes[:, :-1], changes[:, 1:])  # (N, T - 2, 2)
    agrees = (measured == expected[:, None]).all(-1)
    assert agrees.float().mean() > 0.99
    codes = (measured[..., 0] + 32) * 64 + measured[..., 1] + 32
    assert torch.equal(codes.mode(dim=1).values, (expected[:, 0] + 32) * 64 + expected[:, 1] + 32), "every clip"
    # Direction by class name, in image coordinates (row 0 at the top).
    unit = {"left": [-1, 0], "right": [1, 0], "up": [0, -1], "down": [0, 1]}
    names = [clips_module.CLASS_NAMES[label] for label in details.labels.tolist()]
    assert expected.sign().tolist() == [unit[name] for name in names]


def test_most_patches_are_redundant_across_frames(full_test_split):
    clips = full_test_split[0][:200]
    unchanged = (clips[:, 1:] == clips[:, :-1]).all(-1)  # (N, T - 1, 64, 64)
    patches = unchanged.unflatten(2, (8, 8)).unflatten(4, (8, 8)).all(dim=3).all(dim=-1)  # 8 x 8 px patches
    assert 0.6 < patches.float().mean() < 0.95, "most 8 px patches are identical in consecutive frames"
    assert not patches.all(-1).all(-1).any(), "every clip changes between every two frames"


def test_test_clips_never_reuse_a_training_digit():
    details = clips_module.generate_with_details("test", 300, seed=11)
    test_sources, _ = synthetic_digits.source_digits("test")
    train_sources, _ = synthetic_digits.source_digits("train")
    used = torch.cat([details.digit_index, details.distractor_index.flatten()])
    assert details.distractor_index.shape == (300, clips_module.DISTRACTORS)
    assert used.min() >= 0 and used.max() < len(test_sources)
    train_set = {tuple(image.flatten().tolist()) for image in train_sources}
    reused = {index for index in used.unique().tolist() if tuple(test_sources[index].flatten().tolist()) in train_set}
    assert len(reused) <= 5  # the few exact duplicates within UCI optdigits itself


def test_pixel_values_match_a_vivit_image_processor_on_the_dataset():
    from transformers import VivitImageProcessor

    clips, labels = clips_module.generate("test", 3, seed=2)
    pixel_values = clips_module.to_pixel_values(clips)
    assert pixel_values.shape == (3, clips_module.NUM_FRAMES, 3, 64, 64) and pixel_values.dtype == torch.float32
    assert pixel_values.min() >= -1 and pixel_values.max() <= 1
    dataset = clips_module.as_dataset(clips, labels)
    assert dataset.features["label"].names == list(clips_module.CLASS_NAMES)
    video = dataset[0]["video"]
    assert len(video) == clips_module.NUM_FRAMES and video[0].size == (64, 64) and dataset[0]["label"] == labels[0]
    processor = VivitImageProcessor(
        do_resize=False, do_center_crop=False, rescale_factor=1 / 255, offset=False, image_mean=0.5, image_std=0.5
    )
    processed = processor([row["video"] for row in dataset], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(processed, pixel_values, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(split="validation", num_clips=1, seed=0), "split='validation'"),
        (dict(split="test", num_clips=0, seed=0), "num_clips=0"),
        (dict(split="test", num_clips=1, seed=0, num_frames=1), "num_frames=1"),
        (dict(split="test", num_clips=1, seed=0, digit_size=(2.0, 8.0)), "digit_size"),
        (dict(split="test", num_clips=1, seed=0, speed=(0, 2)), "speed=(0, 2)"),
        (dict(split="test", num_clips=1, seed=0, speed=(1.5, 2)), "speed=(1.5, 2)"),
        (dict(split="test", num_clips=1, seed=0, distractors=-1), "distractors=-1"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        clips_module.generate(**kwargs)
