"""Images to evaluate on, streamed: the embedded synthetic test split, an image folder (with class sub-folders:
labelled; flat: unlabelled), a saved `datasets` dataset, or a Hub dataset, decoded and run through the model's image
processor batch by batch (in DataLoader worker processes), so that memory depends on the batch size, not on the
number of images.

    source = open_images("path/to/folder", processor, model.config.id2label, num_images=50_000)
    for pixel_values, labels in source.batches(batch_size=64, num_workers=4): ...

Dataset classes are matched to the model's labels by name (case, spaces and underscores aside; an ImageNet-style
label "tabby, tabby cat" also answers to "tabby"), never silently by position: class names that the model does not
know are an error that shows both label sets.
"""

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import PIL.Image
import torch

from ats_hf_common.paths import is_local_path

from ..data import synthetic_clips, synthetic_digits


class UnreadableImageError(ValueError):
    """An image or video frame of a dataset that cannot be decoded; the message names the images and the error (for
    a local file, its path). The command line reports it in one line."""

    user_data_error = True


class ImageSource(torch.utils.data.Dataset):
    """N images read and processed on demand; item i -> ((C, H, W) pixel values, label id or -1).

    Attributes:
        labels: (N,) the model's label ids, or None (unlabelled: no accuracy).
        description: one line saying what the data is; notes: what the user should know (e.g. why no labels).
        class_names: the name of every label id (zero-shot prompts), or None when the data names no classes.
    """

    def __init__(
        self,
        read: Callable[[list[int]], list],
        size: int,
        processor,
        labels: torch.Tensor | None,
        description: str,
        notes: Sequence[str] = (),
        class_names: Sequence[str] | None = None,
    ):
        self.read, self.size, self.processor = read, size, processor
        self.labels, self.description, self.notes = labels, description, list(notes)
        self.class_names = None if class_names is None else list(class_names)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixel_values, labels = self.__getitems__([index])
        return pixel_values[0], int(labels[0])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, C, H, W) pixel values of images `indices` ((b, T, C, H, W) of videos; one processor call) and their
        (b,) labels (-1: none)."""
        indices = list(indices)
        try:
            images = self.read(indices)
        except (OSError, PIL.Image.DecompressionBombError) as error:  # PIL: UnidentifiedImageError, truncated file
            raise UnreadableImageError(
                f"cannot decode image(s) among numbers {indices[0]}..{indices[-1]} of {self.description}: {error}"
            ) from error
        pixel_values = self.processor(images, return_tensors="pt")["pixel_values"]
        labels = self.labels[indices] if self.labels is not None else torch.full((len(indices),), -1)
        return pixel_values, labels

    def subset(self, start: int, stop: int, description: str) -> "ImageSource":
        """Images `start .. stop - 1` as a source of their own (e.g. a calibration or held-out split)."""
        if not 0 <= start < stop <= self.size:
            raise ValueError(f"images {start}..{stop - 1} are outside this source's 0..{self.size - 1}.")
        labels = None if self.labels is None else self.labels[start:stop]
        return ImageSource(_Shifted(self.read, start), stop - start, self.processor, labels, description, self.notes,
                           self.class_names)

    def head(self, count: int) -> torch.Tensor:
        """(min(count, N), C, H, W) pixel values of the first images, in memory (timing, export checks)."""
        return self.__getitems__(list(range(min(count, self.size))))[0]

    def batches(
        self, batch_size: int, num_workers: int = 0, batch_indices: Sequence[int] | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(pixel values (b, C, H, W), labels (b,)) of consecutive batches of `batch_size` images (the last may be
        smaller), or only of the batches numbered `batch_indices`, decoded by `num_workers` worker processes (0: in
        this one)."""
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size={batch_size} must be >= 1 and num_workers={num_workers} >= 0.")
        starts = range(0, self.size, batch_size)
        chosen = starts if batch_indices is None else [starts[index] for index in batch_indices]
        sampler = [list(range(start, min(start + batch_size, self.size))) for start in chosen]
        loader = torch.utils.data.DataLoader(
            self, batch_sampler=sampler, collate_fn=_whole_batch, num_workers=num_workers,
            prefetch_factor=2 if num_workers else None, persistent_workers=False,
        )
        try:
            yield from loader
        except UnreadableImageError as error:  # from a worker, its message is the worker's whole traceback
            last_line = str(error).strip().splitlines()[-1]
            raise UnreadableImageError(last_line.split(f"{UnreadableImageError.__name__}: ", 1)[-1]) from None


