"""Reporting a `BenchmarkResult`: the terminal table (with a plain warning when the timings cannot be trusted), the
JSON file, and PNG plots (matplotlib, Agg backend)."""

from pathlib import Path

from ats_hf_common.benchmark_defaults import UNRELIABLE_SPREAD
from ats_hf_common.grammar import format_settings

from ..reporting import format_grid
from .profiling import format_profiles
from .results import BenchmarkResult, MethodResult
from .timing import unreliable_timing_message

FAMILY_STYLE = {  # family -> (colour, marker, line style)
    "dense": ("black", "*", "-"),
    "ats": ("tab:blue", "o", "-"),
    "top-k": ("tab:orange", "s", "--"),
    "random": ("tab:green", "^", ":"),
    "tome": ("tab:red", "D", "-."),
}
OBJECTIVE_TITLES = {"accuracy": "top-1 %", "agreement": "agree. w/ dense %", "fidelity": "cos. to dense x100"}
PLOTS = ("accuracy_vs_gmacs.png", "tokens_per_layer.png", "gmacs_per_image.png", "throughput.png")


def format_table(result: BenchmarkResult) -> str:
    """The benchmark as plain-text tables: per method, then tokens per layer, then notes and warnings."""
    batch_sizes = result.batch_sizes
    static = any(r.method.kind == "ats" and r.method.settings.capacity is not None for r in result.methods)
    prepared = any(r.preparation_seconds is not None for r in result.methods)
    preparation = "export s" if result.runtime == "onnxruntime" else "compile s"
    header = ["method", OBJECTIVE_TITLES.get(result.objective, result.objective), "GMACs mean ± std"]
    header += ["GMACs executed"] * static + ["tokens/layer"]
    header += [preparation] * prepared
    for batch_size in batch_sizes:
        header += [f"img/s bs{batch_size}", f"speed-up bs{batch_size} (GMACs ratio)"]
    rows = []
    for r in result.methods:
        row = [r.method.name, _accuracy(r), f"{r.gmacs_mean:.4f} ± {r.gmacs_std:.4f}"]
        row += [_executed(r)] * static + [_mean_tokens(r)]
        row += [_seconds(r.preparation_seconds)] * prepared
        for batch_size in batch_sizes:
            t = r.timings.get(batch_size)
            if t is None:
                row += ["-", "-"]
            else:
                flag = " !" if t.spread > UNRELIABLE_SPREAD else ""
                row += [f"{t.images_per_second:.1f}{flag}", f"{t.speedup:.2f}x ({t.gmacs_ratio:.2f}x)"]
        rows.append(row)
    machine = result.machine
    lines = [
        f"ats-hf benchmark: {result.model}",
        f"data: {result.data}; objective: {result.objective}"
        + (f"; evaluated by {result.processes} processes (timed by the main one)" if result.processes > 1 else ""),
        f"machine: {machine.get('gpu') or machine['cpu']}, {machine['torch_threads']} threads, "
        f"{machine['device']} {machine['dtype']}, torch {machine['torch']}; timed in {_runtime(result)}",
        "",
        format_grid(header, rows),
    ]
    ats = next((r.method for r in result.methods if r.method.family == "ats"), None)
    if ats is not None:
        mode = "adaptive" if ats.settings.capacity is None else "static"
        lines.append(f"{ats.name}: {format_settings(ats.settings)}, {mode}.")
    baselines = [r for r in result.methods if r.method.name in ("top-k", "random")]
    if baselines:
        lines.append(
            f"top-k / random keep K = {list(baselines[0].method.settings.max_tokens)} tokens in layers "
            f"{list(baselines[0].method.settings.layers)} (ATS's mean, rounded)"
            + (", static with ATS's capacity setting cut to their K." if static else ".")
        )
    timed = [t for r in result.methods for t in r.timings.values()]
    if timed:
        lines.append(
            "speed-up = measured throughput / dense; GMACs ratio = dense GMACs / method GMACs on the same timed images "
            f"(the ideal speed-up{'; executed GMACs where fixed' if static else ''}); ! = repeats differ by more "
            f"than {100 * UNRELIABLE_SPREAD:.0f}% "
            f"(largest spread {100 * max(t.spread for t in timed):.0f}%)."
        )
    lines += ["", "mean tokens per layer (CLS included)", format_grid(
        ["method"] + [f"L{i}" for i in range(len(result.methods[0].tokens_per_layer))],
        [[r.method.name] + [f"{n:.1f}" for n in r.tokens_per_layer] for r in result.methods],
    )]
    if result.sweep:
        lines += ["", "sweep (accuracy and GMACs only)", format_grid(
            ["method", "top-1 %", "GMACs mean ± std", "tokens/layer"],
            [[r.method.name, _accuracy(r), f"{r.gmacs_mean:.4f} ± {r.gmacs_std:.4f}", _mean_tokens(r)]
             for r in result.sweep],
        )]
    if result.profiles:
        ats = next(r.method for r in result.methods if r.method.name == result.profiles[1].method)
        lines += ["", "where the time goes, layer by layer, at batch 1 (torch.profiler, eager)",
                  format_profiles(result.profiles, ats.settings.layers)]
    lines += [""] + [f"note: {text}" for text in result.notes] if result.notes else []
    warning = timing_warning(result)
    if warning:
        lines += ["", warning]
    return "\n".join(lines)


