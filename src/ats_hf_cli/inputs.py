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


def load_images(args: argparse.Namespace, processor, id2label: dict, num_images: int | None, seed: int = 0):
    """The labelled images the data options name (the embedded test split without --dataset); notes go to stderr."""
    from ats_hf.data.labelled_images import load_labelled_images
    from ats_hf.progress import note

    context = f"cannot read --dataset {args.dataset!r}" if args.dataset else "cannot read the embedded test split"
    with usage_errors(OSError, ValueError, context=context):
        data = load_labelled_images(args.dataset, processor, id2label, args.split, num_images, args.image_column,
                                    args.label_column, seed)
    for text in data.notes:
        note(f"note: {text}")
    return data


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


__all__ = ["chosen_device", "load_classifier", "load_images", "refuse_no_layers", "settings_for"]
