"""`ats-hf tune`: choose the ATS settings for a GMACs budget, an accepted drop of the objective or a measured
speed-up, on a model of any family (classifier or feature extractor) and labelled or unlabelled images; compares
with ToMe."""

import argparse
from pathlib import Path

from .. import UsageError, usage_errors
from ..inputs import chosen_device, load_model, num_workers, scored_data, scored_view
from ..options import (
    MODEL_HELP,
    add_data_arguments,
    add_evaluation_arguments,
    check_inputs,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    require,
)

TOME_R = (4, 6, 8, 10, 12, 14)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ats-hf tune`."""
    parser.add_argument("--model", help=MODEL_HELP)
    add_data_arguments(parser, "all; the second half is held out")
    add_evaluation_arguments(parser)
    goal = parser.add_mutually_exclusive_group()
    goal.add_argument("--gmacs-budget", type=fraction, metavar="F",
                      help="at most this fraction of dense GMACs (default: 0.5); the most accurate setting wins")
    goal.add_argument("--max-accuracy-drop", type=non_negative_float, metavar="POINTS",
                      help="at most this many points of the objective below dense; the cheapest setting wins")
    goal.add_argument("--min-speedup", type=positive_float, metavar="X",
                      help="at least this measured speed-up over dense (--speed-runtime, --speed-batch-size); the most "
                      "accurate setting wins")
    parser.add_argument("--speed-runtime", choices=("eager", "compile", "onnxruntime"), default="eager",
                        help="where the front is timed (default: eager; compile and onnxruntime time the static mode "
                        "with capacities calibrated on the calibration split)")
    parser.add_argument("--speed-batch-size", type=positive_int, default=1, help="batch size of the timing "
                        "(default: 1)")
    parser.add_argument("--speed-images", type=positive_int, default=64, help="calibration images timed per pass")
    parser.add_argument("--no-speed", action="store_true", help="do not time the front (not with --min-speedup)")
    parser.add_argument("--first-layers", type=non_negative_int, nargs="+", metavar="S",
                        help="first ATS layers to search (default: 1 .. L-1); ranges S..E for every E >= S")
    parser.add_argument("--tome-r", type=positive_int, nargs="*", default=None, metavar="R",
                        help=f"ToMe merge counts per block to compare (default: "
                             f"{' '.join(map(str, TOME_R))})")
    parser.add_argument("--batch-size", type=positive_int, default=250, help="images per forward pass")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available, else cpu; under a launcher "
                        "each process takes its own GPU)")
    parser.add_argument("--output", type=Path, metavar="DIR", help="write a checkpoint with the chosen settings "
                        "(config, weights, image processor, model card), tune.json and tune.png there (an empty or "
                        "new folder)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output folder")


def run(args: argparse.Namespace) -> int:
    """`ats-hf tune`: 0 when a setting meets the target, 1 when none does."""
    if args.no_speed and args.min_speedup is not None:
        raise UsageError("--min-speedup needs the front timed: leave out --no-speed")
    if args.output is not None:
        require("plots", "--output (tune.png)")
    if args.speed_runtime == "onnxruntime" and not args.no_speed:
        require("onnx", "--speed-runtime onnxruntime")
    model_path = check_inputs(args, model=("--model", args.model),
                              output=None if args.output is None else ("--output", args.output, False))

    from ats_hf.evaluation.processes import join_processes, process_device
    from ats_hf.tune import SpeedSpec, Target, candidate_grid, format_report, tune, write_tune_output

    device = process_device(chosen_device(args.device))
    processes = join_processes(device)
    loaded, processor = load_model(model_path)
    loaded = loaded.to(device)
    model, processor = scored_view(loaded, processor, model_path)
    num_layers = model.config.num_hidden_layers
    if args.first_layers and max(args.first_layers) >= num_layers:
        raise UsageError(f"--first-layers {max(args.first_layers)} is outside 0..{num_layers - 1}")
    if args.max_accuracy_drop is not None:
        target = Target(max_accuracy_drop=args.max_accuracy_drop)
    elif args.min_speedup is not None:
        target = Target(min_speedup=args.min_speedup)
    else:
        target = Target(max_gmacs_fraction=args.gmacs_budget or 0.5)
    speed = None if args.no_speed else SpeedSpec(args.speed_runtime, args.speed_batch_size, args.speed_images)
    source, objective = scored_data(args, loaded, model, processor, args.num_images, shown=processes.is_main)
    candidates = candidate_grid(num_layers, tuple(args.first_layers) if args.first_layers else None)
    with usage_errors(ValueError):
        result = tune(model, source, None, target, candidates, batch_size=args.batch_size,
                      tome_r=TOME_R if args.tome_r is None else tuple(args.tome_r), speed=speed,
                      objective=objective, num_workers=num_workers(args), processes=processes)
    if processes.is_main:
        print(format_report(result))
        if args.output is not None:
            with usage_errors(OSError, context=f"cannot write to {str(args.output)!r}"):
                write_tune_output(loaded.cpu(), processor, result, args.output, source.description)
            print(f"\nwrote {args.output}")
    return 0 if result.chosen is not None else 1


__all__ = ["add_arguments", "run"]