def num_batches(num_images: int, batch_size: int) -> int:
    """How many batches `ImageSource.batches` yields."""
    return -(-num_images // batch_size)


def _whole_batch(batch):
    """The DataLoader's collate step: `__getitems__` already made the batch."""
    return batch


def open_images(
    dataset: str | os.PathLike | None,
    processor,
    id2label: dict[int, str] | None = None,
    split: str | None = None,
    num_images: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    seed: int = 0,
    videos: bool = False,
) -> ImageSource:
    """The images (or videos) a tool evaluates on, not yet decoded.

    Args:
        dataset: None for the embedded synthetic test split; else a folder of images (class sub-folders: labelled;
            images directly in it: unlabelled), a folder written by `Dataset.save_to_disk`, or a Hub dataset id.
        processor: the model's image processor; id2label: the model's labels (dataset classes are matched by name;
            None: a model without a classifier head, the labels are kept as the dataset's ids).
        split: the split to read (default: the first of test, validation, train); num_images: how many (>= 1;
            default all), drawn in a fixed shuffled order (`seed`) so that sorted folders mix classes.
        videos: a video model's data: the embedded synthetic clips, or a dataset column of frame lists (a
            `Sequence(Image())` feature, e.g. `synthetic_clips.as_dataset`), each clip processed as one video.
    Raises:
        FileNotFoundError: a local dataset folder that does not exist.
        ValueError: an empty dataset, an unknown split or column, or classes that do not match the model's labels.
    """
    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images={num_images} must be >= 1.")
    if dataset is None and videos:
        clips, labels = synthetic_clips.test_split(num_images or synthetic_clips.TEST_SIZE)
        description = f"synthetic clips test split (seed {synthetic_clips.TEST_SEED}), {len(labels)} clips"
        return ImageSource(_InMemoryClips(clips.numpy()), len(labels), processor, labels, description,
                           class_names=list(synthetic_clips.CLASS_NAMES))
    if dataset is None:
        images, labels = synthetic_digits.test_split(num_images or synthetic_digits.TEST_SIZE)
        description = f"synthetic digits test split (seed {synthetic_digits.TEST_SEED}), {len(labels)} images"
        return ImageSource(_InMemoryImages(images.numpy()), len(labels), processor, labels, description,
                           class_names=[str(digit) for digit in range(synthetic_digits.NUM_CLASSES)])

    table, split = _open_split(dataset, split)
    if len(table) == 0:
        raise ValueError(f"dataset {os.fspath(dataset)!r} [{split}] holds no images.")
    if videos:
        image_column = image_column or _find_video_column(table)
    else:
        image_column = image_column or _find_column(table, "Image", ("image", "img", "picture"))
    label_column = label_column or _find_column(table, "ClassLabel", ("label", "labels", "fine_label"), required=False)
    for column in (image_column, label_column):
        if column is not None and column not in table.column_names:
            raise ValueError(f"column {column!r} is not in the dataset; its columns are {table.column_names}.")
    _check_image_column(table, image_column, videos)
    if label_column is not None:
        _check_label_column(table, label_column)
    table = table.shuffle(seed=seed).select(range(min(len(table), num_images or len(table))))
    description = f"{os.fspath(dataset)} [{split}], {len(table)} images"
    read = (_TableVideos if videos else _TableImages)(table, image_column)
    if label_column is None:
        return ImageSource(read, len(table), processor, None, description, [_why_no_labels(dataset, table)])
    if id2label is None:
        labels = torch.as_tensor(table[label_column], dtype=torch.long)
        names = getattr(table.features[label_column], "names", None)
        return ImageSource(read, len(table), processor, labels, description, class_names=names)
    labels, notes = to_model_labels(table, label_column, id2label)
    return ImageSource(read, len(table), processor, labels, description, notes)


def tensor_images(pixel_values: torch.Tensor, labels: torch.Tensor | None = None, description: str = "") -> ImageSource:
    """Images already processed, (N, C, H, W) pixel values (and (N,) label ids), as a source."""
    return ImageSource(_InMemoryImages(pixel_values), len(pixel_values), _stack, labels,
                       description or f"{len(pixel_values)} processed images")


def as_source(images, labels: torch.Tensor | None = None) -> ImageSource:
    """`images` as a source: an `ImageSource` as it is (it carries its own labels: `labels` must be None), or (N, C, H,
    W) processed pixel values ((N, T, C, H, W) videos) with (N,) label ids or None."""
    if isinstance(images, ImageSource):
        if labels is not None:
            raise ValueError("an ImageSource carries its own labels; pass labels=None with it.")
        return images
    if not isinstance(images, torch.Tensor) or images.dim() not in (4, 5):
        raise ValueError(f"images must be an ImageSource, (N, C, H, W) pixel values or (N, T, C, H, W) videos, got "
                         f"{_shape_of(images)}.")
    if labels is not None and labels.shape != (len(images),):
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match the {len(images)} images.")
    return tensor_images(images, labels)


def _shape_of(value) -> str:
    return f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def _stack(images: list, return_tensors: str = "pt") -> dict:
    """What an image processor returns, for images that are pixel values already."""
    return {"pixel_values": torch.stack(images)}


class _InMemoryImages:
    """Images held in memory (an (N, H, W, 3) uint8 array, or (N, C, H, W) pixel values); call with indices -> their
    items."""

    def __init__(self, images):
        self.images = images

    def __call__(self, indices: list[int]) -> list:
        return list(self.images[indices])


class _InMemoryClips(_InMemoryImages):
    """Videos held in memory, an (N, T, H, W, 3) uint8 array; call with indices -> one list of frames per video (an
    image processor reads a bare (T, H, W, 3) array as a batch of videos)."""

    def __call__(self, indices: list[int]) -> list:
        return [list(clip) for clip in self.images[indices]]


class _Shifted:
    """Another reader's images from `offset` on; call with indices -> theirs."""

    def __init__(self, read: Callable[[list[int]], list], offset: int):
        self.read, self.offset = read, offset

    def __call__(self, indices: list[int]) -> list:
        return self.read([self.offset + index for index in indices])


class _TableImages:
    """The image column of a `datasets.Dataset`; call with indices -> their RGB PIL images (decoded then)."""

    def __init__(self, table, column: str):
        self.table, self.column = table, column

    def __call__(self, indices: list[int]) -> list:
        return [image.convert("RGB") for image in self.table[indices][self.column]]


class _TableVideos(_TableImages):
    """A column of frame lists of a `datasets.Dataset`; call with indices -> one list of RGB PIL frames per video."""

    def __call__(self, indices: list[int]) -> list:
        return [[frame.convert("RGB") for frame in video] for video in self.table[indices][self.column]]


def to_model_labels(table, label_column: str, id2label: dict[int, str]) -> tuple[torch.Tensor, list[str]]:
    """The dataset's labels as model label ids, and notes on how they were matched.

    Class names (a ClassLabel column) are matched to the model's label names. Without class names, or when the
    model's labels are transformers' placeholders (LABEL_0, LABEL_1, ...), labels are taken as the model's ids.
    Raises `ValueError` showing both label sets when they cannot be matched.
    """
    labels = torch.as_tensor(table[label_column], dtype=torch.long)
    names = getattr(table.features[label_column], "names", None)
    model_names = [str(id2label[i]) for i in sorted(id2label)]
    placeholders = all(name == f"LABEL_{i}" for i, name in zip(sorted(id2label), model_names, strict=True))
    if names and not placeholders:
        lookup = _label_lookup(id2label)
        unknown = [name for name in names if _normalise(name) not in lookup]
        if unknown:
            raise ValueError(
                f"the dataset's classes do not match the model's labels, so accuracy would be meaningless: "
                f"{_show(unknown)} of the dataset's classes {_show(names)} are not among the model's labels "
                f"{_show(model_names)}. Name the class folders after the model's labels, or evaluate a model "
                "trained on these classes."
            )
        return torch.tensor([lookup[_normalise(name)] for name in names])[labels], []
    if labels.min() < 0 or labels.max() >= len(id2label):
        raise ValueError(
            f"labels of column {label_column!r} span {labels.min().item()}..{labels.max().item()}, outside the "
            f"model's ids 0..{len(id2label) - 1} ({_show(model_names)}), and cannot be matched by name."
        )
    reason = "the model's labels are placeholders" if names else f"column {label_column!r} has no class names"
    return labels, [f"labels taken as the model's class ids by position: {reason}."]


def _label_lookup(id2label: dict[int, str]) -> dict[str, int]:
    """Normalised label name -> id; the parts of an ImageNet-style "tabby, tabby cat" too, where unambiguous."""
    lookup = {_normalise(name): int(i) for i, name in id2label.items()}
    synonyms: dict[str, set[int]] = {}
    for i, name in id2label.items():
        for part in str(name).split(","):
            synonyms.setdefault(_normalise(part), set()).add(int(i))
    for part, ids in synonyms.items():
        if len(ids) == 1 and part:
            lookup.setdefault(part, next(iter(ids)))
    return lookup


def _normalise(name) -> str:
    return " ".join(str(name).replace("_", " ").lower().split())


def _show(names: list, limit: int = 12) -> str:
    shown = ", ".join(repr(str(name)) for name in names[:limit])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > limit else ''}]"


