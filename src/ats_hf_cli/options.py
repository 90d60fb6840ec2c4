"""Option types and the option groups the commands share (standard library only): counts and fractions, the ATS
settings in the one grammar (`grammar`), the model and data options, the output policy, and the extras a command
needs. A check here fails before anything heavy is imported, as one line (argparse error or `UsageError`)."""

import argparse
import importlib.util
import os
from pathlib import Path

from ats_hf_common.grammar import (
    CAPACITY_HELP,
    LAYERS_HELP,
    MAX_TOKENS_HELP,
    MERGE_HELP,
    SAMPLER_HELP,
    parse_capacity,
    parse_layers,
    parse_max_tokens,
    parse_merge,
    parse_sampler,
)
from ats_hf_common.paths import check_source, check_target, default_model_dir

from . import UsageError, usage_errors

# ats_hf.evaluation.objectives.OBJECTIVES, without torch
OBJECTIVES = ("accuracy", "agreement", "fidelity", "patch-fidelity", "zero-shot")
DEFAULT_PROMPT_TEMPLATE = "a photo of a {}."  # ats_hf.evaluation.zero_shot.DEFAULT_TEMPLATE
MODEL_HELP = ("Hub id or folder of an image classifier of any ATS family, plain or ATS (ViT, DeiT, DINOv2, CLIP; "
              "default: the embedded model)")
# What a command may need beyond the core install: name -> (modules, the extra that installs them).
NEEDS = {
    "plots": (("matplotlib",), "benchmark"),
    "digits": (("sklearn",), "benchmark"),
    "datasets": (("datasets",), "benchmark"),
    "onnx": (("onnx", "onnxscript", "onnxruntime"), "export"),
}


def checked(parse, name: str | None = None):
    """An argparse type from a parse function: its `ValueError` becomes a one-line argparse error (exit status 2)."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = name or parse.__name__.removeprefix("parse_")
    return convert


def int_at_least(minimum: int):
    """An argparse type: an int >= `minimum`."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not allowed: it must be an integer >= {minimum}")
        return value

    convert.__name__ = f"int >= {minimum}"
    return convert


positive_int = int_at_least(1)  # counts: batch sizes, images, repeats, threads, columns
non_negative_int = int_at_least(0)  # indices


def float_in(low: float, high: float = float("inf"), *, low_open: bool = False, what: str = "a number"):
    """An argparse type: a float in [low, high] (or (low, high] with `low_open`)."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (low < value if low_open else low <= value) or value > high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    convert.__name__ = what
    return convert


fraction = float_in(0.0, 1.0, low_open=True, what="a fraction in (0, 1]")
positive_float = float_in(0.0, low_open=True, what="a number > 0")
non_negative_float = float_in(0.0, what="a number >= 0")


class _JoinedValues(argparse.Action):
    """Collect `nargs="+"` strings and parse them together with one grammar function."""

    def __init__(self, *args, parse, **kwargs):
        self.parse = parse
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, self.parse(values))
        except ValueError as error:
            parser.error(f"{option_string}: {error}")


def add_ats_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    sampler: bool = True,
    capacity: bool = True,
    merge: bool = True,
) -> None:
    """`--ats-layers`, `--ats-max-tokens` (and `--ats-sampler`, `--ats-capacity`, `--ats-merge`) in the one grammar.
    An option left out sets no attribute at all (keep the model's setting); read them with `settings_from_args`."""
    parser.add_argument("--ats-layers", nargs="+", action=_JoinedValues, parse=parse_layers, metavar="LAYERS",
                        default=argparse.SUPPRESS, help=LAYERS_HELP + " (default: the model's)")
    parser.add_argument("--ats-max-tokens", nargs="+", action=_JoinedValues, parse=parse_max_tokens, metavar="K",
                        default=argparse.SUPPRESS, help=MAX_TOKENS_HELP + " (default: the model's)")
    if sampler:
        parser.add_argument("--ats-sampler", type=checked(parse_sampler), metavar="NAME",
                            default=argparse.SUPPRESS, help=SAMPLER_HELP + " (default: the model's)")
    if capacity:
        parser.add_argument("--ats-capacity", nargs="+", action=_JoinedValues, parse=parse_capacity, metavar="ROWS",
                            default=argparse.SUPPRESS, help=CAPACITY_HELP + " (default: the model's)")
    if merge:
        parser.add_argument("--ats-merge", type=checked(parse_merge), metavar="SIM", default=argparse.SUPPRESS,
                            help=MERGE_HELP + " (default: the model's)")


def settings_from_args(args: argparse.Namespace) -> dict:
    """The settings a command line gave, as `AtsSettings.replace` keyword arguments; options left out are not in the
    dict."""
    names = ("layers", "max_tokens", "sampler", "capacity", "merge")
    return {name: getattr(args, f"ats_{name}") for name in names if hasattr(args, f"ats_{name}")}


def add_data_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, default_images: str) -> None:
    """--dataset, --split, --num-images, --image-column, --label-column; `default_images` completes --num-images'
    help ("default: ...")."""
    parser.add_argument("--dataset", help="Hub dataset id, image folder (one sub-folder per class; images directly in "
                                          "it: unlabelled) or save_to_disk folder (default: the embedded synthetic "
                                          "digits test split)")
    parser.add_argument("--split", help="dataset split (default: test, else validation, else train)")
    parser.add_argument("--num-images", type=positive_int, help=f"images to use (default: {default_images})")
    parser.add_argument("--image-column", help="image column (default: the first Image feature)")
    parser.add_argument("--label-column", help="label column (default: the first ClassLabel feature, or 'label')")


