"""The GPU benchmark of the deployment issue, in one call: DeiT-S and DeiT-B geometry (random weights), bf16, batch
1, 64 and 256; dense vs ATS in eager PyTorch (adaptive mode), compiled static ATS with CUDA graphs
(`torch.compile(fullgraph=True, mode="reduce-overhead")`) vs compiled dense (same mode).

    python scripts/gpu_benchmark.py                     # on a CUDA machine; writes outputs/gpu_benchmark.{json,md}
    python scripts/gpu_benchmark.py --device cpu --quick   # dry run on a tiny geometry (what the test runs)

Every timed pass of a compiled method runs under `torch.cuda.set_sync_debug_mode("error")`, and each is also run
once under it before timing: a device-to-host synchronisation there raises, and the report says where. So a
report that says "no sync" proves the static mode (and compiled dense) never synchronise. The eager adaptive
mode synchronises once per ATS layer by design and is not checked.

Targets (checked in the report): compiled static ATS at least 1.0x compiled dense at batch 1, and at least 0.9 of
the GMACs ratio (dense GMACs / the static mode's executed GMACs) at the largest batch. Methods are timed
interleaved (`ats_hf.benchmark.timing`); compiling happens before any timed pass and is reported separately.
Results are written after each geometry, so a run cut short keeps what it measured.
"""

import argparse
import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ats_hf import AtsSettings
from ats_hf.benchmark.engine import DTYPES, GEOMETRIES, evaluate_method, speed_model
from ats_hf.benchmark.runtimes import prepare_pass
from ats_hf.benchmark.timing import interleaved_throughput
from ats_hf.flops import dense_gmacs, static_gmacs
from ats_hf.methods import AtsMethod, dense_method
from ats_hf.reporting import describe_machine
from ats_hf_cli.options import checked, positive_int
from ats_hf_common.grammar import format_layers, parse_capacity, parse_layers, parse_max_tokens

DEFAULTS = dict(geometries=("deit-s", "deit-b"), batch_sizes=(1, 64, 256), timing_images=256, repeats=5,
                dtype="bfloat16", layers="3-11", max_tokens=0.5, capacity=0.5, compile_mode="reduce-overhead")
