"""The model and data options that `ats-hf benchmark`, `calibrate` and `export` share, and loading what they name.

Mistakes (a missing folder, a model or dataset that cannot be read, dataset options without a dataset) become
`UsageError`s: one line, exit status 2.
"""

import argparse

from ats_hf_cli import UsageError, positive_int, usage_errors

from .data import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME
from .data.labelled_images import MAX_IMAGES, LabelledImages, load_labelled_images
from .progress import note

MODEL_HELP = "Hub id or folder of a ViT/DeiT/ATS-ViT classifier (default: the embedded model)"


def add_data_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, default_images: str) -> None:
    """--dataset, --split, --num-images, --image-column, --label-column; `default_images` completes --num-images'
    help ("default: ...")."""
    parser.add_argument("--dataset", help="Hub dataset id, image folder (one sub-folder per class) or save_to_disk "
                                          "folder (default: the embedded synthetic digits test split)")
    parser.add_argument("--split", help="dataset split (default: test, else validation, else train)")
    parser.add_argument("--num-images", type=positive_int, help=f"images to use (default: {default_images})")
    parser.add_argument("--image-column", help="image column (default: the first Image feature)")
    parser.add_argument("--label-column", help="label column (default: the first ClassLabel feature, or 'label')")


def load_classifier(model: str | None, what: str = "--model", **kwargs):
    """(model in eval mode, image processor, name) for the option `what` (None: the embedded model); keyword
    arguments go to `from_pretrained`."""
    from transformers import AutoImageProcessor

    from .hub.checkpoint import check_source, load_ats_classifier

    path = model or str(DEFAULT_MODEL_DIR)
    with usage_errors(FileNotFoundError):
        check_source(path, what)
    with usage_errors(OSError, ValueError, context=f"cannot load {what} {path!r}"):
        classifier = load_ats_classifier(path, **kwargs).eval()
        processor = AutoImageProcessor.from_pretrained(path)
    return classifier, processor, model or DEFAULT_MODEL_NAME


def check_data_options(args: argparse.Namespace) -> None:
    """Refuse dataset options without --dataset (before anything slow is loaded)."""
    if args.dataset is None and (args.split or args.image_column or args.label_column):
        raise UsageError("--split, --image-column and --label-column apply to --dataset only")


def load_images(args: argparse.Namespace, processor, id2label: dict, seed: int = 0) -> LabelledImages:
    """The labelled images the data options name (the embedded test split without --dataset); notes go to
    stderr."""
    check_data_options(args)
    with usage_errors(OSError, ValueError, context=f"cannot read --dataset {args.dataset!r}" if args.dataset else ""):
        data = load_labelled_images(args.dataset, processor, id2label, args.split, args.num_images,
                                    args.image_column, args.label_column, seed)
    for text in data.notes:
        note(f"note: {text}")
    return data


__all__ = ["MAX_IMAGES", "MODEL_HELP", "add_data_arguments", "check_data_options", "load_classifier", "load_images"]
