"""Labelled images for the benchmark: the embedded synthetic test split, an image folder, a saved `datasets`
dataset, or a Hub dataset, run through the model's image processor and labelled in the model's label space.

Dataset classes are matched to the model's labels by name (case, spaces and underscores aside; an ImageNet-style
label "tabby, tabby cat" also answers to "tabby"), never silently by position: class names that the model does not
know are an error that shows both label sets.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ats_hf_common.paths import is_local_path

from ..progress import Progress
from . import synthetic_digits


@dataclass
class LabelledImages:
    """Processed images, their labels in the model's label ids (None: no accuracy), and what the user should know."""

    pixel_values: torch.Tensor  # (N, C, H, W)
    labels: torch.Tensor | None  # (N,) model label ids
    description: str  # one line: what the data is
    notes: list[str] = field(default_factory=list)  # e.g. why there is no accuracy, or how labels were matched


def load_labelled_images(
    dataset: str | os.PathLike | None,
    processor,
    id2label: dict[int, str],
    split: str | None = None,
    num_images: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    seed: int = 0,
) -> LabelledImages:
    """Processed images and labels.

    Args:
        dataset: None for the embedded synthetic test split; else a folder of class sub-folders, a folder written by
            `Dataset.save_to_disk`, or a Hub dataset id.
        processor: the model's image processor; id2label: the model's labels (dataset classes are matched by name).
        split: the split to read (default: the first of test, validation, train); num_images: how many (>= 1;
            default all), drawn in a fixed shuffled order (`seed`) so that sorted folders mix classes.
    Raises:
        FileNotFoundError: a local dataset folder that does not exist.
        ValueError: an empty dataset, an unknown split or column, or classes that do not match the model's labels.
    """
    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images={num_images} must be >= 1.")
    if dataset is None:
        images, labels = synthetic_digits.test_split(num_images or synthetic_digits.TEST_SIZE)
        pixel_values = _process(processor, [image.numpy() for image in images])
        description = f"synthetic digits test split (seed {synthetic_digits.TEST_SEED}), {len(labels)} images"
        return LabelledImages(pixel_values, labels, description)

    table, split = _open_split(dataset, split)
    if len(table) == 0:
        raise ValueError(f"dataset {os.fspath(dataset)!r} [{split}] holds no images.")
    image_column = image_column or _find_column(table, "Image", ("image", "img", "picture"))
    label_column = label_column or _find_column(table, "ClassLabel", ("label", "labels", "fine_label"), required=False)
    for column in (image_column, label_column):
        if column is not None and column not in table.column_names:
            raise ValueError(f"column {column!r} is not in the dataset; its columns are {table.column_names}.")
    table = table.shuffle(seed=seed).select(range(min(len(table), num_images or len(table))))
    pixel_values = _process(processor, [image.convert("RGB") for image in table[image_column]])
    description = f"{os.fspath(dataset)} [{split}], {len(table)} images"
    if label_column is None:
        return LabelledImages(pixel_values, None, description, [_why_no_labels(dataset, table)])
    labels, notes = to_model_labels(table, label_column, id2label)
    return LabelledImages(pixel_values, labels, description, notes)


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


def _process(processor, images: list, chunk: int = 256) -> torch.Tensor:
    """(N, C, H, W) pixel values, in chunks so that progress shows."""
    parts = []
    with Progress(len(images), "preprocess images") as progress:
        for start in range(0, len(images), chunk):
            parts.append(processor(images=images[start : start + chunk], return_tensors="pt")["pixel_values"])
            progress.update(len(parts[-1]))
    return torch.cat(parts)


__all__ = ["LabelledImages", "load_labelled_images", "to_model_labels"]
