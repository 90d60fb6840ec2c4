"""The benchmark engine: dense vs ATS vs top-K vs random at equal mean tokens, in score, GMACs and measured speed.

Two modes:
- accuracy mode (`run_benchmark`): a trained model on images, scored by the run's objective (accuracy on
  labelled images, agreement or fidelity without labels). ATS runs first; top-K and random then keep,
  in every ATS layer, ATS's mean token count (rounded). Optional sweeps add points to the score-vs-GMACs plot.
- speed mode (`run_speed_benchmark`): a named geometry with random weights and random images, timing only.

Methods (`ats_hf.methods`) switch the model's ATS settings while they run (the model's own settings come back after
each use). Functions return new result objects and never change the results they are given.

Each ATS method runs in the adaptive or the static mode (its settings' capacity). Scores, GMACs and tokens are always
measured in eager PyTorch; the timing runs in the chosen runtime (`runtimes`: eager, compile, onnxruntime), which
computes the same thing (the exported graph is checked against PyTorch).
"""

import dataclasses
import functools
import math

import torch

from ats_hf_common.benchmark_defaults import (
    ACCURACY_MODE_TIMING,
    ATTN_IMPLEMENTATION,
    COMPILE_BACKEND,
    EVAL_BATCH_SIZE,
    GEOMETRIES,
    SEED,
    SPEED_MODE_MAX_TOKENS,
    SPEED_MODE_TIMING,
)
from ats_hf_common.grammar import format_max_tokens

from ..configuration_ats_core import AtsSettings, default_ats_layers, input_size, num_input_tokens
from ..evaluation import (
    ONE_PROCESS,
    Evaluation,
    ImageSource,
    LoopStats,
    Objective,
    Processes,
    default_objective,
    evaluate_methods,
    tensor_images,
)
from ..families import family_named, takes_videos
from ..flops import tome_gmacs
from ..methods import AtsMethod, Method, TomeMethod, dense_method
from ..progress import note
from ..reporting import describe_machine
from ..tome import supports_tome
from .profiling import profile_layers
from .results import BenchmarkResult, MethodResult, TimingResult
from .runtimes import check_runtime, prepare_pass
from .timing import interleaved_throughput, unreliable_timing_message

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_ats_method(config) -> AtsMethod:
    """"ats": the inverse-transform sampler on the config's settings; with no ATS layers there, the paper's recipe
    (layers L//4..L-1, K = all, adaptive)."""
    settings = config.ats_settings
    if not settings.layers:
        settings = AtsSettings(default_ats_layers(config.num_hidden_layers))
    return AtsMethod("ats", settings.replace(sampler="inverse_transform"))


def matched_baselines(ats: MethodResult) -> list[AtsMethod]:
    """top-K and random keeping, in every ATS layer, ATS's mean token count there (rounded, at least 2), in ATS's
    mode: with its capacity setting in the static mode, which the config cuts to their K (so they hold no padding
    rows, and run exactly the rows they keep)."""
    method = ats.method
    layers, capacity = method.settings.layers, method.settings.capacity
    counts = tuple(max(2, math.floor(ats.tokens_per_layer[i] + 0.5)) for i in layers)
    suffix = "" if method.name == "ats" else f" (as {method.name})"
    return [
        AtsMethod(f"top-k{suffix}", AtsSettings(layers, counts, "top_k", capacity)),
        AtsMethod(f"random{suffix}", AtsSettings(layers, counts, "random", capacity)),
    ]


