"""Export an ATS image classifier (any family) in the static mode to ONNX, check it against PyTorch, and write a
ready folder.

The static mode (`ats_capacity` set) has no host read and no data-dependent shape, so `torch.export` traces the
whole model, sampling included, and the ONNX graph runs in onnxruntime with any batch size. The adaptive mode
cannot be exported: its row count is data-dependent.

ONNX graph: input `pixel_values` (batch, channels, height, width) float32; outputs `logits` (batch, num_labels),
`num_tokens` (batch, num_hidden_layers) int64, `sampled_token_indices` (batch, num_ats_layers, max_kept) int64
(-1 padded) and `token_mask` (batch, rows) int64 - the model's outputs of the same names. A plain ViT graph
(`allow_dense=True`, no ATS layers; the benchmark's dense reference) has no `sampled_token_indices`.
`write_onnx` writes any model with static shapes unchecked; a module that maps pixel values to a logits tensor (the
benchmark's ToMe baseline, `ats_hf.tome.TomeClassifier`) gets the one output `logits`.
"""

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

ONNX_FILE = "model.onnx"
ONNX_INPUTS = ("pixel_values",)
ONNX_OUTPUTS = ("logits", "num_tokens", "sampled_token_indices", "token_mask")
VERIFICATION_FILE = "onnx_verification.json"
LOGITS_TOLERANCE = 1e-4


class _OnnxOutputs(nn.Module):
    """The model with its outputs as the fixed tuple the ONNX graph returns: an ATS classifier's `_output_names`,
    or the logits of a module that returns a logits tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.names = _output_names(model) if hasattr(model, "ats_settings") else ("logits",)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(pixel_values=pixel_values)
        if isinstance(output, torch.Tensor):
            return (output,)
        return tuple(getattr(output, name) for name in self.names)


def _output_names(model) -> tuple[str, ...]:
    """The graph's outputs: `ONNX_OUTPUTS`, less `sampled_token_indices` for a model without ATS layers."""
    if model.ats_settings.layers:
        return ONNX_OUTPUTS
    return tuple(name for name in ONNX_OUTPUTS if name != "sampled_token_indices")


def check_exportable(model, *, allow_dense: bool = False) -> None:
    """Raise `ValueError` unless the model is in the static mode with at least one ATS layer (or, with
    `allow_dense`, has no ATS layers at all: a plain ViT, whose shapes are static too) and a deterministic sampler
    (not 'random', whose graph could not be verified)."""
    settings = model.ats_settings
    if not settings.layers:
        if allow_dense:
            return
        raise ValueError("the model has no ATS layers (ats_layers=[]); export the plain ViT with transformers' tools.")
    if settings.capacity is None:
        raise ValueError(
            "the model is in the adaptive mode (ats_capacity=None), whose row count depends on the data; set a "
            "static capacity first, e.g. model.set_ats(capacity=0.5) or `--ats-capacity`, or let `ats-hf calibrate` "
            "propose one."
        )
    if settings.sampler == "random":
        raise ValueError(
            "ats_sampler='random' (an ablation baseline) draws its own random numbers in ONNX Runtime, so its graph "
            "cannot be checked against PyTorch; export 'inverse_transform' (ATS) or 'top_k'."
        )


def export_onnx(
    model, path: str | os.PathLike, example: torch.Tensor, *, allow_dense: bool = False
) -> Path:
    """Write the static-mode `model` as an ONNX graph with a dynamic batch size.

    Args:
        model: a static-mode classifier (see `check_exportable`), on the CPU.
        path: the .onnx file to write.
        example: (B, C, H, W) pixel values that set the image size (any batch size).
        allow_dense: also export a model without ATS layers (a plain ViT, e.g. as a reference to time against).
    """
    check_exportable(model, allow_dense=allow_dense)
    return write_onnx(model, path, example)