QUICK = dict(geometries=("tiny",), batch_sizes=(1, 2), timing_images=2, repeats=1, layers="1-3")
TARGET_BATCH_1 = 1.0  # compiled static ATS / compiled dense at batch 1
TARGET_EFFICIENCY = 0.9  # speed-up / GMACs ratio at the largest batch
# (name, runtime, mode): the compared passes; dense passes first, as the references.
PASSES = (
    ("eager dense", "eager", "dense"),
    ("eager ATS adaptive", "eager", "adaptive"),
    ("compiled dense", "compile", "dense"),
    ("compiled ATS static", "compile", "static"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... or cpu for a dry run (default: cuda)")
    parser.add_argument("--quick", action="store_true",
                        help="a dry run: tiny geometry, batch 1 and 2, one repeat (float32 on the CPU)")
    parser.add_argument("--geometries", nargs="+", choices=sorted(GEOMETRIES),
                        help=f"(default: {' '.join(DEFAULTS['geometries'])})")
    parser.add_argument("--batch-sizes", nargs="+", type=positive_int,
                        help=f"(default: {' '.join(map(str, DEFAULTS['batch_sizes']))})")
    parser.add_argument("--timing-images", type=positive_int, help="images per timed pass and batch size "
                        f"(default: {DEFAULTS['timing_images']})")
    parser.add_argument("--repeats", type=positive_int,
                        help=f"timed passes per method (default: {DEFAULTS['repeats']})")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="(default: bfloat16; float32 with --quick on the CPU)")
    parser.add_argument("--ats-layers", type=checked(parse_layers, "layers"), help="(default: 3-11)")
    parser.add_argument("--ats-max-tokens", type=checked(parse_max_tokens, "K"), help="K (default: 0.5)")
    parser.add_argument("--ats-capacity", type=checked(parse_capacity, "capacity"),
                        help="the static mode's rows per ATS layer (default: 0.5, = K: never truncates)")
    parser.add_argument("--compile-mode", help=f"torch.compile mode (default: {DEFAULTS['compile_mode']} on CUDA, "
                        "torch's default on the CPU)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("outputs") / "gpu_benchmark",
                        help="writes OUTPUT.json and OUTPUT.md (default: %(default)s)")
    args = parser.parse_args(argv)
    preset = {**DEFAULTS, **(QUICK if args.quick else {})}
    on_cpu = torch.device(args.device).type == "cpu"
    args.geometries = args.geometries or list(preset["geometries"])
    args.batch_sizes = args.batch_sizes or list(preset["batch_sizes"])
    args.timing_images = args.timing_images or preset["timing_images"]
    args.repeats = args.repeats or preset["repeats"]
    args.dtype = args.dtype or ("float32" if args.quick and on_cpu else preset["dtype"])
    args.ats_layers = args.ats_layers if args.ats_layers is not None else parse_layers(preset["layers"])
    args.ats_max_tokens = args.ats_max_tokens if args.ats_max_tokens is not None else preset["max_tokens"]
    args.ats_capacity = args.ats_capacity if args.ats_capacity is not None else preset["capacity"]
    args.compile_mode = args.compile_mode or (None if on_cpu else preset["compile_mode"])  # CUDA graphs: CUDA only
    return args


@contextlib.contextmanager
def no_sync_allowed(device: torch.device):
    """Inside the block, a CUDA device-to-host synchronisation raises RuntimeError (a no-op elsewhere)."""
    if device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def sync_checked(run, device: torch.device):
    """`run` with every call inside `no_sync_allowed`."""

    def checked_run(batches):
        with no_sync_allowed(device):
            return run(batches)

    return checked_run


def measure_geometry(geometry: str, args: argparse.Namespace, log) -> dict:
    """Every pass of one geometry at every batch size: throughput, speed-ups, GMACs ratios, the sync proof."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    model = speed_model(geometry).to(device=device, dtype=dtype)
    model.set_attn_implementation("sdpa")
    layers = [layer for layer in args.ats_layers if layer < model.config.num_hidden_layers]
    methods = {
        "dense": dense_method(),
        "adaptive": AtsMethod("ats adaptive", AtsSettings(layers, args.ats_max_tokens)),
        "static": AtsMethod("ats static", AtsSettings(layers, args.ats_max_tokens, capacity=args.ats_capacity)),
    }
    config = model.config
    size = config.image_size
    count = max(max(args.batch_sizes), args.timing_images)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(count, config.num_channels, size, size, generator=generator).to(device, dtype)
    adaptive = evaluate_method(model, methods["adaptive"], pixel_values, batch_size=max(args.batch_sizes))
    executed = static_gmacs(model.config, settings=methods["static"].settings)
    gmacs = {"dense": dense_gmacs(config), "adaptive (real tokens)": adaptive.gmacs_mean, "static (executed)": executed}
    log(f"{geometry}: GMACs {json.dumps({k: round(v, 4) for k, v in gmacs.items()})}")

    batches = {b: [pixel_values[i : i + b] for i in range(0, max(b, args.timing_images // b * b), b)]
               for b in args.batch_sizes}
    prepared, compile_seconds, sync_proof = {}, {}, {}
    for name, runtime, mode in PASSES:
        log(f"{geometry}: preparing {name}")
        every_batch = [batch for batch_list in batches.values() for batch in batch_list]
        ready = prepare_pass(runtime, model, methods[mode], every_batch, compile_backend=args.compile_backend,
                             compile_mode=args.compile_mode)
        run = ready.run
        if runtime == "compile":
            compile_seconds[name] = ready.preparation_seconds
            sync_proof[name] = prove_no_sync(run, batches, device)
            run = sync_checked(run, device) if sync_proof[name] == "no sync" else run
        prepared[name] = run
    timings = {}
    for batch_size, batch_list in batches.items():
        log(f"{geometry}: timing batch {batch_size}")
        measured = interleaved_throughput({name: (lambda run=run, b=batch_list: run(b)) for name, run in
                                           prepared.items()}, device, repeats=args.repeats,
                                          description=f"{geometry} batch {batch_size}")
        timings[batch_size] = {name: {"images_per_second": m.images_per_second, "samples": list(m.samples),
                                      "spread": m.spread} for name, m in measured.items()}
    return summarise(geometry, gmacs, timings, compile_seconds, sync_proof, args)


def prove_no_sync(run, batches: dict, device: torch.device) -> str:
    """Run one batch of every size with synchronisation forbidden: "no sync", the error, or "not checked" off CUDA."""
    if device.type != "cuda":
        return "not checked (no CUDA device)"
    try:
        with no_sync_allowed(device):
            for batch_list in batches.values():
                run(batch_list[:1])
        torch.cuda.synchronize(device)
    except RuntimeError as error:
        return f"SYNC: {str(error).splitlines()[0]}"
    return "no sync"


def summarise(geometry, gmacs, timings, compile_seconds, sync_proof, args) -> dict:
    """Speed-ups against the same runtime's dense pass, their GMACs ratios and efficiencies, and the targets."""
    ratio_adaptive = gmacs["dense"] / gmacs["adaptive (real tokens)"]
    ratio_static = gmacs["dense"] / gmacs["static (executed)"]
    rows = []
    for batch_size, measured in timings.items():
        ips = {name: m["images_per_second"] for name, m in measured.items()}
        eager = ips["eager ATS adaptive"] / ips["eager dense"]
        compiled = ips["compiled ATS static"] / ips["compiled dense"]
        rows.append({
            "batch_size": batch_size,
            "images_per_second": ips,
            "largest_spread": max(m["spread"] for m in measured.values()),
            "eager_speedup": eager, "eager_gmacs_ratio": ratio_adaptive, "eager_efficiency": eager / ratio_adaptive,
            "compiled_speedup": compiled, "compiled_gmacs_ratio": ratio_static,
            "compiled_efficiency": compiled / ratio_static,
            "compiled_static_vs_eager_dense": ips["compiled ATS static"] / ips["eager dense"],
        })
    by_batch = {row["batch_size"]: row for row in rows}
    largest = max(by_batch)
    targets = {}
    if 1 in by_batch:
        speedup = by_batch[1]["compiled_speedup"]
        targets[f"compiled static ATS >= {TARGET_BATCH_1}x compiled dense at batch 1"] = (
            speedup >= TARGET_BATCH_1, round(speedup, 3))
    efficiency = by_batch[largest]["compiled_efficiency"]
    targets[f"compiled static ATS >= {TARGET_EFFICIENCY} of the GMACs ratio at batch {largest}"] = (
        efficiency >= TARGET_EFFICIENCY, round(efficiency, 3))
    proof = sync_proof.get("compiled ATS static", "")
    targets["static mode never syncs (compiled)"] = (None if proof.startswith("not checked") else proof == "no sync",
                                                     proof)
    return {"geometry": geometry, "gmacs": gmacs, "rows": rows, "compile_seconds": compile_seconds,
            "sync_proof": sync_proof, "targets": {k: {"met": v[0], "value": v[1]} for k, v in targets.items()}}


def markdown(report: dict) -> str:
    settings = report["settings"]
    lines = [
        "# GPU benchmark (scripts/gpu_benchmark.py)", "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}; machine: {report['machine'].get('gpu') or report['machine']['cpu']}, torch "
        f"{report['machine']['torch']}, {settings['dtype']}",
        f"- ATS layers {settings['layers']}, K {settings['max_tokens']}, static capacity {settings['capacity']}; "
        f"compile mode {settings['compile_mode']!r}; {settings['repeats']} timed passes, median", "",
    ]
    for result in report["geometries"]:
        g = result["gmacs"]
        lines += [
            f"## {result['geometry']}", "",
            f"GMACs per image: dense {g['dense']:.4g}, adaptive ATS {g['adaptive (real tokens)']:.4g} (real tokens), "
            f"static ATS {g['static (executed)']:.4g} (executed). Compile seconds: "
            + ", ".join(f"{k} {v:.1f}" for k, v in result["compile_seconds"].items())
            + ". Sync check: " + "; ".join(f"{k}: {v}" for k, v in result["sync_proof"].items()) + ".", "",
            "| batch | eager dense img/s | eager ATS adaptive img/s | speed-up (GMACs ratio) | compiled dense img/s | "
            "compiled static ATS img/s | speed-up (GMACs ratio) | speed-up / ratio | largest spread |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in result["rows"]:
            ips = row["images_per_second"]
            lines.append(
                f"| {row['batch_size']} | {ips['eager dense']:.1f} | {ips['eager ATS adaptive']:.1f} | "
                f"{row['eager_speedup']:.2f}x ({row['eager_gmacs_ratio']:.2f}x) | {ips['compiled dense']:.1f} | "
                f"{ips['compiled ATS static']:.1f} | {row['compiled_speedup']:.2f}x "
                f"({row['compiled_gmacs_ratio']:.2f}x) | {row['compiled_efficiency']:.2f} | "
                f"{100 * row['largest_spread']:.0f}% |"
            )
        verdicts = {True: "met", False: "MISSED", None: "not checked"}
        lines += [""] + [f"- {verdicts[t['met']]}: {name} ({t['value']})"
                         for name, t in result["targets"].items()] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_benchmark: no CUDA device; run on a GPU machine, or --device cpu --quick for a dry run",
              file=sys.stderr)
        return 2
    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    probe = torch.empty(0, device=device, dtype=DTYPES[args.dtype])
    report = {
        "command": " ".join(["python", "scripts/gpu_benchmark.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {**describe_machine(probe), "python": platform.python_version()},
        "settings": {"dtype": args.dtype, "layers": format_layers(args.ats_layers), "max_tokens": args.ats_max_tokens,
                     "capacity": args.ats_capacity, "batch_sizes": args.batch_sizes,
                     "timing_images": args.timing_images, "repeats": args.repeats, "compile_mode": args.compile_mode,
                     "compile_backend": args.compile_backend},
        "geometries": [],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for geometry in args.geometries:
        report["geometries"].append(measure_geometry(geometry, args, log))
        report["seconds"] = round(time.perf_counter() - started, 1)
        args.output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        args.output.with_suffix(".md").write_text(markdown(report))
        log(f"wrote {args.output.with_suffix('.json')} and {args.output.with_suffix('.md')}")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
