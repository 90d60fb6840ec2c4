"""The evaluation engine's figures in docs/benchmarks.md: wall time, peak memory and images/s of `ats-hf benchmark`,
`ats-hf tune` and `ats-hf calibrate` over a folder of N images, on one process and under torchrun on two.

    python scripts/evaluation_figures.py --work /tmp/engine --images 2000 8000 --processes 1 2

It writes into --work (an empty or new folder): a tiny 4-layer ViT at 224 px (197 tokens, random weights, 10 labels)
and a labelled folder of 64 px JPEGs (resized to 224 by the image processor), then runs each command under
`/usr/bin/time -v` (peak resident memory of the main process) with one torch thread per process, and prints one
table row per run. The numbers depend on the machine: compare ratios measured in one run.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ats_hf_cli.options import positive_int
from ats_hf_common.paths import check_target

COMMANDS = {
    "benchmark": ["benchmark", "--batch-sizes", "--ats-layers", "1-3", "--ats-max-tokens", "0.5"],
    "tune": ["tune", "--no-speed", "--first-layers", "1", "2", "--tome-r", "8", "--batch-size", "64"],
    "calibrate": ["calibrate", "--ats-layers", "1-3", "--ats-max-tokens", "0.5"],
}
OUTPUT_OPTION = {"benchmark": "--output-dir", "tune": "--output", "calibrate": "--output"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the model, the images and the outputs")
    parser.add_argument("--images", type=positive_int, nargs="+", default=[2000, 8000], help="folder sizes")
    parser.add_argument("--processes", type=positive_int, nargs="+", default=[1], help="process counts (torchrun)")
    parser.add_argument("--commands", nargs="+", choices=tuple(COMMANDS), default=list(COMMANDS))
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers per process")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --work")
    return parser.parse_args()


def make_model(directory: Path) -> None:
    import torch
    from transformers import ViTImageProcessorPil

    from ats_hf import AtsViTConfig, AtsViTForImageClassification

    torch.manual_seed(0)
    config = AtsViTConfig(image_size=224, patch_size=16, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                          intermediate_size=128, num_labels=10, ats_layers=[])
    AtsViTForImageClassification(config).save_pretrained(directory)
    ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(directory)


def make_folder(directory: Path, count: int) -> None:
    """`count` random 64 px JPEGs in 10 class sub-folders named after the model's labels (LABEL_0 ...)."""
    rng = np.random.default_rng(0)
    for index in range(count):
        folder = directory / f"LABEL_{index % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{index}.jpg", quality=90)


def run(command: str, model: Path, data: Path, images: int, processes: int, output: Path, workers: int,
        overwrite: bool) -> dict:
    """Run one command; returns its wall time, the main process's peak memory and its own images/s figure."""
    launcher = [sys.executable, "-m", "ats_hf"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
        "-m", "ats_hf"]
    argv = [*launcher, *COMMANDS[command], "--model", str(model), "--dataset", str(data), "--num-images", str(images),
            "--num-workers", str(workers), OUTPUT_OPTION[command], str(output), *(["--overwrite"] * overwrite)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["/usr/bin/time", "-v", *argv], env=environment, capture_output=True, text=True)
    if done.returncode not in (0, 1):  # tune exits 1 when no setting meets the target
        raise RuntimeError(f"{command} failed:\n{done.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    hours, minutes, seconds = (float(value or 0) for value in wall.groups())
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    rate = None
    if command == "tune":
        rate = json.loads((output / "tune.json").read_text())["search"]["images_per_second"]
    elif command == "benchmark":
        rate = json.loads((output / "benchmark.json").read_text())["evaluation"]["images_per_second"]
    return {"wall_s": 3600 * hours + 60 * minutes + seconds, "peak_gib": peak / 2**20, "images_per_s": rate}


def main() -> None:
    args = parse_args()
    check_target(args.work, "--work", args.overwrite)
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / "model"
    if not model.exists():
        make_model(model)
    print("| command | images | processes | wall | peak memory (main process) | images/s (the command's own) |")
    print("|---|---:|---:|---:|---:|---:|")
    for images in args.images:
        data = args.work / f"folder-{images}"
        if not data.exists():
            make_folder(data, images)
        for command in args.commands:
            for processes in args.processes:
                output = args.work / f"{command}-{images}-{processes}"
                figures = run(command, model, data, images, processes, output, args.num_workers, args.overwrite)
                rate = "-" if figures["images_per_s"] is None else f"{figures['images_per_s']:.0f}"
                print(f"| {command} | {images} | {processes} | {figures['wall_s']:.1f} s | "
                      f"{figures['peak_gib']:.2f} GiB | {rate} |", flush=True)


if __name__ == "__main__":
    main()
