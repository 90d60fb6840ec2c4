"""`ats-hf export [MODEL] OUT`: a ready ONNX folder of the static mode, verified against PyTorch before it reports
success.

    ats-hf export calibrated/ onnx/                      # a model saved by `ats-hf calibrate --output calibrated/`
    ats-hf export facebook/deit-small-patch16-224 onnx/ --ats-layers 3-11 --ats-max-tokens 0.5 --ats-capacity 0.5

OUT receives model.onnx, config.json, preprocessor_config.json and onnx_verification.json (`ats_hf.export`). The
verification images are the embedded test split by default, --dataset's otherwise, or random pixels with
--random-images. Exit status: 0 verified, 1 the graph disagrees with PyTorch (the folder and its report stay for
inspection), 2 a usage error (e.g. the model is in the adaptive mode).
"""

import argparse
import sys
from pathlib import Path

from ats_hf_common.grammar import format_settings

from .. import UsageError, usage_errors
from ..inputs import load_classifier, open_source, settings_for
from ..options import (
    MODEL_HELP,
    add_ats_arguments,
    add_data_arguments,
    check_inputs,
    require,
)

DEFAULT_NUM_IMAGES = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ats-hf export`."""
    parser.add_argument("model", nargs="?", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument("output_dir", metavar="OUT", type=Path, help="folder to write (empty or new)")
    ats = parser.add_argument_group("ATS settings (default: the model's; the static mode needs --ats-capacity or a "
                                    "model saved by 'ats-hf calibrate --output')")
    add_ats_arguments(ats)
    images = parser.add_argument_group("verification images")
    add_data_arguments(images, str(DEFAULT_NUM_IMAGES))
    images.add_argument("--random-images", action="store_true",
                        help="verify on random pixels instead (when no real images are at hand)")
    images.add_argument("--seed", type=int, default=0, help="seed of the dataset shuffle and random pixels "
                                                            "(default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")


def run(args: argparse.Namespace) -> int:
    """`ats-hf export`: load, apply the settings, export, verify; 0 verified, 1 not."""
    require("onnx", "ats-hf export")
    if args.random_images and (args.dataset or args.split or args.image_column or args.label_column):
        raise UsageError("--random-images replaces the dataset options; give one or the other")
    model_path = check_inputs(args, model=("MODEL", args.model), data=not args.random_images,
                              output=("OUT", args.output_dir, False))

    from ats_hf.export import check_exportable, export_folder

    model, processor = load_classifier(model_path, what="MODEL")
    model.set_ats(settings_for(model, args))
    with usage_errors(ValueError, context=f"cannot export {args.model or 'the embedded default model'}"):
        check_exportable(model)
    pixel_values, description = _verification_images(args, model, processor)
    try:
        report = export_folder(model, args.output_dir, pixel_values, processor)
    except RuntimeError as error:
        print(f"ats-hf export: verification failed: {error}", file=sys.stderr)
        return 1
    print(
        f"wrote {args.output_dir}: {', '.join(sorted(path.name for path in args.output_dir.iterdir()))} (static "
        f"mode: {format_settings(model.ats_settings)})\n"
        f"verified against PyTorch on {description}, each at batch sizes "
        f"{', '.join(map(str, report['batch_sizes']))}: largest logit difference "
        f"{report['max_logit_difference']:.1e} (tolerance {report['logits_tolerance']:g}), identical kept tokens, "
        "token counts and masks"
    )
    return 0


def _verification_images(args: argparse.Namespace, model, processor):
    """(pixel values, what they are) to check the graph on."""
    import torch

    count = args.num_images or DEFAULT_NUM_IMAGES
    if args.random_images:
        config = model.config
        size = config.image_size
        height, width = (size, size) if isinstance(size, int) else size
        generator = torch.Generator().manual_seed(args.seed)
        return torch.randn(count, config.num_channels, height, width, generator=generator), f"{count} random images"
    # Only the images check the graph: any classes, and no notes about labels or scoring.
    source = open_source(args, processor, None, count, args.seed, shown=False)
    return source.head(count), source.description


__all__ = ["add_arguments", "run"]
