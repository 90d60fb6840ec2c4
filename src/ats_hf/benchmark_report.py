"""Reporting a `BenchmarkResult`: the terminal table, the JSON file, and PNG plots (matplotlib, Agg backend)."""

import json
from pathlib import Path

from .benchmark import BenchmarkResult, MethodResult

FAMILY_STYLE = {  # family -> (colour, marker)
    "dense": ("black", "*"),
    "ats": ("tab:blue", "o"),
    "top-k": ("tab:orange", "s"),
    "random": ("tab:green", "^"),
}


def family(result: MethodResult) -> str:
    """dense, ats, top-k or random: which curve a method belongs to."""
    if not result.method.ats_layers:
        return "dense"
    return {"inverse_transform": "ats", "top_k": "top-k", "random": "random"}[result.method.ats_sampler]


def format_table(result: BenchmarkResult) -> str:
    """The benchmark as plain-text tables: per method, then tokens per layer."""
    batch_sizes = sorted({b for r in result.methods for b in r.timings})
    header = ["method", "top-1 %", "GMACs mean ± std", "tokens/layer"]
    for batch_size in batch_sizes:
        header += [f"img/s bs{batch_size}", f"speed-up bs{batch_size} (GMACs ratio)"]
    rows = []
    for r in result.methods:
        row = [
            r.method.name,
            "-" if r.accuracy is None else f"{r.accuracy:.2f}",
            f"{r.gmacs_mean:.4f} ± {r.gmacs_std:.4f}",
            f"{sum(r.tokens_per_layer) / len(r.tokens_per_layer):.1f}",
        ]
        for batch_size in batch_sizes:
            t = r.timings.get(batch_size)
            row += ["-", "-"] if t is None else [f"{t.images_per_second:.1f}", f"{t.speedup:.2f}x ({t.gmacs_ratio:.2f}x)"]
        rows.append(row)
    lines = [
        f"ats-hf benchmark: {result.model}",
        f"data: {result.data}",
        f"machine: {result.machine.get('gpu') or result.machine['cpu']}, {result.machine['torch_threads']} threads, "
        f"{result.machine['device']} {result.machine['dtype']}, torch {result.machine['torch']}",
        "",
        _grid(header, rows),
    ]
    baselines = [r for r in result.methods if r.method.name in ("top-k", "random")]
    if baselines:
        lines.append(
            f"top-k / random keep K = {list(baselines[0].method.ats_max_tokens)} tokens in layers "
            f"{list(baselines[0].method.ats_layers)} (ATS's mean, rounded)."
        )
    timed = [t for r in result.methods for t in r.timings.values()]
    if timed:
        lines.append(
            "speed-up = measured throughput / dense; GMACs ratio = dense GMACs / method GMACs on the same timed images "
            f"(the ideal speed-up). Largest repeat spread: {100 * max(t.spread for t in timed):.0f}%."
        )
    num_layers = len(result.methods[0].tokens_per_layer)
    lines += ["", "mean tokens per layer (CLS included)", _grid(
        ["method"] + [f"L{i}" for i in range(num_layers)],
        [[r.method.name] + [f"{n:.1f}" for n in r.tokens_per_layer] for r in result.methods],
    )]
    if result.sweep:
        lines += ["", "sweep (accuracy and GMACs only)", _grid(
            ["method", "top-1 %", "GMACs mean ± std", "tokens/layer"],
            [[r.method.name, "-" if r.accuracy is None else f"{r.accuracy:.2f}", f"{r.gmacs_mean:.4f} ± {r.gmacs_std:.4f}",
              f"{sum(r.tokens_per_layer) / len(r.tokens_per_layer):.1f}"] for r in result.sweep],
        )]
    return "\n".join(lines)


