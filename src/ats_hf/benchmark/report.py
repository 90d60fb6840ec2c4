"""Reporting a `BenchmarkResult`: the terminal table (with a plain warning when the timings cannot be trusted), the
JSON file, and PNG plots (matplotlib, Agg backend)."""

import itertools
from pathlib import Path

from ats_hf_common.benchmark_defaults import UNRELIABLE_SPREAD
from ats_hf_common.grammar import format_layers, format_max_tokens, format_settings

from ..evaluation.objectives import Objective
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
PLOTS = ("accuracy_vs_gmacs.png", "tokens_per_layer.png", "gmacs_per_image.png", "throughput.png")


def format_table(result: BenchmarkResult) -> str:
    """The benchmark as plain-text tables: per method, then tokens per layer, then notes and warnings."""
    batch_sizes = result.batch_sizes
    static = any(r.method.kind == "ats" and r.method.settings.capacity is not None for r in result.methods)
    prepared = any(r.preparation_seconds is not None for r in result.methods)
    preparation = "export s" if result.runtime == "onnxruntime" else "compile s"
    header = ["method", Objective(result.objective).short, "GMACs mean ± std"]
    header += ["GMACs executed"] * static + ["tokens/layer"]
    header += [preparation] * prepared
    for batch_size in batch_sizes:
        header += [f"img/s bs{batch_size}", f"speed-up bs{batch_size} (GMACs ratio)"]
    rows = []
    for r in result.methods:
        row = [r.method.name, _score(r), f"{r.gmacs_mean:.4f} ± {r.gmacs_std:.4f}"]
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
    lines += ["", "mean tokens per layer (special tokens included)", format_grid(
        ["method"] + [f"L{i}" for i in range(len(result.methods[0].tokens_per_layer))],
        [[r.method.name] + [f"{n:.1f}" for n in r.tokens_per_layer] for r in result.methods],
    )]
    if result.sweep:
        lines += ["", f"sweep ({result.objective} and GMACs only)", format_grid(
            ["method", header[1], "GMACs mean ± std", "tokens/layer"],
            [[r.method.name, _score(r), f"{r.gmacs_mean:.4f} ± {r.gmacs_std:.4f}", _mean_tokens(r)]
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
    """Score (the run's objective) against mean GMACs per image, each marker labelled with its setting
    (`_point_label`): the compared setting and the methods matched to it in bold, the sweep's points in normal
    weight. The random baseline, far below the others, gets a panel of its own under the main one (same x axis), so
    that the main panel's y-range covers dense, ATS, top-K and ToMe only; a ToMe point far below those (`_in_range`)
    is a mark on the bottom edge that gives its value."""
    points = [r for r in result.methods + result.sweep if r.score is not None]
    if not points:
        return None
    random = [r for r in points if r.method.family == "random"]
    others = [r for r in points if r.method.family != "random"]
    if random and others:
        figure, (axes, random_axes) = plt.subplots(2, 1, sharex=True, figsize=(7.2, 6.8),
                                                   gridspec_kw={"height_ratios": (3, 1.5), "hspace": 0.08})
        panels = [(axes, others), (random_axes, random)]
    else:
        figure, axes = plt.subplots(figsize=(7.2, 4.8))
        random_axes, panels = None, [(axes, points)]
    compared = {id(r) for r in result.methods}
    ats = next((r.method.settings for r in result.methods if r.method.family == "ats"), None)
    label = Objective(result.objective).unit
    for panel, members in panels:
        for name, (colour, marker, linestyle) in FAMILY_STYLE.items():
            family = sorted((r for r in members if r.method.family == name), key=lambda r: r.gmacs_mean)
            if family:
                panel.plot([r.gmacs_mean for r in family], [r.score for r in family], marker=marker, color=colour,
                           linestyle=linestyle, label=name, markersize=_marker_size(name),
                           markerfacecolor="none" if name == "top-k" else colour, zorder=3 if name == "ats" else 2)
        panel.grid(alpha=0.3)
    dense = next((r for r in result.methods if r.method.family == "dense" and r.score is not None), None)
    if random_axes is not None and dense is not None:
        random_axes.axhline(dense.score, color="black", linestyle=":", linewidth=1, label="dense")
    axes.set_ylabel(label)
    axes.set_title("Quality vs compute: top-K / random at each ATS point's mean tokens, ToMe at its GMACs\n"
                   "labels: L = ATS layers, K = tokens kept, r = ToMe merges; "
                   "bold: the compared setting and its matches",
                   fontsize=9)
    axes.legend(fontsize=8, loc="lower right")
    if random_axes is None:
        axes.set_xlabel("mean GMACs per image")
    else:
        random_axes.set_xlabel("mean GMACs per image")
        random_axes.set_ylabel(Objective(result.objective).short)
        random_axes.legend(fontsize=8, loc="lower right")
    for panel, members in panels:  # fix the ranges (with room for the labels) before placing the labels
        scores = [r.score for r in _in_range(members)]
        scores += [dense.score] if panel is random_axes and dense is not None else []  # its dotted line
        pad = 0.14 * (max(scores) - min(scores)) or 1.0
        panel.set_ylim(min(scores) - pad, max(scores) + pad)
    axes.margins(x=0.1)
    axes.autoscale_view(scaley=False)
    axes.set_xlim(axes.get_xlim())
    shown = {_setting(r) for r in result.methods}  # a sweep point equal to a compared one is labelled once
    for panel, members in panels:
        inside, bottom = {id(r) for r in _in_range(members)}, panel.get_ylim()[0]
        for r in members:  # a point far below the others: a mark on the bottom edge, with its value
            if id(r) not in inside:
                panel.plot([r.gmacs_mean], [bottom], marker="v", color=FAMILY_STYLE[r.method.family][0],
                           markersize=7, clip_on=False, zorder=3)
        labelled = sorted((r for r in members if id(r) in compared or _setting(r) not in shown),
                          key=lambda r: (id(r) not in compared, r.method.family != "ats"))
        _place_labels(figure, panel, [
            (r.gmacs_mean, r.score if id(r) in inside else bottom,
             _point_label(r, ats, id(r) in compared) + ("" if id(r) in inside else f": {r.score:.2f}, off the axis"),
             FAMILY_STYLE[r.method.family][0], id(r) in compared, _marker_size(r.method.family) / 2)
            for r in labelled
        ], [(r.gmacs_mean, r.score if id(r) in inside else bottom, _marker_size(r.method.family) / 2)
            for r in members], [panel.get_legend()])
    return figure


def _in_range(members: list[MethodResult]) -> list[MethodResult]:
    """The points a panel's y-range covers: dense, ATS and top-K, and the others (ToMe) unless one falls further
    below the lowest of those than their whole spread (at least 1 point): such a point would squash the rest."""
    core = [r.score for r in members if r.method.family in ("dense", "ats", "top-k")]
    if not core:
        return members
    floor = min(core) - max(max(core) - min(core), 1.0)
    return [r for r in members if r.score >= floor]


def _setting(r: MethodResult) -> tuple:
    """What a method runs, whatever its name: (kind, settings) or (kind, r)."""
    method = r.method
    return (method.kind, method.r if method.kind == "tome" else method.settings)


def _marker_size(family: str) -> float:
    return 13 if family == "dense" else 6


def _point_label(r: MethodResult, ats, compared: bool) -> str:
    """A marker's short label: 'r 12' (ToMe), 'K 9,8' (top-K, random: tokens kept per ATS layer), and for ATS its
    layers and K ('L2-3, K all' for the compared setting; a sweep point names what differs from it)."""
    method = r.method
    if method.kind == "tome":
        return f"r {method.r}"
    settings = method.settings
    if method.family == "dense":
        return "dense"
    if method.family != "ats":
        return f"K {format_max_tokens(settings.max_tokens)}"
    layers, k = f"L{format_layers(settings.layers)}", f"K {format_max_tokens(settings.max_tokens)}"
    if compared or ats is None:
        return f"{layers}, {k}"
    parts = [layers] * (settings.layers != ats.layers) + [k] * (settings.max_tokens != ats.max_tokens)
    return " ".join(parts) or f"{layers}, {k}"


def _place_labels(figure, axes, labels: list[tuple], markers: list[tuple[float, float, float]],
                  artists: list = ()) -> None:
    """Annotate points next to their markers, each label where it overlaps no label placed before it, no marker, the
    legend (`artists`) and as little of the lines as it can, inside the axes: 8 directions close by, then 8 farther
    out (with a thin leader line), the spot with the least overlap winning, a near one before a far one. `labels`:
    (x, y, text, colour, bold, marker radius in points), in order of priority; `markers`: (x, y, radius in points) of
    every marker in the axes. Each label sits on a light box, so that a line under it does not hide it."""
    import numpy as np

    renderer = figure.canvas.get_renderer()
    scale = figure.dpi / 72  # display pixels per point
    frame = axes.get_window_extent(renderer)
    solid = [tuple(artist.get_window_extent(renderer).extents) for artist in artists if artist is not None]
    for x, y, radius in markers:
        px, py = axes.transData.transform((x, y))
        size = (radius + 0.5) * scale
        solid.append((px - size, py - size, px + size, py + size))
    samples = []  # points along the lines, every 3 pixels
    for line in axes.get_lines():
        path = line.get_transform().transform(line.get_xydata())
        for (x0, y0), (x1, y1) in itertools.pairwise(path):
            steps = max(int(np.hypot(x1 - x0, y1 - y0) / 3), 1)
            samples += [(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t) for t in np.linspace(0, 1, steps + 1)]
    half = 1.5
    soft = np.array([(x - half, y - half, x + half, y + half) for x, y in samples]).reshape(-1, 4)
    directions = [(1, 0, "left", "center"), (-1, 0, "right", "center"), (0.7, 0.7, "left", "bottom"),
                  (0.7, -0.7, "left", "top"), (-0.7, 0.7, "right", "bottom"), (-0.7, -0.7, "right", "top"),
                  (0, 1, "center", "bottom"), (0, -1, "center", "top")]
    for x, y, text, colour, bold, radius in labels:
        style = {"fontsize": 7, "color": colour, "fontweight": "bold" if bold else "normal", "zorder": 4,
                 "bbox": {"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}}
        probe = axes.annotate(text, (x, y), xytext=(0, 0), textcoords="offset points", **style)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        px, py = axes.transData.transform((x, y))
        area = extent.width * extent.height
        best = None
        for ring, distance in enumerate((radius + 1.5, radius + 11, radius + 22)):
            for dx, dy, ha, va in directions:
                left = px + dx * distance * scale - {"left": 0, "center": 0.5, "right": 1}[ha] * extent.width
                bottom = py + dy * distance * scale - {"bottom": 0, "center": 0.5, "top": 1}[va] * extent.height
                box = (left, bottom, left + extent.width, bottom + extent.height)
                cost = _overlap(box, np.array(solid)) + 0.3 * _overlap(box, soft) + 0.3 * ring * area
                cost += 10 * (area - _overlap(box, np.array([tuple(frame.extents)])))  # outside the axes
                if best is None or cost < best[0]:
                    best = (cost, ring, dx * distance, dy * distance, ha, va, box)
            if best[0] == 0:
                break
        _, ring, dx, dy, ha, va, box = best
        arrow = {"arrowstyle": "-", "color": colour, "linewidth": 0.5, "shrinkA": 0, "shrinkB": radius}
        axes.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                      arrowprops=arrow if ring else None, **style)
        solid.append(box)


def _overlap(box: tuple, others) -> float:
    """Total area that a display-space box (x0, y0, x1, y1) shares with each row of `others` (K, 4)."""
    if len(others) == 0:
        return 0.0
    width = (others[:, 2].clip(max=box[2]) - others[:, 0].clip(min=box[0])).clip(min=0)
    height = (others[:, 3].clip(max=box[3]) - others[:, 1].clip(min=box[1])).clip(min=0)
    return float((width * height).sum())


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
    axes.set_ylabel("tokens out (special tokens included), mean ± std")
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


def _score(r: MethodResult) -> str:
    return "-" if r.score is None else f"{r.score:.2f}"


def _mean_tokens(r: MethodResult) -> str:
    return f"{sum(r.tokens_per_layer) / len(r.tokens_per_layer):.1f}"


__all__ = ["format_table", "plot_all", "timing_warning", "write_report"]