def write_onnx(model: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """Write `model`, whose shapes must be static, as an ONNX graph with a dynamic batch size, unchecked: an ATS
    classifier (the outputs of `export_onnx`, which checks it first), a transformers classifier, or a module mapping
    (B, C, H, W) pixel values to a (B, num_labels) logits tensor, e.g. `ats_hf.tome.TomeClassifier`."""
    model = model.eval()
    if example.shape[0] == 1:  # an example of one would fix the graph's batch size to 1
        example = example.repeat(2, *[1] * (example.dim() - 1))
    batch = torch.export.Dim("batch", min=1, max=4096)
    wrapped = _OnnxOutputs(model).eval()
    with torch.no_grad(), _without_exporter_noise():
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            input_names=list(ONNX_INPUTS),
            output_names=list(wrapped.names),
            verbose=False,
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return path


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in record.getMessage() for fragment in self.fragments)


@contextlib.contextmanager
def _without_exporter_noise():
    """Silence the ONNX exporter's messages that never concern this model: torchvision's operators are not
    registered when torchvision is not installed, and a deprecation inside torch's own pytree code."""
    drop = _DropMessages("torchvision is not installed")
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        logger.removeFilter(drop)


def verify_onnx(
    path: str | os.PathLike,
    model,
    pixel_values: torch.Tensor,
    batch_sizes: tuple[int, ...] = (1, 3),
) -> dict:
    """Run the ONNX graph in onnxruntime (CPU) and the model in PyTorch on the same images, in batches of each size
    (`model`: what was exported, an ATS classifier or a module returning logits).

    Returns a report: the number of images (each checked at every batch size), the largest logit difference,
    whether every kept index, token count and mask is identical, and `passed` (logits within `LOGITS_TOLERANCE` and
    all identical)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    max_logit_difference, identical = 0.0, True
    for batch_size in batch_sizes:
        for start in range(0, len(pixel_values), batch_size):
            batch = pixel_values[start : start + batch_size].float()
            onnx_outputs = session.run(names, {"pixel_values": batch.numpy()})
            with torch.no_grad():
                expected = _OnnxOutputs(model)(batch)
            max_logit_difference = max(
                max_logit_difference, float((torch.from_numpy(onnx_outputs[0]) - expected[0]).abs().max())
            )
            pairs = zip(onnx_outputs[1:], expected[1:], strict=True)
            identical &= all(torch.equal(torch.from_numpy(got), want) for got, want in pairs)
    return {
        "images": len(pixel_values),  # each run once at every batch size
        "batch_sizes": list(batch_sizes),
        "max_logit_difference": max_logit_difference,
        "logits_tolerance": LOGITS_TOLERANCE,
        "identical_kept_tokens": identical,
        "passed": identical and max_logit_difference <= LOGITS_TOLERANCE,
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
    }


def export_folder(
    model,
    output_dir: str | os.PathLike,
    pixel_values: torch.Tensor,
    image_processor=None,
) -> dict:
    """Write `output_dir` with model.onnx, config.json, the image processor's preprocessor_config.json (if given)
    and onnx_verification.json; raise `RuntimeError` (after writing the report) if the graph disagrees with
    PyTorch on `pixel_values`. Returns the verification report."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = model.cpu().float().eval()
    path = export_onnx(model, output_dir / ONNX_FILE, pixel_values[:2].float())
    model.config.save_pretrained(output_dir)
    if image_processor is not None:
        image_processor.save_pretrained(output_dir)
    report = verify_onnx(path, model, pixel_values)
    (output_dir / VERIFICATION_FILE).write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        raise RuntimeError(
            f"the ONNX graph disagrees with PyTorch: largest logit difference {report['max_logit_difference']:.2e} "
            f"(tolerance {LOGITS_TOLERANCE:g}), identical kept tokens: {report['identical_kept_tokens']}; see "
            f"{output_dir / VERIFICATION_FILE}"
        )
    return report


__all__ = [
    "LOGITS_TOLERANCE",
    "ONNX_INPUTS",
    "ONNX_OUTPUTS",
    "check_exportable",
    "export_folder",
    "export_onnx",
    "verify_onnx",
    "write_onnx",
]
