"""`ats-hf benchmark`: options, and a run that loads the model and data, benchmarks, prints the table and writes the
JSON and plots. Mistakes in the options end in one line, `ats-hf benchmark: error: ...` (exit status 2)."""

import argparse
import dataclasses
import importlib.util
import shlex
import sys
from pathlib import Path

import torch

from ats_hf_cli import UsageError, checked, non_negative_int, positive_int, usage_errors

from ..configuration_ats_vit import AtsViTConfig, default_ats_layers
from ..data import DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME
from ..data.labelled_images import MAX_IMAGES, load_labelled_images
from ..progress import note
from ..settings import add_ats_arguments, parse_max_tokens, settings_from_args
from . import defaults
from .engine import DTYPES, GEOMETRIES, run_benchmark, run_speed_benchmark, sweep_methods
from .report import format_table, write_report
from .results import BenchmarkResult, Method


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ats-hf benchmark`."""
    accuracy, speed = defaults.ACCURACY_MODE_TIMING, defaults.SPEED_MODE_TIMING
    source = parser.add_argument_group("model and data (accuracy mode)")
    source.add_argument("--model", help="Hub id or folder of a ViT/DeiT/ATS-ViT classifier (default: the embedded "
                                        "model)")
    source.add_argument("--dataset", help="Hub dataset id, image folder (one sub-folder per class) or save_to_disk "
                                          "folder (default: the embedded synthetic digits test split)")
    source.add_argument("--split", help="dataset split (default: test, else validation, else train)")
    source.add_argument("--num-images", type=positive_int,
                        help=f"images to evaluate (default: all, at most {MAX_IMAGES})")
    source.add_argument("--image-column", help="image column (default: the first Image feature)")
    source.add_argument("--label-column", help="label column (default: the first ClassLabel feature, or 'label')")
    ats = parser.add_argument_group("ATS settings (the model's by default; layers L//4..L-1 if it has none)")
    add_ats_arguments(ats, sampler=False, capacity=False)  # the benchmark compares samplers, in the adaptive mode
    ats.add_argument("--sweep", type=checked(parse_max_tokens, "K"), nargs="*", default=[], metavar="K",
                     help="extra K values, each on the ATS layers, with matched top-K and random, for the "
                          "accuracy-vs-GMACs plot")
    ats.add_argument("--sweep-from-layer", type=non_negative_int, nargs="*", metavar="S",
                     help="extra first ATS layers S (ATS in S..L-1 at the ATS K) for the plot (default: "
                          f"{' '.join(map(str, defaults.SWEEP_FROM_LAYERS))} for the embedded model, none otherwise)")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--speed-mode", choices=sorted(GEOMETRIES), help="time a named geometry with random "
                        "weights instead (dense, ATS at K, ATS at K=all, no-drop); no accuracy")
    timing.add_argument("--batch-sizes", type=positive_int, nargs="*", metavar="B",
                        help="batch sizes to time; none to skip timing (default: "
                             f"{_join(accuracy.batch_sizes)}; {_join(speed.batch_sizes)} in speed mode)")
    timing.add_argument("--timing-images", type=positive_int, metavar="N", help="images timed per batch size and "
                        f"pass (default: {accuracy.timing_images}; {speed.timing_images} in speed mode)")
    timing.add_argument("--repeats", type=positive_int, default=accuracy.repeats, metavar="N",
                        help="timed passes per method; the median is reported (default: %(default)s)")
    timing.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    timing.add_argument("--dtype", choices=sorted(DTYPES), default=defaults.DTYPE, help="(default: %(default)s)")
    timing.add_argument("--attn-implementation", default=defaults.ATTN_IMPLEMENTATION,
                        help="eager, sdpa, flash_attention_2, ... (default: %(default)s)")
    timing.add_argument("--threads", type=positive_int, metavar="N", help="torch CPU threads (default: torch's "
                        "choice); 1 gives steadier timings on a busy machine")
    parser.add_argument("--eval-batch-size", type=positive_int, default=defaults.EVAL_BATCH_SIZE, metavar="N",
                        help="images per forward pass when measuring accuracy, GMACs and tokens (results do not "
                             "depend on it; default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.SEED,
                        help="seed of the random sampler and the dataset shuffle (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, help="where benchmark.json and the plots go (default: "
                        f"{defaults.OUTPUT_DIR}, or {defaults.SPEED_MODE_OUTPUT_DIR})")


def run(args: argparse.Namespace) -> int:
    """`ats-hf benchmark`: run, print the table, write JSON and plots."""
    needed = ["matplotlib"] + ([] if args.speed_mode else ["datasets"] if args.dataset else ["sklearn"])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}: install the benchmark extra, pip install 'ats_hf[benchmark]'")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with usage_errors(RuntimeError, AssertionError, context=f"--device {device!r}"):
        torch.empty(0, device=device)
    result = _run_speed_mode(args, device) if args.speed_mode else _run_accuracy_mode(args, device)
    command = shlex.join(["ats-hf", "benchmark", *sys.argv[2:]]) if sys.argv[1:2] == ["benchmark"] else ""
    result = dataclasses.replace(result, command=command or "ats-hf benchmark")
    print(format_table(result))
    output_dir = args.output_dir or defaults.OUTPUT_DIR
    if args.speed_mode and not args.output_dir:
        output_dir = Path(str(defaults.SPEED_MODE_OUTPUT_DIR).format(geometry=args.speed_mode))
    with usage_errors(OSError, context=f"cannot write to {str(output_dir)!r}"):
        written = write_report(result, output_dir)
    print("\nwrote " + ", ".join(str(path) for path in written))
    return 0


def _run_accuracy_mode(args: argparse.Namespace, device: str) -> BenchmarkResult:
    from transformers import AutoImageProcessor

    from ..hub.checkpoint import check_source, load_ats_classifier

    if args.dataset is None and (args.split or args.image_column or args.label_column):
        raise UsageError("--split, --image-column and --label-column apply to --dataset only")
    model_path = args.model or str(DEFAULT_MODEL_DIR)
    with usage_errors(FileNotFoundError):
        check_source(model_path, "--model")
    with usage_errors(OSError, ValueError, context=f"cannot load --model {model_path!r}"):
        model = load_ats_classifier(model_path, attn_implementation=args.attn_implementation)
        processor = AutoImageProcessor.from_pretrained(model_path)
    model = model.to(device=device, dtype=DTYPES[args.dtype]).eval()
    ats = _ats_method(model.config, args)
    num_layers = model.config.num_hidden_layers
    from_layers = args.sweep_from_layer
    if from_layers is None:
        from_layers = defaults.SWEEP_FROM_LAYERS if args.model is None else ()
    too_deep = [start for start in from_layers if start >= num_layers]
    if too_deep:
        raise UsageError(f"--sweep-from-layer {too_deep} is beyond the model's layers 0..{num_layers - 1}")
    for k in args.sweep:
        with usage_errors(ValueError, context=f"--sweep {k}"):
            model.config.validated_ats_settings(list(ats.ats_layers), k, "inverse_transform")

    with usage_errors(OSError, ValueError, context=f"cannot read --dataset {args.dataset!r}" if args.dataset else ""):
        data = load_labelled_images(args.dataset, processor, model.config.id2label, args.split, args.num_images,
                                    args.image_column, args.label_column, args.seed)
    for text in data.notes:
        note(f"note: {text}")
    timing = defaults.ACCURACY_MODE_TIMING
    return run_benchmark(
        model,
        data.pixel_values.to(DTYPES[args.dtype]),
        data.labels,
        ats=ats,
        sweep=sweep_methods(ats, num_layers, tuple(args.sweep), tuple(from_layers)),
        batch_sizes=timing.batch_sizes if args.batch_sizes is None else tuple(args.batch_sizes),
        timing_images=args.timing_images or timing.timing_images,
        repeats=args.repeats,
        eval_batch_size=args.eval_batch_size,
        seed=args.seed,
        model_name=args.model or DEFAULT_MODEL_NAME,
        data_name=data.description,
        notes=tuple(data.notes),
    )


def _run_speed_mode(args: argparse.Namespace, device: str) -> BenchmarkResult:
    timing = defaults.SPEED_MODE_TIMING
    config = AtsViTConfig(**GEOMETRIES[args.speed_mode])
    settings = {"max_tokens": defaults.SPEED_MODE_MAX_TOKENS, **settings_from_args(args)}
    layers = settings.get("layers", default_ats_layers(config.num_hidden_layers))
    with usage_errors(ValueError, context=f"ATS settings for {args.speed_mode}"):
        layers, max_tokens, _ = config.validated_ats_settings(layers, settings["max_tokens"], "inverse_transform")
    if not layers:
        raise UsageError("--ats-layers none leaves nothing to compare with dense; give at least one ATS layer")
    batch_sizes = timing.batch_sizes if args.batch_sizes is None else tuple(args.batch_sizes)
    if not batch_sizes:
        raise UsageError("speed mode only times the methods: give at least one --batch-sizes value")
    return run_speed_benchmark(
        args.speed_mode,
        ats_layers=tuple(layers),
        ats_max_tokens=tuple(max_tokens) if isinstance(max_tokens, list) else max_tokens,
        batch_sizes=batch_sizes,
        timing_images=args.timing_images or timing.timing_images,
        repeats=args.repeats,
        device=device,
        dtype=DTYPES[args.dtype],
        attn_implementation=args.attn_implementation,
        seed=args.seed,
    )


def _ats_method(config, args: argparse.Namespace) -> Method:
    """The ATS method: the model's settings (the paper's recipe when it has no ATS layers), then the options."""
    base = Method.from_config(config)
    settings = {**base.settings, **settings_from_args(args)}
    with usage_errors(ValueError, context="ATS settings"):
        layers, max_tokens, sampler = config.validated_ats_settings(
            settings["layers"], settings["max_tokens"], settings["sampler"]
        )
    if not layers:
        raise UsageError("--ats-layers none leaves nothing to compare with dense; give at least one ATS layer")
    return Method.from_settings("ats", layers, max_tokens, sampler)


def _join(values) -> str:
    return " ".join(map(str, values))


__all__ = ["add_arguments", "run"]
