"""`ats-hf benchmark`: options, and a run that loads the model and data, benchmarks, prints the table and writes the
JSON and plots. Mistakes in the options end in one line, `ats-hf benchmark: error: ...` (exit status 2).

Mode and runtime: `--ats-capacity ROWS` (or a model whose config has a capacity, e.g. one saved by `ats-hf calibrate
--output`) runs ATS and its top-K / random baselines in the static mode, `--mode adaptive` forces the adaptive one;
`--runtime compile|onnxruntime` times every method in that runtime (onnxruntime: static mode only)."""

import argparse
import dataclasses
import importlib.util
import shlex
import sys
from pathlib import Path

import torch

from ats_hf_cli import UsageError, checked, non_negative_int, positive_int, usage_errors

from ..cli_inputs import MODEL_HELP, add_data_arguments, check_data_options, load_classifier, load_images
from ..configuration_ats_vit import default_ats_layers
from ..data.labelled_images import MAX_IMAGES
from ..settings import add_ats_arguments, parse_max_tokens, settings_from_args
from . import defaults
from .engine import DTYPES, GEOMETRIES, run_benchmark, run_speed_benchmark, speed_config, sweep_methods
from .report import format_table, write_report
from .results import BenchmarkResult, Method
from .runtimes import RUNTIMES

MODES = ("adaptive", "static")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ats-hf benchmark`."""
    accuracy, speed = defaults.ACCURACY_MODE_TIMING, defaults.SPEED_MODE_TIMING
    source = parser.add_argument_group("model and data (accuracy mode)")
    source.add_argument("--model", help=MODEL_HELP)
    add_data_arguments(source, f"all, at most {MAX_IMAGES}")
    ats = parser.add_argument_group("ATS settings (the model's by default; layers L//4..L-1 if it has none)")
    add_ats_arguments(ats, sampler=False)  # the benchmark compares samplers
    ats.add_argument("--mode", choices=MODES, help="adaptive, or static (fixed shapes: --ats-capacity rows per ATS "
                     "layer; in speed mode the capacity defaults to K, which never truncates); default: static when a "
                     "capacity is given or in the model's config, else adaptive. top-K and random run in the same mode")
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
    timing.add_argument("--runtime", choices=RUNTIMES, default=defaults.RUNTIME,
                        help="eager PyTorch; torch.compile (fullgraph for static shapes; compiled before timing); "
                             "or onnxruntime (static mode, CPU, float32; each method exported first) (default: "
                             "%(default)s)")
    timing.add_argument("--compile-backend", default=defaults.COMPILE_BACKEND,
                        help="torch.compile backend with --runtime compile (default: %(default)s)")
    timing.add_argument("--compile-mode", help="torch.compile mode with --runtime compile, e.g. reduce-overhead "
                        "(CUDA graphs), max-autotune (default: torch's)")
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
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if args.runtime == "onnxruntime"
               and importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}: --runtime onnxruntime needs the export extra, pip install "
                         "'ats_hf[export]'")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    with usage_errors(RuntimeError, AssertionError, context=f"--device {device!r}"):
        torch.empty(0, device=device)
    if args.runtime == "onnxruntime" and (torch.device(device).type != "cpu" or args.dtype != "float32"):
        raise UsageError(f"--runtime onnxruntime runs on the CPU in float32 here, not --device {device} --dtype "
                         f"{args.dtype}")
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
    check_data_options(args)
    model, processor, model_name = load_classifier(args.model, attn_implementation=args.attn_implementation)
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

    data = load_images(args, processor, model.config.id2label, args.seed)
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
        model_name=model_name,
        data_name=data.description,
        notes=tuple(data.notes),
        **_runtime_options(args),
    )


def _run_speed_mode(args: argparse.Namespace, device: str) -> BenchmarkResult:
    timing = defaults.SPEED_MODE_TIMING
    config = speed_config(args.speed_mode)
    settings = {"max_tokens": defaults.SPEED_MODE_MAX_TOKENS, **settings_from_args(args)}
    if settings.get("merge") is not None:
        raise UsageError("speed mode times ATS that drops tokens; --ats-merge applies to the accuracy mode")
    layers = settings.get("layers", default_ats_layers(config.num_hidden_layers))
    with usage_errors(ValueError, context=f"ATS settings for {args.speed_mode}"):
        layers, max_tokens, _ = config.validated_ats_settings(layers, settings["max_tokens"], "inverse_transform")
    if not layers:
        raise UsageError("--ats-layers none leaves nothing to compare with dense; give at least one ATS layer")
    k_rows = [1.0 if k is None else k for k in (max_tokens if isinstance(max_tokens, list) else [max_tokens])]
    capacity = _capacity(args, settings.get("capacity"), default=k_rows if len(k_rows) > 1 else k_rows[0])
    with usage_errors(ValueError, context=f"ATS settings for {args.speed_mode}"):
        capacity = config.validated_ats_capacity(layers, capacity)
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
        ats_capacity=tuple(capacity) if isinstance(capacity, list) else capacity,
        **_runtime_options(args),
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
    capacity = _capacity(args, settings["capacity"], default=None)
    with usage_errors(ValueError, context="ATS settings"):
        capacity = config.validated_ats_capacity(layers, capacity)
        merge = config.validated_ats_merge(settings["merge"])
    return Method.from_settings("ats", layers, max_tokens, sampler, capacity, merge)


def _capacity(args: argparse.Namespace, capacity, default):
    """The ATS method's capacity after --mode: `capacity` (from --ats-capacity or the model's config) in the static
    mode, `default` when --mode static has none (None: an error), None in the adaptive mode."""
    given = getattr(args, "ats_capacity", None)
    if args.mode == "adaptive":
        if given is not None:
            raise UsageError(f"--mode adaptive contradicts --ats-capacity {given}; give one of them")
        capacity = None
    elif args.mode == "static" and capacity is None:
        if default is None:
            raise UsageError("--mode static needs a capacity: pass --ats-capacity ROWS (e.g. 0.5), or benchmark a "
                             "model saved by 'ats-hf calibrate --output DIR'")
        capacity = default
    if args.runtime == "onnxruntime" and capacity is None:
        raise UsageError("--runtime onnxruntime times the static mode only (ONNX has no data-dependent shapes): pass "
                         "--ats-capacity ROWS or --mode static")
    return capacity


def _runtime_options(args: argparse.Namespace) -> dict:
    return {"runtime": args.runtime, "compile_backend": args.compile_backend, "compile_mode": args.compile_mode}


def _join(values) -> str:
    return " ".join(map(str, values))


__all__ = ["add_arguments", "run"]