def matched_tome(ats: MethodResult, config, num_tokens: int) -> TomeMethod:
    """ToMe with the r (the same in every block) whose GMACs come closest to ATS's mean real-token GMACs, at equal
    or higher GMACs when two are equally close; `num_tokens` enter the first block."""
    candidates = range(0, (num_tokens - 1) // 2 + 1)
    r = min(candidates, key=lambda r: (abs(tome_gmacs(config, r, num_tokens) - ats.gmacs_mean), r))
    return TomeMethod(f"tome r={r}", r)


def sweep_methods(
    ats: AtsMethod, num_layers: int, max_tokens: tuple = (), from_layers: tuple[int, ...] = ()
) -> tuple[AtsMethod, ...]:
    """ATS variants around `ats`, in its mode: each K in `max_tokens` on its layers; then ATS in layers
    S..num_layers-1 for each S in `from_layers`, at its K (at K = all when its K is a per-layer list) and capacity (a
    per-layer capacity does not carry over to other layers: those points run adaptive, and say so)."""
    settings = ats.settings
    by_k = [AtsMethod(f"ats K={format_max_tokens(k)}", AtsSettings(settings.layers, k, capacity=settings.capacity))
            for k in max_tokens]
    layer_k = None if isinstance(settings.max_tokens, tuple) else settings.max_tokens
    layer_capacity = None if isinstance(settings.capacity, tuple) else settings.capacity
    suffix = " (adaptive)" if layer_capacity is None and settings.capacity is not None else ""
    by_layers = [
        AtsMethod((f"ats layers {start}-{num_layers - 1}" if start < num_layers - 1 else f"ats layer {start}") + suffix,
                  AtsSettings(tuple(range(start, num_layers)), layer_k, capacity=layer_capacity))
        for start in from_layers
    ]
    return tuple(by_k + by_layers)


def evaluate_sources(
    model,
    methods: list[Method],
    source: ImageSource,
    objective: Objective | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    seed: int = SEED,
    num_workers: int = 0,
    processes: Processes = ONE_PROCESS,
) -> tuple[list[MethodResult], LoopStats]:
    """Score, per-image GMACs (real tokens; and executed, when fixed) and tokens per layer of `methods` over the
    images of `source`, streamed through the shared evaluation loop (`ats_hf.evaluation`), in eager PyTorch."""
    evaluations, stats = evaluate_methods(model, methods, source, objective, batch_size, num_workers=num_workers,
                                          seed=seed, processes=processes)
    input_tokens = num_input_tokens(model.config, input_size(source.head(1)))
    return [_method_result(model, e, input_tokens) for e in evaluations], stats


def _method_result(model, evaluation: Evaluation, input_tokens: int) -> MethodResult:
    tokens, gmacs = evaluation.num_tokens.double(), evaluation.gmacs
    return MethodResult(
        method=evaluation.method,
        score=evaluation.score,
        gmacs_mean=gmacs.mean().item(),
        gmacs_std=gmacs.std(unbiased=False).item(),
        tokens_per_layer=tuple(tokens.mean(0).tolist()),
        tokens_per_layer_std=tuple(tokens.std(0, unbiased=False).tolist()),
        gmacs=gmacs,
        executed_gmacs=evaluation.method.executed_gmacs(model.config, input_tokens),
    )


def evaluate_method(
    model,
    method: Method,
    pixel_values: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    seed: int = SEED,
) -> MethodResult:
    """`evaluate_sources` of one method on (N, C, H, W) processed images in memory (accuracy with `labels`)."""
    objective = None if labels is None else Objective("accuracy")
    return evaluate_sources(model, [method], tensor_images(pixel_values, labels), objective, batch_size, seed)[0][0]


def time_methods(
    model,
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
    model,
    source: ImageSource,
    objective: Objective | None = None,
    ats: AtsMethod | None = None,
    sweep: tuple[AtsMethod, ...] = (),
    batch_sizes: tuple[int, ...] = ACCURACY_MODE_TIMING.batch_sizes,
    timing_images: int = ACCURACY_MODE_TIMING.timing_images,
    repeats: int = ACCURACY_MODE_TIMING.repeats,
    eval_batch_size: int = EVAL_BATCH_SIZE,
    seed: int = SEED,
    model_name: str = "model",
    notes: tuple[str, ...] = (),
    command: str = "",
    *,
    runtime: str = "eager",
    compile_backend: str = COMPILE_BACKEND,
    compile_mode: str | None = None,
    profile: bool = False,
    num_workers: int = 0,
    processes: Processes = ONE_PROCESS,
) -> BenchmarkResult:
    """Compare dense, ATS, top-K / random at ATS's mean tokens per layer, and ToMe at ATS's GMACs, on a data source.

    Args:
        model: an ATS model of any family (any ATS settings; each method sets its own, and the model's come back).
        source: the images (`ats_hf.evaluation.open_images`), streamed in batches of `eval_batch_size`, decoded by
            `num_workers` worker processes; with several `processes`, each evaluates its share of the batches.
        objective: how methods are scored (default: `default_objective`: accuracy with labels, else agreement for a
            classifier, fidelity for a feature extractor).
        ats: the ATS setting to compare (at least one ATS layer), in the adaptive or the static mode (its
            capacity; top-K and random run in the same mode); None: `default_ats_method(model.config)`.
        sweep: more ATS methods (see `sweep_methods`), each with its matched top-K and random, for the plot only.
        batch_sizes: batch sizes to time (empty: no timing) on the first images, by the main process alone;
            timing_images, repeats: see `time_methods`.
        notes: lines for the reader of the report; command: the command line run.
        runtime, compile_backend, compile_mode: where the timing runs (see `time_methods` and `runtimes`).
        profile: also profile dense and ATS layer by layer on the first image, in eager PyTorch (`profiling`).
    """
    ats = ats or default_ats_method(model.config)
    if not ats.settings.layers:
        raise ValueError(f"the ATS method {ats.name!r} has no ATS layers: there is nothing to compare with dense.")
    if batch_sizes:
        check_runtime(runtime, ats, next(model.parameters()).device, next(model.parameters()).dtype)
    objective = objective or default_objective(model, source.labels is not None)
    model.eval()
    example = source.head(1)
    tokens = num_input_tokens(model.config, input_size(example))

    def evaluate(methods: list[Method], description: str) -> list[MethodResult]:
        if processes.is_main:
            note(description)
        return evaluate_sources(model, methods, source, objective, eval_batch_size, seed, num_workers, processes)

    # Two passes over the data: the ATS points, then what is matched to them (top-K, random, ToMe).
    first, stats = evaluate([dense_method(), ats, *sweep], f"pass 1 of 2: dense, ATS and {len(sweep)} sweep points")
    dense, ats_result, sweep_points = first[0], first[1], first[2:]
    with_tome = supports_tome(model) and not objective.needs_token_grid
    if not supports_tome(model):
        notes = [*notes, f"ToMe baseline left out: {type(model).__name__} has no ToMe path (see ats_hf.tome)."]
    elif not with_tome:
        notes = [*notes, f"ToMe baseline left out: it merges tokens, so {objective.name} has no token grid to compare."]
    matched = list(matched_baselines(ats_result)) + ([matched_tome(ats_result, model.config, tokens)] * with_tome)
    sweep_matched = []
    for point in sweep_points:
        extra = list(matched_baselines(point))
        tome = matched_tome(point, model.config, tokens)
        if with_tome and tome not in matched + [m for group in sweep_matched for m in group]:
            extra.append(dataclasses.replace(tome, name=f"{tome.name} (as {point.method.name})"))
        sweep_matched.append(extra)
    second, _ = evaluate(matched + [m for group in sweep_matched for m in group],
                         "pass 2 of 2: top-K, random and ToMe matched to them")
    methods = [dense, ats_result, *second[: len(matched)]]
    sweep_results, position = [], len(matched)
    for point, group in zip(sweep_points, sweep_matched, strict=True):
        sweep_results += [point, *second[position : position + len(group)]]
        position += len(group)
    if batch_sizes:
        timed = None
        if processes.is_main:
            images = source.head(max(max(batch_sizes), timing_images)).to(next(model.parameters()).dtype)
            timed = time_methods(model, methods, images, batch_sizes, timing_images, repeats, seed, runtime=runtime,
                                 compile_backend=compile_backend, compile_mode=compile_mode)
        methods = processes.broadcast(timed)
    return BenchmarkResult(
        model=model_name,
        data=source.description,
        num_images=len(source),
        dense_gmacs=dense.gmacs_mean,
        methods=methods,
        sweep=sweep_results,
        machine=describe_machine(next(model.parameters()), runtime),
        notes=[*notes, *_runtime_notes(methods, runtime if batch_sizes else "eager", compile_backend, compile_mode)],
        runtime=runtime if batch_sizes else "eager",
        command=command,
        profiles=[profile_layers(model, m, example) for m in (dense_method(), ats)] if profile else [],
        objective=objective.name,
        processes=processes.world_size,
        evaluation=stats.to_dict(),
    )


def _runtime_notes(methods: list[MethodResult], runtime: str, backend: str, mode: str | None) -> list[str]:
    """What the reader needs to know about the static mode and the runtime, and what the runtime reported."""
    lines = []
    if any(r.method.kind == "ats" and r.method.settings.capacity is not None for r in methods):
        lines.append(
            "static mode: every ATS layer runs its capacity of rows whatever an image keeps; 'executed' GMACs count "
            "those rows (flops.static_gmacs), the other GMACs the real tokens (the papers' convention); the GMACs "
            "ratio uses the executed ones."
        )
    if runtime == "compile":
        lines.append(
            f"compile: torch.compile(backend={backend!r}, mode={mode!r}, dynamic=False), fullgraph=True for "
            "static-shape methods (static mode, dense, ToMe), one compiled copy per method; compiling is done before "
            "timing, at every batch size, and reported separately."
        )
    elif runtime == "onnxruntime":
        lines.append(
            f"onnxruntime: each method exported to ONNX and run by InferenceSession (CPU, "
            f"{torch.get_num_threads()} intra-op threads, as torch); exporting is done before timing."
        )
    return lines + [line for r in methods for line in r.notes]


def speed_config(geometry: str | dict, num_labels: int = 1000):
    """The ATS config of a named geometry (see `GEOMETRIES`) or of a dict of config fields (`family` names the
    model family, default "vit")."""
    if isinstance(geometry, str) and geometry not in GEOMETRIES:
        raise ValueError(f"geometry={geometry!r} is unknown; choose one of {', '.join(GEOMETRIES)}, or pass config "
                         "fields.")
    fields = dict(GEOMETRIES[geometry] if isinstance(geometry, str) else geometry)
    family = family_named(fields.pop("family", "vit"))
    return family.config_class(**{"num_labels": num_labels, **fields})


def speed_model(geometry: str | dict, num_labels: int = 1000, seed: int = SEED):
    """A randomly initialised ATS image classifier of a named geometry or of a dict of config fields (see
    `speed_config`)."""
    config = speed_config(geometry, num_labels)
    family = (GEOMETRIES[geometry] if isinstance(geometry, str) else geometry).get("family", "vit")
    torch.manual_seed(seed)
    return family_named(family).classifier(config).eval()


def run_speed_benchmark(
    geometry: str | dict = "deit-s",
    settings: AtsSettings | None = None,
    batch_sizes: tuple[int, ...] = SPEED_MODE_TIMING.batch_sizes,
    timing_images: int = SPEED_MODE_TIMING.timing_images,
    repeats: int = SPEED_MODE_TIMING.repeats,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = ATTN_IMPLEMENTATION,
    seed: int = SEED,
    command: str = "",
    *,
    runtime: str = "eager",
    compile_backend: str = COMPILE_BACKEND,
    compile_mode: str | None = None,
    profile: bool = False,
) -> BenchmarkResult:
    """Wall-clock gains on a named geometry with random weights and random images.

    `settings` default to the paper's layers (L//4..L-1) at K = `SPEED_MODE_MAX_TOKENS`, adaptive. Adaptive mode:
    compares dense; ATS with those settings; ATS with K = all tokens (the paper's default: only duplicates and the
    lowest-scoring token go); and "no-drop", the ATS layers with top-K at K = all tokens, so that scoring, sampling
    and packing run but no token is dropped: its throughput against dense is the pure overhead. Static mode (a
    capacity set): dense; ATS at K with that capacity; and no-drop with room for every token (capacity 1.0), the
    static mode's pure overhead. A ViT-family geometry adds ToMe at ATS's GMACs (`matched_tome`), in every
    runtime. `profile`: also profile dense and ATS layer by layer at batch 1 (`profiling`).
    """
    if not batch_sizes:
        raise ValueError("speed mode times the methods: give at least one batch size.")
    model = speed_model(geometry, seed=seed).to(device=device, dtype=dtype)
    model.set_attn_implementation(attn_implementation)
    config = model.config
    if settings is None:
        settings = AtsSettings(default_ats_layers(config.num_hidden_layers), SPEED_MODE_MAX_TOKENS)
    settings = settings.replace(sampler="inverse_transform").check(config.num_hidden_layers,
                                                                   config.ats_num_special_tokens)
    ats = AtsMethod(f"ats K={format_max_tokens(settings.max_tokens)}", settings)
    layers = settings.layers
    if settings.capacity is None:
        methods = [dense_method(), ats, AtsMethod("ats K=all", AtsSettings(layers)),
                   AtsMethod("no-drop", AtsSettings(layers, sampler="top_k"))]
    else:
        methods = [dense_method(), ats, AtsMethod("no-drop", AtsSettings(layers, sampler="top_k", capacity=1.0))]
    for method in methods:
        check_runtime(runtime, method, torch.device(device), dtype)
    count = max(max(batch_sizes), timing_images)
    generator = torch.Generator().manual_seed(seed)
    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else size
    shape = (config.num_channels, height, width)
    if takes_videos(model):
        shape = (config.num_frames, *shape)
    pixel_values = torch.randn(count, *shape, generator=generator).to(dtype)
    results = [evaluate_method(model, method, pixel_values, batch_size=max(batch_sizes), seed=seed) for method in
               methods]
    if supports_tome(model):
        tome = matched_tome(results[1], config, num_input_tokens(config, (height, width)))
        results.append(evaluate_method(model, tome, pixel_values, batch_size=max(batch_sizes), seed=seed))
    results = time_methods(model, results, pixel_values, batch_sizes, timing_images, repeats, seed, runtime=runtime,
                           compile_backend=compile_backend, compile_mode=compile_mode)
    return BenchmarkResult(
        model=f"{geometry if isinstance(geometry, str) else 'custom geometry'} (random weights, {attn_implementation})",
        data=f"{count} random {'videos' if takes_videos(model) else 'images'}",
        num_images=count,
        dense_gmacs=results[0].gmacs_mean,
        methods=results,
        sweep=[],
        machine=describe_machine(next(model.parameters()), runtime),
        notes=_runtime_notes(results, runtime, compile_backend, compile_mode),
        runtime=runtime,
        command=command,
        profiles=[profile_layers(model, method, pixel_values[:1]) for method in methods[:2]] if profile else [],
    )


__all__ = [
    "DTYPES",
    "GEOMETRIES",
    "default_ats_method",
    "evaluate_method",
    "matched_baselines",
    "matched_tome",
    "run_benchmark",
    "run_speed_benchmark",
    "speed_config",
    "speed_model",
    "sweep_methods",
    "time_methods",
]
