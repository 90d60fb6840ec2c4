"""The benchmark: dense vs ATS vs top-K vs random at equal mean tokens, in accuracy, GMACs and measured speed.

Two modes:
- accuracy mode (default): a trained model on labelled images (the embedded default model and its synthetic test
  split unless `--model` / `--dataset` say otherwise). ATS runs first; top-K and random then keep, in every ATS
  layer, ATS's mean token count (rounded). Optional sweeps over K add points to the accuracy-vs-GMACs plot.
- speed mode (`--speed-mode deit-s`): a named geometry with random weights and random images, timing only.

Python API: `run_benchmark`, `run_speed_benchmark` -> `BenchmarkResult`; `benchmark_report` prints and plots it.
"""

import argparse
import contextlib
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .configuration_ats_vit import AtsViTConfig
from .flops import gmacs_per_image
from .modeling_ats_vit import AtsViTForImageClassification
from .timing import interleaved_throughput

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DEFAULT_SWEEP_FROM_LAYER = (1, 2, 4, 5)  # the embedded model's sweep: ATS in layers S..5 for each S
# Named ViT geometries for speed mode: image size, patch size, width, depth, heads, MLP size.
GEOMETRIES = {
    "deit-tiny": dict(image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                      intermediate_size=768),
    "deit-s": dict(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                   intermediate_size=1536),
    "deit-b": dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Method:
    """One way to run the model: which layers sample tokens, how many they keep at most (K), and how."""

    name: str
    ats_layers: tuple[int, ...] = ()
    ats_max_tokens: int | float | tuple[int | float | None, ...] | None = None
    ats_sampler: str = "inverse_transform"

    @classmethod
    def from_config(cls, config: AtsViTConfig) -> "Method":
        """"ats" with the config's settings; with no ATS layers there, the paper's recipe (layers L//4..L-1, K = all)."""
        if config.ats_layers:
            max_tokens = config.ats_max_tokens
            return cls("ats", tuple(config.ats_layers), tuple(max_tokens) if isinstance(max_tokens, list) else max_tokens)
        return cls("ats", tuple(range(config.num_hidden_layers // 4, config.num_hidden_layers)))


@dataclass
class TimingResult:
    """Measured throughput of one method at one batch size, and how it compares with dense."""

    batch_size: int
    num_images: int
    images_per_second: float
    spread: float  # (max - min) / median over the repeats
    speedup: float  # images_per_second / dense's
    gmacs_ratio: float  # dense's mean GMACs / this method's, on the same timed images: the ideal speed-up

    @property
    def efficiency(self) -> float:
        """Measured speed-up / GMACs ratio: 1.0 means the saved compute is fully turned into speed."""
        return self.speedup / self.gmacs_ratio


@dataclass
class MethodResult:
    """Everything measured for one method."""

    method: Method
    accuracy: float | None
    gmacs_mean: float
    gmacs_std: float
    tokens_per_layer: list[float]
    tokens_per_layer_std: list[float]
    timings: dict[int, TimingResult] = field(default_factory=dict)
    gmacs: torch.Tensor | None = field(default=None, repr=False)  # (N,) per image, not written to JSON


@dataclass
class BenchmarkResult:
    """A whole benchmark run: the compared methods (with timings) and the sweep points (accuracy and GMACs only)."""

    model: str
    data: str
    num_images: int
    dense_gmacs: float
    methods: list[MethodResult]
    sweep: list[MethodResult]
    machine: dict
    command: str = ""

    def method(self, name: str) -> MethodResult:
        for result in self.methods:
            if result.method.name == name:
                return result
        raise KeyError(f"no method {name!r}; have {[r.method.name for r in self.methods]}")

    def to_dict(self) -> dict:
        def method_dict(result: MethodResult) -> dict:
            data = {k: v for k, v in asdict(result).items() if k not in ("gmacs", "timings")}
            data["timings"] = [{**asdict(t), "efficiency": t.efficiency} for t in result.timings.values()]
            return data

        return {
            "model": self.model,
            "data": self.data,
            "num_images": self.num_images,
            "dense_gmacs": self.dense_gmacs,
            "command": self.command,
            "machine": self.machine,
            "methods": [method_dict(r) for r in self.methods],
            "sweep": [method_dict(r) for r in self.sweep],
        }


@contextlib.contextmanager
def use_method(model: AtsViTForImageClassification, method: Method):
    """Run `model` with `method`'s ATS settings inside the block (the config is read at forward time)."""
    config = model.config
    saved = (config.ats_layers, config.ats_max_tokens, config.ats_sampler)
    max_tokens = list(method.ats_max_tokens) if isinstance(method.ats_max_tokens, tuple) else method.ats_max_tokens
    config.ats_layers, config.ats_max_tokens, config.ats_sampler = list(method.ats_layers), max_tokens, method.ats_sampler
    try:
        config.check_ats_settings()
        yield model
    finally:
        config.ats_layers, config.ats_max_tokens, config.ats_sampler = saved


def matched_baselines(ats: MethodResult) -> list[Method]:
    """top-K and random keeping, in every ATS layer, ATS's mean token count there (rounded, at least 2)."""
    layers = ats.method.ats_layers
    counts = tuple(max(2, int(math.floor(ats.tokens_per_layer[i] + 0.5))) for i in layers)
    suffix = "" if ats.method.name == "ats" else f" (as {ats.method.name})"
    return [Method(f"top-k{suffix}", layers, counts, "top_k"), Method(f"random{suffix}", layers, counts, "random")]


@torch.inference_mode()
def evaluate_method(
    model: AtsViTForImageClassification,
    method: Method,
    pixel_values: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> MethodResult:
    """Accuracy, per-image GMACs and tokens per layer of one method over `pixel_values` (N, C, H, W)."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    num_input_tokens = _num_input_tokens(model.config, pixel_values.shape[-2:])
    correct, gmacs, tokens = 0, [], []
    with use_method(model, method):
        for start in tqdm(range(0, len(pixel_values), batch_size), desc=f"eval {method.name}", leave=False, disable=None):
            output = model(pixel_values[start : start + batch_size].to(device))
            if labels is not None:
                correct += (output.logits.argmax(-1).cpu() == labels[start : start + batch_size]).sum().item()
            gmacs.append(gmacs_per_image(model.config, output.num_tokens.cpu(), num_input_tokens=num_input_tokens))
            tokens.append(output.num_tokens.cpu().double())
    gmacs, tokens = torch.cat(gmacs), torch.cat(tokens)
    return MethodResult(
        method=method,
        accuracy=None if labels is None else 100.0 * correct / len(pixel_values),
        gmacs_mean=gmacs.mean().item(),
        gmacs_std=gmacs.std(unbiased=False).item(),
        tokens_per_layer=tokens.mean(0).tolist(),
        tokens_per_layer_std=tokens.std(0, unbiased=False).tolist(),
        gmacs=gmacs,
    )


def time_methods(
    model: AtsViTForImageClassification,
    results: list[MethodResult],
    pixel_values: torch.Tensor,
    batch_sizes: tuple[int, ...],
    timing_images: int,
    repeats: int,
    seed: int = 0,
) -> None:
    """Fill in `timings` of every result: throughput of each method at each batch size, measured interleaved.

    Each batch size times the first max(b, timing_images rounded down to a multiple of b) images, capped at N. The
    first result is the reference (dense): speed-up = throughput / its throughput, GMACs ratio = its mean GMACs /
    this method's, both over the same timed images.
    """
    device = next(model.parameters()).device
    reference = results[0]
    for batch_size in batch_sizes:
        count = min(len(pixel_values), max(batch_size, timing_images // batch_size * batch_size))
        batches = [pixel_values[i : i + batch_size].to(device) for i in range(0, count, batch_size)]

        def one_pass(method: Method):
            def run() -> int:
                with torch.inference_mode(), use_method(model, method):
                    for batch in batches:
                        model(batch)
                return count

            return run

        torch.manual_seed(seed)
        measured = interleaved_throughput(
            {r.method.name: one_pass(r.method) for r in results}, device, repeats=repeats,
            description=f"timing batch {batch_size}",
        )
        reference_speed = measured[reference.method.name].images_per_second
        reference_gmacs = reference.gmacs[:count].mean().item()
        for result in results:
            throughput = measured[result.method.name]
            result.timings[batch_size] = TimingResult(
                batch_size=batch_size,
                num_images=count,
                images_per_second=throughput.images_per_second,
                spread=throughput.spread,
                speedup=throughput.images_per_second / reference_speed,
                gmacs_ratio=reference_gmacs / result.gmacs[:count].mean().item(),
            )


def run_benchmark(
    model: AtsViTForImageClassification,
    pixel_values: torch.Tensor,
    labels: torch.Tensor | None = None,
    ats: Method | None = None,
    sweep: tuple[Method, ...] = (),
    batch_sizes: tuple[int, ...] = (1, 256),
    timing_images: int = 128,
    repeats: int = 5,
    eval_batch_size: int = 64,
    seed: int = 0,
    model_name: str = "model",
    data_name: str = "data",
) -> BenchmarkResult:
    """Compare dense, ATS, and top-K / random at ATS's mean tokens per layer on labelled images.

    Args:
        model: an ATS-ViT classifier (any ATS settings; each method sets its own).
        pixel_values: (N, C, H, W) processed images; labels: (N,) class indices, or None to skip accuracy.
        ats: the ATS setting to compare; None: `Method.from_config(model.config)`.
        sweep: more ATS methods (see `sweep_methods`), each with its matched top-K and random, for the plot only.
        batch_sizes: batch sizes to time (empty: no timing); timing_images, repeats: see `time_methods`.
    """
    ats = ats or Method.from_config(model.config)
    model.eval()
    dense = evaluate_method(model, Method("dense"), pixel_values, labels, eval_batch_size, seed)
    ats_result = evaluate_method(model, ats, pixel_values, labels, eval_batch_size, seed)
    methods = [dense, ats_result] + [
        evaluate_method(model, baseline, pixel_values, labels, eval_batch_size, seed)
        for baseline in matched_baselines(ats_result)
    ]
    sweep_results = []
    for method in sweep:
        point = evaluate_method(model, method, pixel_values, labels, eval_batch_size, seed)
        sweep_results += [point] + [
            evaluate_method(model, baseline, pixel_values, labels, eval_batch_size, seed)
            for baseline in matched_baselines(point)
        ]
    if batch_sizes:
        time_methods(model, methods, pixel_values, batch_sizes, timing_images, repeats, seed)
    return BenchmarkResult(
        model=model_name,
        data=data_name,
        num_images=len(pixel_values),
        dense_gmacs=dense.gmacs_mean,
        methods=methods,
        sweep=sweep_results,
        machine=describe_machine(next(model.parameters())),
    )


def sweep_methods(
    ats: Method, num_layers: int, max_tokens: tuple = (), from_layers: tuple[int, ...] = ()
) -> tuple[Method, ...]:
    """ATS variants around `ats`: each K in `max_tokens` on its layers; then ATS in layers S..num_layers-1 for each
    S in `from_layers`, at its K (at K = all when its K is a per-layer list)."""
    by_k = [Method(f"ats K={'all' if k is None else k}", ats.ats_layers, k) for k in max_tokens]
    layer_k = None if isinstance(ats.ats_max_tokens, tuple) else ats.ats_max_tokens
    by_layers = [
        Method(f"ats layers {start}-{num_layers - 1}" if start < num_layers - 1 else f"ats layer {start}",
               tuple(range(start, num_layers)), layer_k)
        for start in from_layers
    ]
    return tuple(by_k + by_layers)


def speed_model(geometry: str | dict, num_labels: int = 1000, seed: int = 0) -> AtsViTForImageClassification:
    """A randomly initialised ATS-ViT of a named geometry (see `GEOMETRIES`) or of a dict of config fields."""
    if isinstance(geometry, str) and geometry not in GEOMETRIES:
        raise ValueError(f"geometry={geometry!r} is unknown; choose one of {', '.join(GEOMETRIES)}, or pass config fields.")
    torch.manual_seed(seed)
    fields = GEOMETRIES[geometry] if isinstance(geometry, str) else geometry
    return AtsViTForImageClassification(AtsViTConfig(**{"num_labels": num_labels, **fields})).eval()


def run_speed_benchmark(
    geometry: str | dict = "deit-s",
    ats_layers: tuple[int, ...] | None = None,
    ats_max_tokens: int | float | tuple = 0.5,
    batch_sizes: tuple[int, ...] = (1, 32),
    timing_images: int = 16,
    repeats: int = 5,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> BenchmarkResult:
    """Wall-clock gains on a named geometry with random weights and random images.

    Compares dense; ATS with K = `ats_max_tokens`; ATS with K = all tokens (the paper's default: only duplicates
    and the lowest-scoring token go); and "no-drop", the ATS layers with top-K at K = all tokens, so that scoring,
    sampling and packing run but no token is dropped: its throughput against dense is the pure overhead.
    """
    model = speed_model(geometry, seed=seed).to(device=device, dtype=dtype)
    model.set_attn_implementation(attn_implementation)
    layers = tuple(ats_layers) if ats_layers is not None else Method.from_config(model.config).ats_layers
    methods = [
        Method("dense"),
        Method(f"ats K={ats_max_tokens}", layers, ats_max_tokens),
        Method("ats K=all", layers, None),
        Method("no-drop", layers, None, "top_k"),
    ]
    config = model.config
    count = max(max(batch_sizes), timing_images)
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(count, config.num_channels, config.image_size, config.image_size, generator=generator)
    pixel_values = pixel_values.to(dtype)
    results = [evaluate_method(model, method, pixel_values, batch_size=max(batch_sizes), seed=seed) for method in methods]
    time_methods(model, results, pixel_values, batch_sizes, timing_images, repeats, seed)
    return BenchmarkResult(
        model=f"{geometry if isinstance(geometry, str) else 'custom geometry'} (random weights, {attn_implementation})",
        data=f"{count} random images",
        num_images=count,
        dense_gmacs=results[0].gmacs_mean,
        methods=results,
        sweep=[],
        machine=describe_machine(next(model.parameters())),
    )


def describe_machine(parameter: torch.Tensor) -> dict:
    """Where the numbers were measured: CPU model, cores and threads, device, dtype, library versions."""
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(parameter.device),
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    if parameter.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(parameter.device)
    return info


def _num_input_tokens(config, image_hw) -> int:
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    return (int(image_hw[0]) // patch) * (int(image_hw[1]) // patch) + 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ats-hf benchmark`."""
    source = parser.add_argument_group("model and data (accuracy mode)")
    source.add_argument("--model", help="Hub id or folder of a ViT/DeiT/ATS-ViT classifier (default: the embedded model)")
    source.add_argument("--dataset", help="Hub dataset id, image folder (one sub-folder per class) or save_to_disk "
                                          "folder (default: the embedded synthetic digits test split)")
    source.add_argument("--split", help="dataset split (default: test, else validation, else train)")
    source.add_argument("--num-images", type=int, help="images to evaluate (default: all, at most 2000)")
    source.add_argument("--image-column", help="image column (default: the first Image feature)")
    source.add_argument("--label-column", help="label column (default: the first ClassLabel feature, or 'label')")
    ats = parser.add_argument_group("ATS settings")
    ats.add_argument("--ats-layers", type=int, nargs="+", help="0-based ATS layers (default: the model config's, or "
                                                               "layers L//4..L-1 when it has none)")
    ats.add_argument("--ats-max-tokens", type=parse_max_tokens, nargs="+", help="K: 'all', an int >= 2 or a fraction in "
                     "(0, 1]; one value, or one per ATS layer (default: the model config's; 0.5 in speed mode)")
    ats.add_argument("--sweep", type=parse_max_tokens, nargs="*", default=(), help="extra K values, each on the ATS "
                     "layers, with matched top-K and random, for the accuracy-vs-GMACs plot")
    ats.add_argument("--sweep-from-layer", type=int, nargs="*", help="extra first ATS layers S (ATS in S..L-1 at the "
                     f"ATS K) for the plot (default: {' '.join(map(str, DEFAULT_SWEEP_FROM_LAYER))} for the embedded "
                     "model, none otherwise)")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--speed-mode", choices=sorted(GEOMETRIES), help="time a named geometry with random "
                        "weights instead (dense, ATS at K, ATS at K=all, no-drop); no accuracy")
    timing.add_argument("--batch-sizes", type=int, nargs="*", help="batch sizes to time, none to skip timing "
                        "(default: 1 256; 1 32 in speed mode)")
    timing.add_argument("--timing-images", type=int, help="images timed per batch size and pass "
                        "(default: 128; 16 in speed mode)")
    timing.add_argument("--repeats", type=int, default=5, help="timed passes per method (median reported)")
    timing.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    timing.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    timing.add_argument("--attn-implementation", default="sdpa", help="eager, sdpa, flash_attention_2, ...")
    timing.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="images per forward pass when measuring "
                        "accuracy, GMACs and tokens (results do not depend on it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random sampler and the dataset shuffle")
    parser.add_argument("--output-dir", type=Path, help="where benchmark.json and the plots go "
                        "(default: outputs/benchmark, or outputs/speed-GEOMETRY)")


def run(args: argparse.Namespace) -> int:
    """`ats-hf benchmark`: run, print the table, write JSON and plots."""
    import sys

    from .benchmark_report import format_table, write_report

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    if args.speed_mode:
        result = run_speed_benchmark(
            args.speed_mode,
            ats_layers=tuple(args.ats_layers) if args.ats_layers else None,
            ats_max_tokens=0.5 if args.ats_max_tokens is None else _one_or_tuple(args.ats_max_tokens),
            batch_sizes=tuple(args.batch_sizes) if args.batch_sizes is not None else (1, 32),
            timing_images=args.timing_images or 16,
            repeats=args.repeats,
            device=args.device,
            dtype=dtype,
            attn_implementation=args.attn_implementation,
            seed=args.seed,
        )
        output_dir = args.output_dir or Path("outputs") / f"speed-{args.speed_mode}"
    else:
        from transformers import AutoImageProcessor

        from .image_data import load_labelled_images

        model_path = args.model or str(DEFAULT_MODEL_DIR)
        model = AtsViTForImageClassification.from_pretrained(model_path, attn_implementation=args.attn_implementation)
        model = model.to(device=args.device, dtype=dtype).eval()
        processor = AutoImageProcessor.from_pretrained(model_path)
        pixel_values, labels, data_name = load_labelled_images(
            args.dataset, processor, model.config.id2label, args.split, args.num_images, args.image_column,
            args.label_column, args.seed,
        )
        ats = method_from_options(model.config, args.ats_layers, args.ats_max_tokens)
        from_layers = args.sweep_from_layer
        if from_layers is None:
            from_layers = DEFAULT_SWEEP_FROM_LAYER if args.model is None else ()
        result = run_benchmark(
            model,
            pixel_values.to(dtype),
            labels,
            ats=ats,
            sweep=sweep_methods(ats, model.config.num_hidden_layers, tuple(args.sweep), tuple(from_layers)),
            batch_sizes=tuple(args.batch_sizes) if args.batch_sizes is not None else (1, 256),
            timing_images=args.timing_images or 128,
            repeats=args.repeats,
            eval_batch_size=args.eval_batch_size,
            seed=args.seed,
            model_name=args.model or "embedded default model (synthetic digits ViT)",
            data_name=data_name,
        )
        output_dir = args.output_dir or Path("outputs") / "benchmark"
    result.command = " ".join(["ats-hf", "benchmark", *sys.argv[2:]]) if sys.argv[1:2] == ["benchmark"] else "ats-hf benchmark"
    print(format_table(result))
    written = write_report(result, output_dir)
    print("\nwrote " + ", ".join(str(path) for path in written))
    return 0


def method_from_options(config: AtsViTConfig, ats_layers: list[int] | None, ats_max_tokens: list | None) -> Method:
    """The ATS method named by command-line options; what they leave out comes from `Method.from_config`."""
    ats = Method.from_config(config)
    layers = tuple(ats_layers) if ats_layers else ats.ats_layers
    return Method("ats", layers, _one_or_tuple(ats_max_tokens) if ats_max_tokens else ats.ats_max_tokens)


def parse_max_tokens(text: str) -> int | float | None:
    """A K value on the command line: 'all' / 'none', an int, or a fraction."""
    if text.lower() in ("all", "none"):
        return None
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a K value: use 'all', an int >= 2 or a fraction in (0, 1].")


def _one_or_tuple(values: list | None):
    if values is None:
        return None
    return values[0] if len(values) == 1 else tuple(values)
