"""`ats-hf benchmark`: dense, ATS, top-K, random (and ToMe) on a trained model and labelled images (accuracy mode),
or on a named geometry with random weights (speed mode, `--speed-mode`); prints the table and writes benchmark.json
and the plots.

Mode and runtime: `--ats-capacity ROWS` (or a model whose config has a capacity, e.g. one saved by `ats-hf calibrate
--output`) runs ATS and its top-K / random baselines in the static mode, `--mode adaptive` forces the adaptive one;
`--runtime compile|onnxruntime` times every method in that runtime (onnxruntime: static mode only)."""

import argparse
import shlex
import sys
from pathlib import Path

from ats_hf_common.benchmark_defaults import (
    ACCURACY_MODE_TIMING,
    ATTN_IMPLEMENTATION,
    COMPILE_BACKEND,
    DTYPE,
    EVAL_BATCH_SIZE,
    GEOMETRIES,
    OUTPUT_DIR,
    RUNTIME,
    SEED,
    SPEED_MODE_MAX_TOKENS,
    SPEED_MODE_OUTPUT_DIR,
    SPEED_MODE_TIMING,
    SWEEP_FROM_LAYERS,
)
from ats_hf_common.grammar import parse_max_tokens

from .. import UsageError, usage_errors
from ..inputs import chosen_device, load_model, num_workers, refuse_no_layers, scored_data, scored_view, settings_for
from ..options import (
    MODEL_HELP,
    add_ats_arguments,
    add_data_arguments,
    add_evaluation_arguments,
    check_inputs,
    checked,
    non_negative_int,
    positive_int,
    require,
    settings_from_args,
)

