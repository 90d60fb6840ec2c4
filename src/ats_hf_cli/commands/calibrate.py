"""`ats-hf calibrate`: propose the static mode's capacities (a quantile of the adaptive kept counts on images) for a
model of any family (classifier or feature extractor), show what they cost and change, and optionally save a
checkpoint with them."""

import argparse
from pathlib import Path

from .. import usage_errors
from ..inputs import chosen_device, load_model, num_workers, refuse_no_layers, scored_data, scored_view, settings_for
from ..options import (
    MODEL_HELP,
    add_ats_arguments,
    add_data_arguments,
    add_evaluation_arguments,
    check_inputs,
    float_in,
    positive_int,
)

DEFAULT_QUANTILE = 0.99
DEFAULT_BATCH_SIZE = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ats-hf calibrate`."""
    source = parser.add_argument_group("model and calibration images")
    source.add_argument("--model", help=MODEL_HELP)
    add_data_arguments(source, "all")
    add_evaluation_arguments(source)
    ats = parser.add_argument_group("ATS settings to calibrate (default: the model's)")
    add_ats_arguments(ats, capacity=False)
    parser.add_argument("--quantile", type=float_in(0.0, 1.0, low_open=True, what="a quantile in (0, 1]"),
                        default=DEFAULT_QUANTILE, metavar="Q", help="capacity = ceil(Q quantile of the adaptive kept "
                        "counts), Q in (0, 1]; 1 fits every calibration image (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help="images per forward pass (default: %(default)s)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available, else cpu; under a launcher "
                        "each process takes its own GPU)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dataset shuffle (default: %(default)s)")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="write a checkpoint (weights, config with the capacities, image processor, code, model "
                             "card) and calibration.json here (an empty or new folder)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output folder")


def run(args: argparse.Namespace) -> int:
    """`ats-hf calibrate`: calibrate, print the tables, optionally save the calibrated checkpoint."""
    model_path = check_inputs(args, model=("--model", args.model),
                              output=None if args.output is None else ("--output", args.output, False))

    from ats_hf.calibration import calibrate_capacity, format_result, save_calibrated_checkpoint
    from ats_hf.evaluation.processes import join_processes, process_device

    device = process_device(chosen_device(args.device))
    processes = join_processes(device)
    loaded, processor = load_model(model_path)
    model, processor = scored_view(loaded.to(device), processor, model_path)
    model.set_ats(settings_for(model, args).replace(capacity=None))  # calibration starts from the adaptive mode
    refuse_no_layers(model.ats_settings, "calibrate")
    source, objective = scored_data(args, loaded, model, processor, args.num_images, args.seed,
                                    shown=processes.is_main)
    with usage_errors(ValueError, context="calibrate"):
        result = calibrate_capacity(model, source, None, args.quantile, args.batch_size,
                                    objective=objective, num_workers=num_workers(args), processes=processes)
    if not processes.is_main:
        return 0
    print(f"ats-hf calibrate: {args.model or 'embedded default model'}\ndata: {source.description}")
    print(format_result(result))
    if args.output is not None:
        with usage_errors(OSError, context=f"cannot write to {str(args.output)!r}"):
            save_calibrated_checkpoint(loaded, processor, result, args.output, model_path, source.description)
        from ats_hf.families import takes_videos

        export = ("`ats_hf.export.export_folder(model, OUT, videos)` (Python; the export command takes images) makes"
                  if takes_videos(loaded) else f"`ats-hf export {args.output} OUT` makes")
        print(f"\nwrote {args.output} (the static mode at these capacities: {export} its ONNX folder)")
    return 0


__all__ = ["add_arguments", "run"]