def _why_no_labels(dataset, table) -> str:
    path = Path(os.fspath(dataset)).expanduser()
    image_folder = path.is_dir() and not _is_saved_dataset(path)
    class_folders = sorted(child.name for child in path.iterdir() if child.is_dir()) if image_folder else []
    if image_folder and not class_folders:
        return (
            f"no accuracy: {os.fspath(dataset)!r} holds its images directly (no class sub-folders), so it is "
            "unlabelled data; methods are scored against the model without ATS (agreement, or fidelity for a "
            "feature extractor)."
        )
    if len(class_folders) == 1:
        return (
            f"no accuracy: {os.fspath(dataset)!r} has a single class folder ({class_folders[0]!r}), and datasets' "
            "image-folder loader gives a one-class folder no labels; add the other classes' folders to measure "
            "accuracy."
        )
    return (
        f"no accuracy: the dataset has no label column (none of type ClassLabel, none named label, labels or "
        f"fine_label among {table.column_names}); name it with --label-column."
    )


def _open_split(dataset: str | os.PathLike, split: str | None):
    """(the split's `datasets.Dataset`, its name); a folder holding a single dataset is split "all"."""
    import datasets

    text = os.fspath(dataset)
    path = Path(text).expanduser()
    if is_local_path(text) and not path.exists():
        raise FileNotFoundError(f"dataset folder {text!r} does not exist")
    if path.is_file():
        raise ValueError(f"dataset {text!r} is a file; give a folder of class sub-folders, or a Hub dataset id.")
    if path.is_dir() and _is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
    elif path.is_dir():
        try:
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        except FileNotFoundError as error:  # datasets' EmptyDatasetError
            raise ValueError(f"dataset folder {text!r} holds no images ({error}).") from error
    else:
        loaded = datasets.load_dataset(text)
    if isinstance(loaded, datasets.Dataset):
        if split is not None and split != "all":
            raise ValueError(f"split {split!r} is not in {text}: it holds one dataset with no splits; leave the "
                             "split out.")
        return loaded, "all"
    available = list(loaded)
    if split is None:
        split = next((name for name in ("test", "validation", "train") if name in available), available[0])
    if split not in available:
        raise ValueError(f"split {split!r} is not in {text}; it has {', '.join(available)}.")
    return loaded[split], split


