"""`ats-hf visualize IMAGE`: draw the patches each ATS layer keeps for one image (`ats_hf.visualize.token_map`)."""

import argparse
from pathlib import Path

from .. import UsageError, usage_errors
from ..inputs import load_classifier, settings_for
from ..options import MODEL_HELP, add_ats_arguments, check_inputs, int_at_least, positive_int

MIN_PANEL_SIZE = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ats-hf visualize`."""
    parser.add_argument("image", type=Path, help="image file to draw")
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--output", type=Path, help="PNG to write (default: IMAGE-ats.png in the current folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    add_ats_arguments(parser)
    parser.add_argument("--panel-size", type=int_at_least(MIN_PANEL_SIZE), default=192,
                        help="longer side of a panel in pixels (default: %(default)s)")
    parser.add_argument("--columns", type=positive_int, default=5, help="panels per row (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """`ats-hf visualize`: write the token map PNG."""
    if args.image.is_dir():
        raise UsageError(f"image {str(args.image)!r} is a folder; give one image file")
    if not args.image.is_file():
        raise UsageError(f"image file {str(args.image)!r} does not exist")
    output = args.output or Path(f"{args.image.stem}-ats.png")
    if output.suffix.lower() != ".png":
        raise UsageError(f"--output {str(output)!r} must name a .png file")
    if not output.parent.is_dir():
        raise UsageError(f"--output {str(output)!r}: folder {str(output.parent)!r} does not exist")
    model_path = check_inputs(args, model=("--model", args.model), data=False, output=("--output", output, True))

    from PIL import Image

    from ats_hf.visualize import token_map

    with usage_errors(OSError, context=f"cannot read image {str(args.image)!r}"):
        image = Image.open(args.image)
        image.load()
    model, processor = load_classifier(model_path)
    model.set_ats(settings_for(model, args))
    picture = token_map(image, model, processor, args.panel_size, args.columns)
    with usage_errors(OSError, ValueError, context=f"cannot write {str(output)!r}"):
        picture.save(output)
    print(f"wrote {output} ({picture.width} x {picture.height})")
    return 0


__all__ = ["add_arguments", "run"]