def add_evaluation_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--objective, --prompt-template and --num-workers."""
    parser.add_argument("--objective", choices=OBJECTIVES, help="how methods are scored: accuracy (labels), "
                        "agreement (top-1 agreement with the model without ATS; any classifier, no labels), fidelity "
                        "(cosine similarity of the embedding to the model without ATS; feature extractors, no labels), "
                        "patch-fidelity (of the dense-output patch features, averaged over the patches; feature "
                        "extractors, no labels) "
                        "or zero-shot (a CLIPModel's zero-shot top-1 accuracy with the class names as prompts; labels) "
                        "(default: accuracy with labels (zero-shot for a CLIPModel), else agreement for a classifier, "
                        "fidelity otherwise)")
    parser.add_argument("--prompt-template", type=prompt_template, default=DEFAULT_PROMPT_TEMPLATE, metavar="TEXT",
                        help="zero-shot prompt, with {} for the class name (default: '%(default)s')")
    parser.add_argument("--num-workers", type=non_negative_int, metavar="N", help="DataLoader worker processes "
                        "that decode and process images (default: 0 for the embedded split, else min(4, CPUs // 2))")


def prompt_template(text: str) -> str:
    """argparse type: a prompt with exactly one {} for the class name."""
    if text.count("{}") != 1:
        raise argparse.ArgumentTypeError(f"{text!r} must hold exactly one {{}} for the class name")
    return text


def check_inputs(
    args: argparse.Namespace,
    *,
    model: tuple[str, str | None] | None = None,
    data: bool = True,
    output: tuple[str, object, bool] | None = None,
) -> str | None:
    """Everything about a command's inputs that can be checked before torch loads, in one place:
    - data (`data`): dataset options without --dataset, a --dataset that is a file, and the extra the data needs;
    - the paths: a --dataset folder and the model (`model`: (option, value); the embedded model when the value is
      None) must exist when they are local paths, and the output (`output`: (option, path, is_file)) follows the
      write policy (`paths.check_target`, with --overwrite).
    Returns the model's path or Hub id (None when `model` is None); any problem is a one-line `UsageError`."""
    if data and args.dataset is None:
        if args.split or args.image_column or args.label_column:
            raise UsageError("--split, --image-column and --label-column apply to --dataset only")
        require("digits", "the embedded synthetic digits")
    elif data:
        if Path(os.fspath(args.dataset)).expanduser().is_file():
            raise UsageError(f"--dataset {args.dataset!r} is a file; give a folder of class sub-folders, a "
                             "save_to_disk folder or a Hub dataset id")
        require("datasets", f"--dataset {args.dataset!r}")
    model_path = None if model is None else model[1] or str(default_model_dir())
    with usage_errors(FileNotFoundError, FileExistsError):
        if data and args.dataset is not None:
            check_source(args.dataset, "--dataset")
        if model is not None:
            check_source(model_path, model[0])
        if output is not None:
            check_target(output[1], output[0], args.overwrite, is_file=output[2])
    return model_path


def require(need: str, what: str) -> None:
    """Raise `UsageError` naming the extra to install when a module of `NEEDS[need]` is missing; `what` is what
    needs it (e.g. "--runtime onnxruntime")."""
    modules, extra = NEEDS[need]
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"{what} needs {', '.join(missing)}, which is not installed: pip install 'ats_hf[{extra}]'")


__all__ = [
    "MODEL_HELP",
    "NEEDS",
    "OBJECTIVES",
    "add_ats_arguments",
    "add_data_arguments",
    "add_evaluation_arguments",
    "check_inputs",
    "checked",
    "float_in",
    "fraction",
    "int_at_least",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "require",
    "settings_from_args",
]
