"""Labelled images for the benchmark: the embedded synthetic test split, an image folder, a saved `datasets`
dataset, or a Hub dataset, run through the model's image processor and labelled in the model's label space."""

import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import synthetic_digits


def load_labelled_images(
    dataset: str | None,
    processor,
    id2label: dict[int, str],
    split: str | None = None,
    num_images: int | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Processed images and labels.

    Args:
        dataset: None for the embedded synthetic test split; else a folder of class sub-folders, a folder written by
            `Dataset.save_to_disk`, or a Hub dataset id.
        processor: the model's image processor; id2label: the model's labels (dataset labels are matched by name).
        split: the split to read (default: the first of test, validation, train); num_images: how many (default
            all, up to 2000), drawn in a fixed shuffled order (`seed`) so that sorted folders mix classes.
    Returns:
        pixel_values (N, C, H, W), labels (N,) in the model's label ids or None when unlabelled or unmatched, and a
        one-line description of the data.
    """
    if dataset is None:
        images, labels = synthetic_digits.test_split(num_images or synthetic_digits.TEST_SIZE)
        pixel_values = _process(processor, [image.numpy() for image in images])
        description = f"synthetic digits test split (seed {synthetic_digits.TEST_SEED}), {len(labels)} images"
        return pixel_values, labels, description

    table, split = _open_split(dataset, split)
    image_column = image_column or _find_column(table, "Image", ("image", "img", "picture"))
    label_column = label_column or _find_column(table, "ClassLabel", ("label", "labels", "fine_label"), required=False)
    table = table.shuffle(seed=seed).select(range(min(len(table), num_images or 2000)))
    pixel_values = _process(processor, [image.convert("RGB") for image in table[image_column]])
    labels = None if label_column is None else _to_model_labels(table, label_column, id2label)
    return pixel_values, labels, f"{dataset} [{split}], {len(table)} images"


def _open_split(dataset: str, split: str | None):
    """(the split's `datasets.Dataset`, its name); a folder holding a single dataset is split "all"."""
    import datasets

    path = Path(dataset)
    if path.is_dir() and any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json")):
        loaded = datasets.load_from_disk(str(path))
    elif path.is_dir():
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
    else:
        loaded = datasets.load_dataset(dataset)
    if isinstance(loaded, datasets.Dataset):
        return loaded, "all"
    available = list(loaded)
    if split is None:
        split = next((name for name in ("test", "validation", "train") if name in available), available[0])
    if split not in available:
        raise ValueError(f"split={split!r} is not in {dataset}; it has {', '.join(available)}.")
    return loaded[split], split


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


def _to_model_labels(table, label_column: str, id2label: dict[int, str]) -> torch.Tensor | None:
    """Dataset labels as model label ids: by class name where the dataset has names, else as they are."""
    labels = torch.as_tensor(table[label_column], dtype=torch.long)
    names = getattr(table.features[label_column], "names", None)
    if names:
        model_ids = {str(name).lower(): int(i) for i, name in id2label.items()}
        if all(str(name).lower() in model_ids for name in names):
            return torch.tensor([model_ids[str(name).lower()] for name in names])[labels]
    if labels.min() < 0 or labels.max() >= len(id2label):
        warnings.warn(
            f"labels of {label_column!r} span {labels.min().item()}..{labels.max().item()}, outside the model's "
            f"0..{len(id2label) - 1}, and no class names match: accuracy is not reported."
        )
        return None
    return labels


def _process(processor, images: list, chunk: int = 256) -> torch.Tensor:
    """(N, C, H, W) pixel values, in chunks so that a progress bar shows."""
    parts = [
        processor(images=images[start : start + chunk], return_tensors="pt")["pixel_values"]
        for start in tqdm(range(0, len(images), chunk), desc="preprocess", leave=False, disable=None)
    ]
    return torch.cat(parts)