def _is_saved_dataset(path: Path) -> bool:
    """Whether `path` was written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json"))


def _check_image_column(table, column: str, videos: bool) -> None:
    """`ValueError` unless `column` holds what the model takes: images (an Image feature), or for a video model
    frame lists (a Sequence of Image)."""
    feature = table.features[column]
    if videos and not _holds_frame_lists(feature):
        raise ValueError(f"column {column!r} holds {_kind(feature)}, not frame lists (a Sequence of Image): a video "
                         "model takes one list of frames per video.")
    if not videos and not _holds_images(feature):
        raise ValueError(f"column {column!r} holds {_kind(feature)}, not images (an Image feature).")


def _holds_images(feature) -> bool:
    return type(feature).__name__ == "Image"


def _holds_frame_lists(feature) -> bool:
    return _holds_images(getattr(feature, "feature", None))


def _check_label_column(table, column: str) -> None:
    """`ValueError` unless `column` holds class ids (a ClassLabel, or integers)."""
    feature = table.features[column]
    if type(feature).__name__ == "ClassLabel" or str(getattr(feature, "dtype", "")).startswith(("int", "uint")):
        return
    raise ValueError(f"column {column!r} holds {_kind(feature)}, not class ids (a ClassLabel or integers).")


def _kind(feature) -> str:
    """A dataset feature in words."""
    inner = getattr(feature, "feature", None)
    if inner is not None:
        return f"lists of {_kind(inner)}"
    if _holds_images(feature):
        return "images"
    return f"{getattr(feature, 'dtype', type(feature).__name__)} values"


def _find_video_column(table) -> str:
    """The first column whose feature is a list of images (one video's frames)."""
    for name, feature in table.features.items():
        if _holds_frame_lists(feature):
            return name
    raise ValueError(f"no column of frame lists (a Sequence of Image) among {table.column_names}; name it with "
                     "--image-column.")


def _find_column(table, feature_type: str, names: tuple[str, ...], required: bool = True) -> str | None:
    for name, feature in table.features.items():
        if type(feature).__name__ == feature_type:
            return name
    for name in names:
        if name in table.column_names:
            return name
    if required:
        raise ValueError(f"no {feature_type} column among {table.column_names}; name it with --image-column.")
    return None


__all__ = [
    "ImageSource",
    "UnreadableImageError",
    "as_source",
    "num_batches",
    "open_images",
    "tensor_images",
    "to_model_labels",
]
