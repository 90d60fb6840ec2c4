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
                shown: bool = True, videos: bool = False):
    """The images the data options name (the embedded test split without --dataset; the embedded clips for a video
    model, `videos`), not yet decoded (`ats_hf.evaluation.ImageSource`); notes go to stderr when `shown`."""
    from ats_hf.evaluation import open_images
    from ats_hf.progress import note

    context = f"cannot read --dataset {args.dataset!r}" if args.dataset else "cannot read the embedded test split"
    with usage_errors(OSError, ValueError, context=context):
        source = open_images(args.dataset, processor, id2label, args.split, num_images, args.image_column,
                             args.label_column, seed, videos)
    for text in source.notes if shown else ():
        note(f"note: {text}")
    return source


def is_clip_model(model) -> bool:
    """Whether `model` is CLIP's image-text model (zero-shot; scored through its vision tower)."""
    from ats_hf.families import ZERO_SHOT, family_of

    return ZERO_SHOT in family_of(model).capabilities


def scored_view(model, processor, model_path: str):
    """(the model the evaluation loop runs, the processor to save with a checkpoint): the model and its image
    processor, except for a CLIPModel: its vision tower with projection (shared weights and settings) and its whole
    processor (the tokenizer writes the zero-shot prompts)."""
    if not is_clip_model(model):
        return model, processor
    from transformers import AutoProcessor

    with usage_errors(OSError, ValueError, context=f"cannot load the processor of {model_path!r}"):
        return model.ats_image_embedder(), AutoProcessor.from_pretrained(model_path)


def scored_data(args: argparse.Namespace, model, scored, processor, num_images: int | None, seed: int = 0,
                shown: bool = True):
    """(the images the data options name, the objective): --objective, else accuracy with labels (zero-shot for a
    CLIPModel, whose prompts are --prompt-template with the dataset's class names), agreement without labels for a
    classifier, fidelity otherwise; checked for `scored` (what `scored_view` gave for `model`) and the data."""
    from ats_hf.evaluation import Objective, default_objective
    from ats_hf.families import is_classifier, takes_videos

    id2label = model.config.id2label if is_classifier(type(model)) else None
    if args.objective and not Objective(args.objective).needs_labels:
        id2label = None  # the dataset's labels are not used: its classes need not be the model's
    source = open_source(args, getattr(processor, "image_processor", processor), id2label, num_images, seed,
                         shown=shown, videos=takes_videos(model))
    has_labels = source.labels is not None
    name = args.objective or ("zero-shot" if is_clip_model(model) and has_labels else None)
    if name == "zero-shot" and has_labels and is_clip_model(model):
        from ats_hf.evaluation.zero_shot import class_embeddings

        with usage_errors(ValueError, context="--objective zero-shot"):
            embeddings = class_embeddings(model, processor.tokenizer, source.class_names or [], args.prompt_template)
        objective = Objective("zero-shot", class_embeddings=embeddings)
    else:
        objective = Objective(name) if name else default_objective(scored, has_labels)
    if objective.needs_token_grid and not scored.config.ats_dense_output:
        from ats_hf.progress import note

        scored.config.ats_dense_output = True
        if shown:
            note("note: patch-fidelity compares the patch features on the input token grid: the model runs with "
                 "ats_dense_output=True (and a checkpoint written keeps it)")
    with usage_errors(ValueError, context=f"--objective {objective.name}"):
        objective.check(scored, has_labels)
    return source, objective


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


__all__ = ["chosen_device", "is_clip_model", "load_classifier", "load_model", "num_workers", "open_source",
           "refuse_no_layers", "scored_data", "scored_view", "settings_for"]