def timing_warning(result: BenchmarkResult) -> str | None:
    """A plain warning, with what to do, when any timing's repeats differ too much to trust; None otherwise."""
    spreads = {f"{r.method.name} at batch {t.batch_size}": t.spread for r in result.methods for t in r.timings.values()}
    return unreliable_timing_message(spreads)


def write_report(result: BenchmarkResult, output_dir: str | Path) -> list[Path]:
    """Write benchmark.json and the PNG plots into `output_dir`; return the paths written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return [result.save_json(output_dir / "benchmark.json"), *plot_all(result, output_dir)]


def plot_all(result: BenchmarkResult, output_dir: Path) -> list[Path]:
    """Draw every plot that has data into `output_dir`; return the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    drawers = (_plot_accuracy_vs_gmacs, _plot_tokens_per_layer, _plot_gmacs_histogram, _plot_throughput)
    for name, draw in zip(PLOTS, drawers, strict=True):
        figure = draw(result, plt)
        if figure is not None:
            figure.savefig(output_dir / name, dpi=120, bbox_inches="tight")
            plt.close(figure)
            written.append(output_dir / name)
    return written


def _plot_accuracy_vs_gmacs(result: BenchmarkResult, plt):
    points = [r for r in result.methods + result.sweep if r.accuracy is not None]
    if not points:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for name, (colour, marker, linestyle) in FAMILY_STYLE.items():
        members = sorted((r for r in points if r.method.family == name), key=lambda r: r.gmacs_mean)
        if members:
            axes.plot([r.gmacs_mean for r in members], [r.accuracy for r in members], marker=marker, color=colour,
                      linestyle=linestyle, label=name, markersize=13 if name == "dense" else 6,
                      markerfacecolor="none" if name == "top-k" else colour, zorder=3 if name == "ats" else 2)
    axes.set_xlabel("mean GMACs per image")
    axes.set_ylabel({"accuracy": "top-1 accuracy (%)", "agreement": "top-1 agreement with dense (%)",
                     "fidelity": "cosine similarity to dense x 100"}.get(result.objective, result.objective))
    axes.set_title("Quality vs compute (top-K / random at ATS's mean tokens)")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def _style(result: BenchmarkResult, index: int) -> tuple[str, str, str]:
    """(colour, marker, line style) of the index-th compared method: its family's, with the colour cycle's colour
    when two methods share a family (speed mode)."""
    r = result.methods[index]
    colour, marker, linestyle = FAMILY_STYLE[r.method.family]
    clash = len({m.method.family for m in result.methods}) < len(result.methods)
    if clash and r.method.family != "dense":
        colour = f"C{index}"
        linestyle = ("-", "--", "-.", ":")[index % 4]
    return colour, marker, linestyle


