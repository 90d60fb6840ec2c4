"""The benchmark engine: dense vs ATS vs top-K vs random at equal mean tokens, in accuracy, GMACs and measured speed.

Two modes:
- accuracy mode (`run_benchmark`): a trained model on labelled images. ATS runs first; top-K and random then keep,
  in every ATS layer, ATS's mean token count (rounded). Optional sweeps add points to the accuracy-vs-GMACs plot.
- speed mode (`run_speed_benchmark`): a named geometry with random weights and random images, timing only.

Methods switch the model's ATS settings with `ats_settings_applied` (the model's own settings come back after each
use). Functions return new result objects and never change the results they are given.

Each method runs in the adaptive or the static mode (`Method.ats_capacity`). Accuracy, GMACs and tokens are always
measured in eager PyTorch; the timing runs in the chosen runtime (`runtimes`: eager, compile, onnxruntime), which
computes the same thing (the exported graph is checked against PyTorch).
"""

import contextlib
import dataclasses
import functools
import math
import os
import platform
from pathlib import Path

import torch

from ..configuration_ats_vit import AtsViTConfig, num_input_tokens
from ..flops import gmacs_per_image, static_gmacs
from ..modeling_ats_clip import AtsCLIPForImageClassification
from ..modeling_ats_deit import AtsDeiTForImageClassificationWithTeacher
from ..modeling_ats_dinov2 import AtsDinov2ForImageClassification
from ..modeling_ats_vit import AtsViTForImageClassification
from ..progress import Progress, note
from ..settings import ats_settings_applied, format_max_tokens
from ..tome import supports_tome, tome_forward, tome_gmacs
from .defaults import (
    ACCURACY_MODE_TIMING,
    ATTN_IMPLEMENTATION,
    COMPILE_BACKEND,
    EVAL_BATCH_SIZE,
    SEED,
    SPEED_MODE_MAX_TOKENS,
    SPEED_MODE_TIMING,
)
from .results import BenchmarkResult, Method, MethodResult, TimingResult
from .runtimes import check_runtime, prepare_pass
from .timing import interleaved_throughput, unreliable_timing_message

