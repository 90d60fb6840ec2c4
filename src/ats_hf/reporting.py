"""What every tool's report shares: plain-text tables and a description of the machine that measured."""

import contextlib
import os
import platform
from pathlib import Path

import torch


def format_grid(header: list[str], rows: list[list[str]]) -> str:
    """Columns of text, left-aligned, with a rule under the header."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


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


__all__ = ["describe_machine", "format_grid"]