def _plot_tokens_per_layer(result: BenchmarkResult, plt):
    """Mean tokens out of each layer. Methods are offset a little along x, so that lines that coincide by
    construction (top-K and random keep the same counts) stay visible side by side."""
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    count = len(result.methods)
    for index, r in enumerate(result.methods):
        colour, marker, linestyle = _style(result, index)
        offset = 0.06 * (index - (count - 1) / 2)
        layers = [layer + offset for layer in range(len(r.tokens_per_layer))]
        axes.plot(layers, r.tokens_per_layer, marker=marker, color=colour, linestyle=linestyle, label=r.method.name,
                  markerfacecolor="none" if index % 2 else colour)
        if r.method.family == "ats":
            low = [m - s for m, s in zip(r.tokens_per_layer, r.tokens_per_layer_std, strict=True)]
            high = [m + s for m, s in zip(r.tokens_per_layer, r.tokens_per_layer_std, strict=True)]
            axes.fill_between(layers, low, high, color=colour, alpha=0.15)
    axes.set_xticks(range(len(result.methods[0].tokens_per_layer)))
    axes.set_xlabel("layer (methods slightly offset so that equal values stay visible)")
    axes.set_ylabel("tokens out (CLS included), mean ± std")
    axes.set_title("Tokens per layer")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def _plot_gmacs_histogram(result: BenchmarkResult, plt):
    """Per-image GMACs of the adaptive methods as histograms, methods with a fixed cost as vertical lines; the axis
    covers the data (dense is named in the legend when it lies far outside)."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(6.4, 3.8))
    varying = [r.method.family != "dense" and r.gmacs is not None and r.gmacs_std > 1e-9 * r.gmacs_mean
               for r in result.methods]
    values = [r.gmacs.numpy() for r, varies in zip(result.methods, varying, strict=True) if varies]
    fixed = [r for r, varies in zip(result.methods, varying, strict=True) if not varies]
    shown = [v for array in values for v in (array.min(), array.max())]
    shown += [r.gmacs_mean for r in fixed if r.method.family != "dense"]
    low, high = (min(shown), max(shown)) if shown else (0.0, result.dense_gmacs)
    pad = max(0.08 * (high - low), 0.01 * high)
    low, high = low - pad, high + pad
    if low <= result.dense_gmacs <= high + 0.25 * (high - low):  # dense is near: keep it in view
        high = max(high, result.dense_gmacs + pad)
    bins = np.linspace(low, high, 60)
    line_width = 4.0  # methods of equal cost draw on top of each other: each line thinner than the one before
    for index, r in enumerate(result.methods):
        colour, _, linestyle = _style(result, index)
        if varying[index]:
            axes.hist(r.gmacs.numpy(), bins=bins, alpha=0.6, color=colour, label=r.method.name)
        elif low <= r.gmacs_mean <= high:
            axes.axvline(r.gmacs_mean, color=colour, linestyle=linestyle, linewidth=line_width,
                         label=f"{r.method.name}: {r.gmacs_mean:.4g} (every image)")
            line_width = max(1.0, line_width - 1.5)
        else:
            axes.plot([], [], color=colour, linestyle=linestyle,
                      label=f"{r.method.name}: {r.gmacs_mean:.4g} (every image; off the axis)")
    axes.set_xlim(low, high)
    axes.xaxis.set_major_locator(MaxNLocator(6))
    dense = result.dense_gmacs
    top = axes.secondary_xaxis("top", functions=(lambda x: 100 * x / dense, lambda p: p * dense / 100))
    top.set_xlabel("% of dense GMACs")
    axes.set_xlabel("GMACs per image")
    axes.set_ylabel("images")
    axes.set_title("Per-image compute", pad=4)
    axes.legend(fontsize=8)
    return figure


def _plot_throughput(result: BenchmarkResult, plt):
    batch_sizes = result.batch_sizes
    if not batch_sizes:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.4))
    width = 0.8 / len(result.methods)
    for index, r in enumerate(result.methods):
        xs = [position + (index - (len(result.methods) - 1) / 2) * width for position in range(len(batch_sizes))]
        timings = [r.timings[b] for b in batch_sizes]
        colour = _style(result, index)[0]
        speedups = [t.speedup for t in timings]
        errors = [[t.speedup - t.speedup_range[0] for t in timings], [t.speedup_range[1] - t.speedup for t in timings]]
        bars = axes.bar(xs, speedups, width, color=colour, alpha=0.75, label=r.method.name, yerr=errors,
                        capsize=3, error_kw={"elinewidth": 1, "ecolor": "0.25"},
                        hatch=["//" if t.spread > UNRELIABLE_SPREAD else "" for t in timings])
        axes.bar_label(bars, [f"{s:.2f}" for s in speedups], fontsize=7, label_type="center",
                       bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.85, "linewidth": 0})
        axes.scatter(xs, [t.gmacs_ratio for t in timings], color=colour, edgecolor="black", marker="D", s=30,
                     zorder=3)
    axes.scatter([], [], color="white", edgecolor="black", marker="D", label="GMACs ratio (ideal)")
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(batch_sizes)), [f"batch {b}" for b in batch_sizes])
    axes.set_ylabel("speed-up over dense")
    title = "Measured speed-up (median; whiskers: slowest to fastest repeat)"
    if timing_warning(result):
        title += f"\nhatched: repeats differ by > {100 * UNRELIABLE_SPREAD:.0f}%, timing unreliable"
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


def _runtime(result: BenchmarkResult) -> str:
    if result.runtime == "onnxruntime":
        return f"onnxruntime {result.machine.get('onnxruntime', '')}".rstrip()
    return {"eager": "eager PyTorch", "compile": "torch.compile"}.get(result.runtime, result.runtime)


def _executed(r: MethodResult) -> str:
    return "varies" if r.executed_gmacs is None else f"{r.executed_gmacs:.4f}"


def _seconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


def _accuracy(r: MethodResult) -> str:
    return "-" if r.accuracy is None else f"{r.accuracy:.2f}"


def _mean_tokens(r: MethodResult) -> str:
    return f"{sum(r.tokens_per_layer) / len(r.tokens_per_layer):.1f}"


__all__ = ["format_table", "plot_all", "timing_warning", "write_report"]