def write_report(result: BenchmarkResult, output_dir: str | Path) -> list[Path]:
    """Write benchmark.json and the PNG plots into `output_dir`; return the paths written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "benchmark.json"
    json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return [json_path] + plot_all(result, output_dir)


def plot_all(result: BenchmarkResult, output_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, draw in (
        ("accuracy_vs_gmacs.png", _plot_accuracy_vs_gmacs),
        ("tokens_per_layer.png", _plot_tokens_per_layer),
        ("gmacs_per_image.png", _plot_gmacs_histogram),
        ("throughput.png", _plot_throughput),
    ):
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
    figure, axes = plt.subplots(figsize=(6, 4.2))
    for name, (colour, marker) in FAMILY_STYLE.items():
        members = sorted((r for r in points if family(r) == name), key=lambda r: r.gmacs_mean)
        if members:
            axes.plot([r.gmacs_mean for r in members], [r.accuracy for r in members], marker=marker, color=colour,
                      label=name, markersize=12 if name == "dense" else 6)
    axes.set_xlabel("mean GMACs per image")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title("Accuracy vs compute (top-K / random at ATS's mean tokens)")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def _method_colour(result: BenchmarkResult, index: int) -> str:
    """Colour of the index-th compared method: its family's, or the colour cycle's when two share a family."""
    name = family(result.methods[index])
    clash = len({family(r) for r in result.methods}) < len(result.methods)
    return f"C{index}" if clash and name != "dense" else FAMILY_STYLE[name][0]


def _plot_tokens_per_layer(result: BenchmarkResult, plt):
    figure, axes = plt.subplots(figsize=(6, 4.2))
    for index, r in enumerate(result.methods):
        colour, marker = _method_colour(result, index), FAMILY_STYLE[family(r)][1]
        layers = range(len(r.tokens_per_layer))
        axes.plot(layers, r.tokens_per_layer, marker=marker, color=colour, label=r.method.name)
        if family(r) == "ats":
            low = [m - s for m, s in zip(r.tokens_per_layer, r.tokens_per_layer_std)]
            high = [m + s for m, s in zip(r.tokens_per_layer, r.tokens_per_layer_std)]
            axes.fill_between(layers, low, high, color=colour, alpha=0.15)
    axes.set_xlabel("layer")
    axes.set_ylabel("tokens out (CLS included), mean ± std")
    axes.set_title("Tokens per layer")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


def _plot_gmacs_histogram(result: BenchmarkResult, plt):
    """Per-image GMACs of the adaptive methods as histograms; fixed-count methods and dense as vertical lines."""
    import numpy as np

    figure, axes = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(0.0, 1.02 * result.dense_gmacs, 160)
    for index, r in enumerate(result.methods):
        colour = _method_colour(result, index)
        if family(r) == "dense" or r.gmacs_std <= 1e-9 * r.gmacs_mean:
            style = "--" if family(r) == "dense" else ":"
            axes.axvline(r.gmacs_mean, color=colour, linestyle=style, label=f"{r.method.name} (same for every image)")
        else:
            axes.hist(r.gmacs.numpy(), bins=bins, alpha=0.6, color=colour, label=r.method.name)
    axes.set_xlim(0, bins[-1])
    axes.set_xlabel("GMACs per image")
    axes.set_ylabel("images")
    axes.set_title("Per-image compute")
    axes.legend(fontsize=8)
    return figure


def _plot_throughput(result: BenchmarkResult, plt):
    batch_sizes = sorted({b for r in result.methods for b in r.timings})
    if not batch_sizes:
        return None
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    width = 0.8 / len(result.methods)
    for index, r in enumerate(result.methods):
        xs = [position + (index - (len(result.methods) - 1) / 2) * width for position in range(len(batch_sizes))]
        timings = [r.timings[b] for b in batch_sizes]
        colour = _method_colour(result, index)
        bars = axes.bar(xs, [t.speedup for t in timings], width, color=colour, alpha=0.75, label=r.method.name)
        axes.bar_label(bars, [f"{t.speedup:.2f}" for t in timings], fontsize=7)
        axes.scatter(xs, [t.gmacs_ratio for t in timings], color=colour, marker="_", s=400, linewidths=2.5)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(batch_sizes)), [f"batch {b}" for b in batch_sizes])
    axes.set_ylabel("speed-up over dense (bar); GMACs ratio (tick)")
    axes.set_title("Measured speed-up vs the GMACs ratio")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return figure


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    return "\n".join(lines)