MODES = ("adaptive", "static")
RUNTIMES = ("eager", "compile", "onnxruntime")
DTYPES = ("bfloat16", "float16", "float32")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ats-hf benchmark`."""
    accuracy, speed = ACCURACY_MODE_TIMING, SPEED_MODE_TIMING
    source = parser.add_argument_group("model and data (accuracy mode)")
    source.add_argument("--model", help=MODEL_HELP)
    add_data_arguments(source, "all; streamed, so memory does not grow with it")
    add_evaluation_arguments(source)
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
                          f"{' '.join(map(str, SWEEP_FROM_LAYERS))} for the embedded model, none otherwise)")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--speed-mode", choices=sorted(GEOMETRIES), help="time a named geometry with random weights "
                        "instead (dense, ATS at K, ATS at K=all, no-drop); no accuracy, no --model or --dataset")
    timing.add_argument("--batch-sizes", type=positive_int, nargs="*", metavar="B",
                        help="batch sizes to time; none to skip timing (default: "
                             f"{_join(accuracy.batch_sizes)}; {_join(speed.batch_sizes)} in speed mode)")
    timing.add_argument("--timing-images", type=positive_int, metavar="N", help="images timed per batch size and "
                        f"pass (default: {accuracy.timing_images}; {speed.timing_images} in speed mode)")
    timing.add_argument("--repeats", type=positive_int, default=accuracy.repeats, metavar="N",
                        help="timed passes per method; the median is reported (default: %(default)s)")
    timing.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    timing.add_argument("--dtype", choices=DTYPES, default=DTYPE, help="(default: %(default)s)")
    timing.add_argument("--attn-implementation", default=ATTN_IMPLEMENTATION,
                        help="eager, sdpa, flash_attention_2, ... (default: %(default)s)")
    timing.add_argument("--threads", type=positive_int, metavar="N", help="torch CPU threads (default: torch's "
                        "choice); 1 gives steadier timings on a busy machine")
    timing.add_argument("--runtime", choices=RUNTIMES, default=RUNTIME,
                        help="eager PyTorch; torch.compile (fullgraph for static shapes; compiled before timing); "
                             "or onnxruntime (static mode, CPU, float32; each method exported first) (default: "
                             "%(default)s)")
    timing.add_argument("--compile-backend", default=COMPILE_BACKEND,
                        help="torch.compile backend with --runtime compile (default: %(default)s)")
    timing.add_argument("--compile-mode", help="torch.compile mode with --runtime compile, e.g. reduce-overhead "
                        "(CUDA graphs), max-autotune (default: torch's)")
    timing.add_argument("--profile", action="store_true", help="also profile dense and ATS layer by layer at batch 1 "
                        "(aten operations and CPU time per layer; torch.profiler, eager)")
    parser.add_argument("--eval-batch-size", type=positive_int, default=EVAL_BATCH_SIZE, metavar="N",
                        help="images per forward pass when measuring accuracy, GMACs and tokens (results do not "
                             "depend on it; default: %(default)s)")
    parser.add_argument("--seed", type=int, default=SEED,
                        help="seed of the random sampler and the dataset shuffle (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, help="where benchmark.json and the plots go, an empty or new "
                        f"folder (default: {OUTPUT_DIR}, or {SPEED_MODE_OUTPUT_DIR})")
    parser.add_argument("--overwrite", action="store_true", help="replace the results in a non-empty --output-dir")


def run(args: argparse.Namespace) -> int:
    """`ats-hf benchmark`: check everything, run, print the table, write JSON and plots."""
    output_dir, model_path = _check_options(args)
    import torch

    from ats_hf.benchmark import format_table, write_report
    from ats_hf.evaluation.processes import join_processes, process_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = process_device(chosen_device(args.device))
    processes = join_processes(device)
    args.processes = processes
    if args.speed_mode and processes.world_size > 1:
        raise UsageError("--speed-mode only times, on one process; run it without a multi-process launcher")
    if args.runtime == "onnxruntime" and (torch.device(device).type != "cpu" or args.dtype != "float32"):
        raise UsageError(f"--runtime onnxruntime runs on the CPU in float32 here, not --device {device} --dtype "
                         f"{args.dtype}")
    result = _run_speed_mode(args, device) if args.speed_mode else _run_accuracy_mode(args, model_path, device)
    if not processes.is_main:
        return 0
    print(format_table(result))
    with usage_errors(OSError, context=f"cannot write to {str(output_dir)!r}"):
        written = write_report(result, output_dir)
    print("\nwrote " + ", ".join(str(path) for path in written))
    return 0


def _check_options(args: argparse.Namespace) -> tuple[Path, str | None]:
    """Everything that can be checked before torch loads; returns the output folder and the model path (None in
    speed mode)."""
    require("plots", "ats-hf benchmark")
    if args.runtime == "onnxruntime":
        require("onnx", "--runtime onnxruntime")
    if args.speed_mode:
        given = [name for name in ("model", "dataset", "split", "image_column", "label_column", "num_images")
                 if getattr(args, name) is not None] + (["sweep"] if args.sweep else [])
        if given:
            raise UsageError(f"--speed-mode times random weights on random images; it takes no --{given[0]}")
        if getattr(args, "ats_merge", None) is not None:
            raise UsageError("speed mode times ATS that drops tokens; --ats-merge applies to the accuracy mode")
    output_dir = args.output_dir or (Path(str(SPEED_MODE_OUTPUT_DIR).format(geometry=args.speed_mode))
                                     if args.speed_mode else OUTPUT_DIR)
    model_path = check_inputs(args, model=None if args.speed_mode else ("--model", args.model),
                              data=not args.speed_mode, output=("--output-dir", output_dir, False))
    args.command_line = shlex.join(["ats-hf", "benchmark", *sys.argv[2:]]) if sys.argv[1:2] == ["benchmark"] else ""
    return output_dir, model_path


def _run_accuracy_mode(args: argparse.Namespace, model_path: str, device: str):
    from ats_hf.benchmark import run_benchmark, sweep_methods
    from ats_hf.benchmark.engine import DTYPES as TORCH_DTYPES
    from ats_hf.benchmark.engine import default_ats_method
    from ats_hf.methods import AtsMethod

    loaded, processor = load_model(model_path, attn_implementation=args.attn_implementation)
    loaded = loaded.to(device=device, dtype=TORCH_DTYPES[args.dtype]).eval()
    model, processor = scored_view(loaded, processor, model_path)
    config = model.config
    settings = settings_for(model, args, default_ats_method(config).settings)
    refuse_no_layers(settings, "compare with dense")
    settings = _with_mode(args, settings, default=None)
    num_layers = config.num_hidden_layers
    from_layers = args.sweep_from_layer
    if from_layers is None:
        from_layers = SWEEP_FROM_LAYERS if args.model is None else ()
    too_deep = [start for start in from_layers if start >= num_layers]
    if too_deep:
        raise UsageError(f"--sweep-from-layer {too_deep} is beyond the model's layers 0..{num_layers - 1}")
    for k in args.sweep:
        with usage_errors(ValueError, context=f"--sweep {k}"):
            settings.replace(max_tokens=k).check(num_layers, config.ats_num_special_tokens)

    processes = args.processes
    if args.model is None and processes.is_main:
        from ats_hf.progress import note

        note("the embedded model's benchmark takes about 1 to 1.5 minutes on a quiet 2-core CPU (2 passes over 2000 "
             "images, then timing at batch 1 and 256)")
    source, objective = scored_data(args, loaded, model, processor, args.num_images, args.seed,
                                    shown=processes.is_main)
    ats = AtsMethod("ats", settings)
    timing = ACCURACY_MODE_TIMING
    return run_benchmark(
        model,
        source,
        objective,
        ats=ats,
        sweep=sweep_methods(ats, num_layers, tuple(args.sweep), tuple(from_layers)),
        batch_sizes=timing.batch_sizes if args.batch_sizes is None else tuple(args.batch_sizes),
        timing_images=args.timing_images or timing.timing_images,
        repeats=args.repeats,
        eval_batch_size=args.eval_batch_size,
        seed=args.seed,
        model_name=args.model or "embedded default model (synthetic digits ViT)",
        notes=tuple(source.notes),
        command=args.command_line,
        num_workers=num_workers(args),
        processes=processes,
        **_runtime_options(args),
    )


def _run_speed_mode(args: argparse.Namespace, device: str):
    from ats_hf import AtsSettings
    from ats_hf.benchmark import run_speed_benchmark
    from ats_hf.benchmark.engine import DTYPES as TORCH_DTYPES
    from ats_hf.benchmark.engine import speed_config
    from ats_hf.configuration_ats_core import default_ats_layers

    config = speed_config(args.speed_mode)
    base = AtsSettings(default_ats_layers(config.num_hidden_layers), SPEED_MODE_MAX_TOKENS)
    with usage_errors(ValueError, context=f"ATS settings for {args.speed_mode}"):
        settings = base.replace(**settings_from_args(args)).check(config.num_hidden_layers,
                                                               config.ats_num_special_tokens)
    refuse_no_layers(settings, "compare with dense")
    k_rows = [1.0 if k is None else k for k in (settings.max_tokens if isinstance(settings.max_tokens, tuple)
                                                else [settings.max_tokens])]
    settings = _with_mode(args, settings, default=k_rows if len(k_rows) > 1 else k_rows[0])
    timing = SPEED_MODE_TIMING
    batch_sizes = timing.batch_sizes if args.batch_sizes is None else tuple(args.batch_sizes)
    if not batch_sizes:
        raise UsageError("speed mode only times the methods: give at least one --batch-sizes value")
    return run_speed_benchmark(
        args.speed_mode,
        settings,
        batch_sizes=batch_sizes,
        timing_images=args.timing_images or timing.timing_images,
        repeats=args.repeats,
        device=device,
        dtype=TORCH_DTYPES[args.dtype],
        attn_implementation=args.attn_implementation,
        seed=args.seed,
        command=args.command_line,
        **_runtime_options(args),
    )


def _with_mode(args: argparse.Namespace, settings, default):
    """The settings after --mode: their capacity (from --ats-capacity or the model's config) in the static mode,
    `default` when --mode static has none (None: an error), no capacity in the adaptive mode."""
    given = getattr(args, "ats_capacity", None)
    if args.mode == "adaptive":
        if given is not None:
            raise UsageError(f"--mode adaptive contradicts --ats-capacity {given}; give one of them")
        settings = settings.replace(capacity=None)
    elif args.mode == "static" and settings.capacity is None:
        if default is None:
            raise UsageError("--mode static needs a capacity: pass --ats-capacity ROWS (e.g. 0.5), or benchmark a "
                             "model saved by 'ats-hf calibrate --output DIR'")
        settings = settings.replace(capacity=default)
    if args.runtime == "onnxruntime" and settings.capacity is None:
        raise UsageError("--runtime onnxruntime times the static mode only (ONNX has no data-dependent shapes): pass "
                         "--ats-capacity ROWS or --mode static")
    return settings


def _runtime_options(args: argparse.Namespace) -> dict:
    return {"runtime": args.runtime, "compile_backend": args.compile_backend, "compile_mode": args.compile_mode,
            "profile": args.profile}


def _join(values) -> str:
    return " ".join(map(str, values))


__all__ = ["add_arguments", "run"]
