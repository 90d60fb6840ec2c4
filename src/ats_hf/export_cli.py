"""`ats-hf export [MODEL] OUT`: a ready ONNX folder of the static mode, verified against PyTorch before it reports
success.

    ats-hf export calibrated/ onnx/                      # a model saved by `ats-hf calibrate --output calibrated/`
    ats-hf export facebook/deit-small-patch16-224 onnx/ --ats-layers 3-11 --ats-max-tokens 0.5 --ats-capacity 0.5

OUT receives model.onnx, config.json, preprocessor_config.json and onnx_verification.json (`export.export_folder`).
The verification images are the embedded test split by default, --dataset's otherwise, or random pixels with
--random-images. Exit status: 0 verified, 1 the graph disagrees with PyTorch (the folder and its report stay for
inspection), 2 a usage error (e.g. the model is in the adaptive mode).
"""

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

from ats_hf_cli import UsageError, usage_errors

from .cli_inputs import add_data_arguments, check_data_options, load_classifier, load_images
from .export import ONNX_FILE, VERIFICATION_FILE, check_exportable, export_folder
from .settings import add_ats_arguments, format_max_tokens, format_settings, settings_from_args

DEFAULT_NUM_IMAGES = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ats-hf export`."""
    parser.add_argument("model", nargs="?", metavar="MODEL",
                        help="Hub id or folder of an ATS-ViT / ViT / DeiT classifier (default: the embedded model)")
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
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}: install the export extra, pip install 'ats_hf[export]'")
    output = args.output_dir
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
        raise UsageError(f"OUT {str(output)!r} is not empty; pass --overwrite to write into it")
    if args.random_images and (args.dataset or args.split or args.image_column or args.label_column):
        raise UsageError("--random-images replaces the dataset options; give one or the other")
    check_data_options(args)
    model, processor, model_name = load_classifier(args.model, what="MODEL")
    with usage_errors(ValueError, context="ATS settings"):
        model.set_ats(**settings_from_args(args))
    with usage_errors(ValueError, context=f"cannot export {model_name}"):
        check_exportable(model)
    pixel_values, description = _verification_images(args, model, processor)
    try:
        report = export_folder(model, output, pixel_values, processor)
    except RuntimeError as error:
        print(f"ats-hf export: verification failed: {error}", file=sys.stderr)
        return 1
    settings = model.ats_settings
    print(
        f"wrote {output / ONNX_FILE}, config.json, preprocessor_config.json, {VERIFICATION_FILE} (static mode: "
        f"{format_settings(settings['layers'], settings['max_tokens'], settings['sampler'])}, capacity "
        f"{format_max_tokens(settings['capacity'])})\n"
        f"verified against PyTorch on {description} at batch sizes "
        f"{', '.join(map(str, report['batch_sizes']))}: largest logit difference "
        f"{report['max_logit_difference']:.1e} (tolerance {report['logits_tolerance']:g}), identical kept tokens, "
        "token counts and masks"
    )
    return 0


def _verification_images(args: argparse.Namespace, model, processor) -> tuple[torch.Tensor, str]:
    """(pixel values, what they are) to check the graph on."""
    count = args.num_images or DEFAULT_NUM_IMAGES
    if args.random_images:
        config = model.config
        size = config.image_size
        height, width = (size, size) if isinstance(size, int) else size
        generator = torch.Generator().manual_seed(args.seed)
        return torch.randn(count, config.num_channels, height, width, generator=generator), f"{count} random images"
    data = load_images(argparse.Namespace(**{**vars(args), "num_images": count}), processor, model.config.id2label,
                       args.seed)
    return data.pixel_values, data.description


__all__ = ["add_arguments", "run"]