# The ATS image classifier of each family a speed-mode geometry may name (`family`, default "vit").
SPEED_FAMILIES = {
    "vit": AtsViTForImageClassification,
    "clip": AtsCLIPForImageClassification,
    "dinov2": AtsDinov2ForImageClassification,
    "deit": AtsDeiTForImageClassificationWithTeacher,
}
# Named geometries for speed mode: image size, patch size, width, depth, heads, MLP size (and the family, if not
# ViT, with its own fields).
GEOMETRIES = {
    "deit-tiny": dict(image_size=224, patch_size=16, hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                      intermediate_size=768),
    "deit-s": dict(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                   intermediate_size=1536),
    "deit-b": dict(image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072),
    # CLIP vision towers (ViT-B/16 and ViT-L/14 at 336 px: 197 and 577 tokens; quick_gelu, pre-norm before layer 0).
    "clip-b16": dict(family="clip", image_size=224, patch_size=16, hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=3072),
    "clip-l14-336": dict(family="clip", image_size=336, patch_size=14, hidden_size=1024, num_hidden_layers=24,
                         num_attention_heads=16, intermediate_size=4096),
    # DINOv2 with 4 registers (ViT-S/14 and ViT-B/14 at 224 px: 256 patches + CLS + 4 registers = 261 tokens).
    "dinov2-s14-reg": dict(family="dinov2", image_size=224, patch_size=14, hidden_size=384, num_hidden_layers=12,
                          num_attention_heads=6, mlp_ratio=4, num_register_tokens=4),
    "dinov2-b14-reg": dict(family="dinov2", image_size=224, patch_size=14, hidden_size=768, num_hidden_layers=12,
                          num_attention_heads=12, mlp_ratio=4, num_register_tokens=4),
    # Distilled DeiT-S (CLS and distillation tokens, two heads): 196 patches + 2 = 198 tokens.
    "deit-s-distilled": dict(family="deit", image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12,
                             num_attention_heads=6, intermediate_size=1536),
    # For tests and dry runs: 17 tokens, 4 layers.
    "tiny": dict(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=128),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def matched_baselines(ats: MethodResult) -> list[Method]:
    """top-K and random keeping, in every ATS layer, ATS's mean token count there (rounded, at least 2), in ATS's
    mode: with its capacity setting in the static mode, which the config cuts to their K (so they hold no padding
    rows, and run exactly the rows they keep)."""
    method = ats.method
    counts = tuple(max(2, math.floor(ats.tokens_per_layer[i] + 0.5)) for i in method.ats_layers)
    suffix = "" if method.name == "ats" else f" (as {method.name})"
    return [
        Method(f"top-k{suffix}", method.ats_layers, counts, "top_k", method.ats_capacity),
        Method(f"random{suffix}", method.ats_layers, counts, "random", method.ats_capacity),
    ]


def matched_tome(ats: MethodResult, config: AtsViTConfig, image_size: tuple[int, int]) -> Method:
    """ToMe with the r (the same in every block) whose GMACs come closest to ATS's mean real-token GMACs, at equal
    or higher GMACs when two are equally close."""
    tokens = num_input_tokens(config, image_size)
    candidates = range(0, (tokens - 1) // 2 + 1)
    r = min(candidates, key=lambda r: (abs(tome_gmacs(config, r, image_size) - ats.gmacs_mean), r))
    return Method(f"tome r={r}", tome_r=r)


def sweep_methods(
    ats: Method, num_layers: int, max_tokens: tuple = (), from_layers: tuple[int, ...] = ()
) -> tuple[Method, ...]:
    """ATS variants around `ats`, in its mode: each K in `max_tokens` on its layers; then ATS in layers
    S..num_layers-1 for each S in `from_layers`, at its K (at K = all when its K is a per-layer list) and capacity (a
    per-layer capacity does not carry over to other layers: those points run adaptive, and say so)."""
    capacity = ats.ats_capacity
    by_k = [Method.from_settings(f"ats K={format_max_tokens(k)}", ats.ats_layers, k, capacity=capacity)
            for k in max_tokens]
    layer_k = None if isinstance(ats.ats_max_tokens, tuple) else ats.ats_max_tokens
    layer_capacity = None if isinstance(capacity, tuple) else capacity
    suffix = " (adaptive)" if layer_capacity is None and capacity is not None else ""
    by_layers = [
        Method((f"ats layers {start}-{num_layers - 1}" if start < num_layers - 1 else f"ats layer {start}") + suffix,
               tuple(range(start, num_layers)), layer_k, ats_capacity=layer_capacity)
        for start in from_layers
    ]
    return tuple(by_k + by_layers)


@torch.inference_mode()
def evaluate_method(
    model: AtsViTForImageClassification,
    method: Method,
    pixel_values: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    seed: int = SEED,
) -> MethodResult:
    """Accuracy, per-image GMACs (real tokens; and executed, when fixed) and tokens per layer of one method over
    `pixel_values` (N, C, H, W), in eager PyTorch."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    input_tokens = num_input_tokens(model.config, tuple(pixel_values.shape[-2:]))
    correct, gmacs, tokens = 0, [], []
    with ats_settings_applied(model, **method.settings), Progress(len(pixel_values), f"eval {method.name}") as progress:
        for start in range(0, len(pixel_values), batch_size):
            logits, num_tokens = _classify(model, method, pixel_values[start : start + batch_size].to(device))
            if labels is not None:
                correct += (logits.argmax(-1).cpu() == labels[start : start + batch_size]).sum().item()
            if method.tome_r is None:
                gmacs.append(gmacs_per_image(model.config, num_tokens, num_input_tokens=input_tokens))
            else:
                image_size = tuple(pixel_values.shape[-2:])
                gmacs.append(torch.full((len(num_tokens),), tome_gmacs(model.config, method.tome_r, image_size)))
            tokens.append(num_tokens.double())
            progress.update(len(num_tokens))
        executed = executed_gmacs(model.config, input_tokens) if method.tome_r is None else gmacs[0][0].item()
    gmacs, tokens = torch.cat(gmacs), torch.cat(tokens)
    return MethodResult(
        method=method,
        accuracy=None if labels is None else 100.0 * correct / len(pixel_values),
        gmacs_mean=gmacs.mean().item(),
        gmacs_std=gmacs.std(unbiased=False).item(),
        tokens_per_layer=tuple(tokens.mean(0).tolist()),
        tokens_per_layer_std=tuple(tokens.std(0, unbiased=False).tolist()),
        gmacs=gmacs,
        executed_gmacs=gmacs.mean().item() if executed is None and not method.ats_layers else executed,
    )


@torch.inference_mode()
def _classify(model: AtsViTForImageClassification, method: Method, batch: torch.Tensor):
    """(logits, (B, layers) tokens out of each layer on the CPU) of one batch under `method` (settings applied)."""
    if method.tome_r is None:
        output = model(batch)
        return output.logits, output.num_tokens.cpu()
    logits, counts = tome_forward(model, batch, method.tome_r)
    return logits, torch.tensor(counts).expand(len(batch), -1)


def executed_gmacs(config: AtsViTConfig, num_input_tokens: int) -> float | None:
    """GMACs per image that the static mode executes (its capacity rows, padding included), None in the adaptive
    mode or without ATS layers."""
    if not config.ats_layers or config.ats_capacity is None:
        return None
    return static_gmacs(config, num_input_tokens=num_input_tokens)


def time_methods(
    model: AtsViTForImageClassification,
    results: list[MethodResult],
    pixel_values: torch.Tensor,
    batch_sizes: tuple[int, ...],
    timing_images: int,
    repeats: int,
    seed: int = SEED,
    *,
    runtime: str = "eager",
    compile_backend: str = COMPILE_BACKEND,
    compile_mode: str | None = None,
) -> list[MethodResult]:
    """`results` with their `timings` at each batch size (new objects; the given ones are left as they are).

    Each batch size times the first max(b, timing_images rounded down to a multiple of b) images, capped at N, for
    every method, interleaved, in `runtime` (see `runtimes`; compiling or exporting, and one untimed pass at every
    batch size, happen first, and their time goes to `preparation_seconds`, never into a timed pass). The first
    result is the reference (dense): speed-up = throughput / its throughput; GMACs ratio = its GMACs / this
    method's over the same timed images, taking each method's executed GMACs when it has them (static mode, dense)
    and its mean real-token GMACs otherwise. A batch size whose repeats vary too much gets a warning on stderr at
    once.
    """
    if any(b < 1 for b in batch_sizes) or timing_images < 1 or repeats < 1:
        raise ValueError(
            f"batch_sizes={batch_sizes}, timing_images={timing_images} and repeats={repeats} must be >= 1."
        )
    parameter = next(model.parameters())
    device = parameter.device
    for result in results:
        check_runtime(runtime, result.method, device, parameter.dtype)
    reference = results[0]
    counts = {b: min(len(pixel_values), max(b, timing_images // b * b)) for b in batch_sizes}
    all_batches = {
        b: [pixel_values[i : i + b].to(device) for i in range(0, count, b)] for b, count in counts.items()
    }
    prepared = {}
    for result in results:
        if runtime != "eager":
            note(f"{runtime}: preparing {result.method.name}")
        prepared[result.method.name] = prepare_pass(
            runtime, model, result.method, [batch for batches in all_batches.values() for batch in batches],
            compile_backend=compile_backend, compile_mode=compile_mode,
        )
    timings: dict[str, dict[int, TimingResult]] = {r.method.name: {} for r in results}
    for batch_size in batch_sizes:
        count, batches = counts[batch_size], all_batches[batch_size]
        torch.manual_seed(seed)
        measured = interleaved_throughput(
            {name: functools.partial(ready.run, batches) for name, ready in prepared.items()}, device,
            repeats=repeats, description=f"timing batch {batch_size}",
        )
        warning = unreliable_timing_message({f"{name} at batch {batch_size}": m.spread for name, m in measured.items()})
        if warning:
            note(warning)
        reference_gmacs = _timed_gmacs(reference, count)
        for result in results:
            throughput = measured[result.method.name]
            timings[result.method.name][batch_size] = TimingResult(
                batch_size=batch_size,
                num_images=count,
                images_per_second=throughput.images_per_second,
                samples=throughput.samples,
                reference_images_per_second=measured[reference.method.name].images_per_second,
                gmacs_ratio=reference_gmacs / _timed_gmacs(result, count),
            )
    return [
        dataclasses.replace(
            r,
            timings={**r.timings, **timings[r.method.name]},
            preparation_seconds=prepared[r.method.name].preparation_seconds,
            notes=(*r.notes, *prepared[r.method.name].notes),
        )
        for r in results
    ]


def _timed_gmacs(result: MethodResult, count: int) -> float:
    """GMACs per image of `result` over the first `count` images: executed when fixed, else real-token mean."""
    if result.executed_gmacs is not None:
        return result.executed_gmacs
    return result.gmacs[:count].mean().item()


def run_benchmark(
    model: AtsViTForImageClassification,
    pixel_values: torch.Tensor,
    labels: torch.Tensor | None = None,
    ats: Method | None = None,
    sweep: tuple[Method, ...] = (),
    batch_sizes: tuple[int, ...] = ACCURACY_MODE_TIMING.batch_sizes,
    timing_images: int = ACCURACY_MODE_TIMING.timing_images,
    repeats: int = ACCURACY_MODE_TIMING.repeats,
    eval_batch_size: int = EVAL_BATCH_SIZE,
    seed: int = SEED,
    model_name: str = "model",
    data_name: str = "data",
    notes: tuple[str, ...] = (),
    *,
    runtime: str = "eager",
    compile_backend: str = COMPILE_BACKEND,
    compile_mode: str | None = None,
) -> BenchmarkResult:
    """Compare dense, ATS, and top-K / random at ATS's mean tokens per layer on labelled images.

    Args:
        model: an ATS-ViT classifier (any ATS settings; each method sets its own, and the model's come back).
        pixel_values: (N, C, H, W) processed images; labels: (N,) class indices, or None to skip accuracy.
        ats: the ATS setting to compare (at least one ATS layer), in the adaptive or the static mode (its
            `ats_capacity`; top-K and random run in the same mode); None: `Method.from_config(model.config)`.
        sweep: more ATS methods (see `sweep_methods`), each with its matched top-K and random, for the plot only.
        batch_sizes: batch sizes to time (empty: no timing); timing_images, repeats: see `time_methods`.
        notes: lines for the reader of the report (e.g. why there is no accuracy).
        runtime, compile_backend, compile_mode: where the timing runs (see `time_methods` and `runtimes`).
    """
    ats = ats or Method.from_config(model.config)
    if not ats.ats_layers:
        raise ValueError(f"the ATS method {ats.name!r} has no ATS layers: there is nothing to compare with dense.")
    if batch_sizes:
        check_runtime(runtime, ats, next(model.parameters()).device, next(model.parameters()).dtype)
    model.eval()

    def evaluate(method: Method) -> MethodResult:
        return evaluate_method(model, method, pixel_values, labels, eval_batch_size, seed)

    dense, ats_result = evaluate(Method("dense")), evaluate(ats)
    methods = [dense, ats_result] + [evaluate(baseline) for baseline in matched_baselines(ats_result)]
    image_size = tuple(pixel_values.shape[-2:])
    with_tome = supports_tome(model)
    if not with_tome:
        notes = [*notes, f"ToMe baseline left out: it runs on ViT classifiers only, not {type(model).__name__}."]
    if with_tome and (runtime == "eager" or not batch_sizes):  # ToMe runs in eager PyTorch only
        methods.append(evaluate(matched_tome(ats_result, model.config, image_size)))
    sweep_results = []
    for method in sweep:
        point = evaluate(method)
        sweep_results += [point] + [evaluate(baseline) for baseline in matched_baselines(point)]
        tome = matched_tome(point, model.config, image_size)
        if with_tome and tome not in [r.method for r in sweep_results]:
            sweep_results.append(evaluate(dataclasses.replace(tome, name=f"{tome.name} (as {method.name})")))
    if batch_sizes:
        methods = time_methods(model, methods, pixel_values, batch_sizes, timing_images, repeats, seed,
                               runtime=runtime, compile_backend=compile_backend, compile_mode=compile_mode)
    return BenchmarkResult(
        model=model_name,
        data=data_name,
        num_images=len(pixel_values),
        dense_gmacs=dense.gmacs_mean,
        methods=methods,
        sweep=sweep_results,
        machine=describe_machine(next(model.parameters()), runtime),
        notes=[*notes, *_runtime_notes(methods, runtime if batch_sizes else "eager", compile_backend, compile_mode)],
        runtime=runtime if batch_sizes else "eager",
    )


def _runtime_notes(methods: list[MethodResult], runtime: str, backend: str, mode: str | None) -> list[str]:
    """What the reader needs to know about the static mode and the runtime, and what the runtime reported."""
    lines = []
    if any(r.method.ats_capacity is not None for r in methods):
        lines.append(
            "static mode: every ATS layer runs its capacity of rows whatever an image keeps; 'executed' GMACs count "
            "those rows (flops.static_gmacs), the other GMACs the real tokens (the papers' convention); the GMACs "
            "ratio uses the executed ones."
        )
    if runtime == "compile":
        lines.append(
            f"compile: torch.compile(backend={backend!r}, mode={mode!r}, dynamic=False), fullgraph=True for "
            "static-shape methods (static mode, dense), one compiled copy per method; compiling is done before "
            "timing, at every batch size, and reported separately."
        )
    elif runtime == "onnxruntime":
        lines.append(
            f"onnxruntime: each method exported to ONNX and run by InferenceSession (CPU, "
            f"{torch.get_num_threads()} intra-op threads, as torch); exporting is done before timing."
        )
    return lines + [line for r in methods for line in r.notes]


def speed_config(geometry: str | dict, num_labels: int = 1000):
    """The ATS config of a named geometry (see `GEOMETRIES`) or of a dict of config fields (`family` picks the
    model family, default "vit")."""
    if isinstance(geometry, str) and geometry not in GEOMETRIES:
        raise ValueError(f"geometry={geometry!r} is unknown; choose one of {', '.join(GEOMETRIES)}, or pass config "
                         "fields.")
    fields = dict(GEOMETRIES[geometry] if isinstance(geometry, str) else geometry)
    model_class = SPEED_FAMILIES[fields.pop("family", "vit")]
    return model_class.config_class(**{"num_labels": num_labels, **fields})


def speed_model(geometry: str | dict, num_labels: int = 1000, seed: int = SEED) -> AtsViTForImageClassification:
    """A randomly initialised ATS image classifier of a named geometry or of a dict of config fields (see
    `speed_config`)."""
    config = speed_config(geometry, num_labels)
    family = (GEOMETRIES[geometry] if isinstance(geometry, str) else geometry).get("family", "vit")
    torch.manual_seed(seed)
    return SPEED_FAMILIES[family](config).eval()


def run_speed_benchmark(
    geometry: str | dict = "deit-s",
    ats_layers: tuple[int, ...] | None = None,
    ats_max_tokens: int | float | tuple = SPEED_MODE_MAX_TOKENS,
    batch_sizes: tuple[int, ...] = SPEED_MODE_TIMING.batch_sizes,
    timing_images: int = SPEED_MODE_TIMING.timing_images,
    repeats: int = SPEED_MODE_TIMING.repeats,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = ATTN_IMPLEMENTATION,
    seed: int = SEED,
    *,
    ats_capacity: int | float | tuple | None = None,
    runtime: str = "eager",
    compile_backend: str = COMPILE_BACKEND,
    compile_mode: str | None = None,
) -> BenchmarkResult:
    """Wall-clock gains on a named geometry with random weights and random images.

    Adaptive mode (`ats_capacity` None): compares dense; ATS with K = `ats_max_tokens`; ATS with K = all tokens
    (the paper's default: only duplicates and the lowest-scoring token go); and "no-drop", the ATS layers with
    top-K at K = all tokens, so that scoring, sampling and packing run but no token is dropped: its throughput
    against dense is the pure overhead. Static mode (`ats_capacity` set): dense; ATS at K with that capacity; and
    no-drop with room for every token (capacity 1.0), the static mode's pure overhead.
    """
    if not batch_sizes:
        raise ValueError("speed mode times the methods: give at least one batch size.")
    model = speed_model(geometry, seed=seed).to(device=device, dtype=dtype)
    model.set_attn_implementation(attn_implementation)
    layers = tuple(ats_layers) if ats_layers is not None else Method.from_config(model.config).ats_layers
    ats = Method.from_settings(f"ats K={format_max_tokens(ats_max_tokens)}", layers, ats_max_tokens,
                               capacity=ats_capacity)
    if ats_capacity is None:
        methods = [Method("dense"), ats, Method("ats K=all", layers, None), Method("no-drop", layers, None, "top_k")]
    else:
        methods = [Method("dense"), ats, Method("no-drop", layers, None, "top_k", 1.0)]
    for method in methods:
        check_runtime(runtime, method, torch.device(device), dtype)
    config = model.config
    count = max(max(batch_sizes), timing_images)
    generator = torch.Generator().manual_seed(seed)
    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else size
    pixel_values = torch.randn(count, config.num_channels, height, width, generator=generator).to(dtype)
    results = [evaluate_method(model, method, pixel_values, batch_size=max(batch_sizes), seed=seed) for method in
               methods]
    results = time_methods(model, results, pixel_values, batch_sizes, timing_images, repeats, seed, runtime=runtime,
                           compile_backend=compile_backend, compile_mode=compile_mode)
    return BenchmarkResult(
        model=f"{geometry if isinstance(geometry, str) else 'custom geometry'} (random weights, {attn_implementation})",
        data=f"{count} random images",
        num_images=count,
        dense_gmacs=results[0].gmacs_mean,
        methods=results,
        sweep=[],
        machine=describe_machine(next(model.parameters()), runtime),
        notes=_runtime_notes(results, runtime, compile_backend, compile_mode),
        runtime=runtime,
    )


def describe_machine(parameter: torch.Tensor, runtime: str = "eager") -> dict:
    """Where the numbers were measured: CPU model, cores and threads, load, device, dtype, library versions (and
    onnxruntime's when it is the runtime)."""
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
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if parameter.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(parameter.device)
    if runtime == "onnxruntime":
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    return info


__all__ = [
    "DTYPES",
    "GEOMETRIES",
    "SPEED_FAMILIES",
    "describe_machine",
    "evaluate_method",
    "matched_baselines",
    "run_benchmark",
    "run_speed_benchmark",
    "speed_config",
    "speed_model",
    "sweep_methods",
    "time_methods",
]
