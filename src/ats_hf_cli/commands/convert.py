"""`ats-hf convert SOURCE OUTPUT_DIR`: a ready-to-share ATS checkpoint of a plain or ATS checkpoint of any family
(weights, config, processor, modeling code for `trust_remote_code`, model card), uploaded with `--push-to-hub`.

    ats-hf convert google/vit-base-patch16-224 ./vit-base-ats --ats-layers 3-11 --ats-max-tokens all
"""

import argparse
from pathlib import Path

from .. import UsageError
from ..options import add_ats_arguments, check_inputs, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ats-hf convert`."""
    parser.add_argument("source", help="Hub id or directory of a checkpoint of any ATS family, plain or ATS: a "
                        "classifier, a backbone (e.g. ViTModel) or CLIPModel; it keeps what it is")
    parser.add_argument("output_dir", type=Path, help="Directory to write the ATS checkpoint into (empty or absent).")
    add_ats_arguments(parser)
    parser.add_argument("--image-processor", help="Where to take preprocessor_config.json from (default: SOURCE).")
    parser.add_argument("--base-model", help="Hub id of the plain base model, for the model card.")
    parser.add_argument("--license", help="License for the model card (default: the source card's, if readable).")
    parser.add_argument("--measure-gmacs-on", type=Path, metavar="DIR",
                        help="Images whose mean GMACs per image with ATS go on the model card.")
    parser.add_argument("--overwrite", action="store_true", help="Write into a non-empty OUTPUT_DIR.")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="Upload OUTPUT_DIR to this Hub repo.")
    parser.add_argument("--private", action="store_true", default=None, help="Create the Hub repo as private.")


def run(args: argparse.Namespace) -> int:
    """`ats-hf convert`: write the checkpoint (and upload it)."""
    if args.measure_gmacs_on is not None and not args.measure_gmacs_on.is_dir():
        raise UsageError(f"--measure-gmacs-on {str(args.measure_gmacs_on)!r} is not a folder of images")
    if args.image_processor is not None:
        check_inputs(args, model=("--image-processor", args.image_processor), data=False)
    check_inputs(args, model=("SOURCE", args.source), data=False, output=("OUTPUT_DIR", args.output_dir, False))

    from ats_hf.hub.convert import UploadError, convert_to_ats

    overrides = {f"ats_{key}": value for key, value in settings_from_args(args).items()}
    try:
        output_dir = convert_to_ats(
            args.source,
            args.output_dir,
            image_processor=args.image_processor,
            base_model=args.base_model,
            license=args.license,
            measure_gmacs_on=args.measure_gmacs_on,
            overwrite=args.overwrite,
            push_to_hub=args.push_to_hub,
            private=args.private,
            **overrides,
        )
    except UploadError as error:
        raise UsageError(str(error)) from error
    except (OSError, ValueError) as error:  # a missing or unloadable source, a bad setting
        message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UsageError(f"cannot convert {args.source!r}: {message}") from error
    print(f"Wrote an ATS checkpoint to {output_dir}" + (f" and uploaded it to {args.push_to_hub}"
                                                         if args.push_to_hub else ""))
    return 0


__all__ = ["add_arguments", "run"]
