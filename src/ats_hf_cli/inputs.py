"""Loading what the shared options name, for the commands: the model, the images, the device and the ATS settings.
Each function imports ats_hf (torch, transformers) only when called, after the command's own checks, and turns the
expected failures into one-line `UsageError`s."""

import argparse

from . import UsageError, usage_errors
from .options import settings_from_args


def load_classifier(path: str, what: str = "--model", **kwargs):
    """(image classifier of any family in eval mode, its image processor) from a checked path or Hub id."""
    from ats_hf.hub.checkpoint import load_classifier_and_processor

    with usage_errors(OSError, ValueError, context=f"cannot load {what} {path!r}"):
        return load_classifier_and_processor(path, **kwargs)


def load_model(path: str, what: str = "--model", **kwargs):
    """(ATS model of any family and kind in eval mode: a classifier or a feature extractor, its image processor)."""
    from ats_hf.hub.checkpoint import load_model_and_processor

    with usage_errors(OSError, ValueError, context=f"cannot load {what} {path!r}"):
        return load_model_and_processor(path, **kwargs)


def open_source(args: argparse.Namespace, processor, id2label: dict | None, num_images: int | None, seed: int = 0,
                shown: bool = True):
    """The images the data options name (the embedded test split without --dataset), not yet decoded
    (`ats_hf.evaluation.ImageSource`); notes go to stderr when `shown`."""
    from ats_hf.evaluation import open_images
    from ats_hf.progress import note

    context = f"cannot read --dataset {args.dataset!r}" if args.dataset else "cannot read the embedded test split"
    with usage_errors(OSError, ValueError, context=context):
        source = open_images(args.dataset, processor, id2label, args.split, num_images, args.image_column,
                             args.label_column, seed)
    for text in source.notes if shown else ():
        note(f"note: {text}")
    return source


def num_workers(args: argparse.Namespace) -> int:
    """--num-workers, or its default: none for the embedded split (held in memory), else min(4, CPUs // 2)."""
    import os

    if args.num_workers is not None:
        return args.num_workers
    return 0 if args.dataset is None else min(4, max(1, (os.cpu_count() or 2) // 2))


def chosen_device(name: str | None) -> str:
    """The --device to run on (default: cuda when available, else cpu), checked to exist."""
    import torch

    device = name or ("cuda" if torch.cuda.is_available() else "cpu")
    with usage_errors(RuntimeError, AssertionError, context=f"--device {device!r}"):
        torch.empty(0, device=device)
    return device


def settings_for(model, args: argparse.Namespace, base=None):
    """The model's ATS settings (or `base`, an `AtsSettings`) with the command line's changes, checked for the model;
    a bad value is a one-line usage error."""
    settings = model.ats_settings if base is None else base
    with usage_errors(ValueError, context="ATS settings"):
        config = model.config
        return settings.replace(**settings_from_args(args)).check(config.num_hidden_layers,
                                                                  config.ats_num_special_tokens)


def refuse_no_layers(settings, what: str) -> None:
    if not settings.layers:
        raise UsageError(f"--ats-layers none leaves nothing to {what}; give at least one ATS layer")


__all__ = ["chosen_device", "load_classifier", "load_model", "num_workers", "open_source",
           "refuse_no_layers", "settings_for"]
