"""Where a method runs while it is timed: eager PyTorch, torch.compile, or ONNX Runtime.

`prepare_pass(runtime, model, method, warm_batches)` returns a `PreparedPass`: a callable that runs a list of batches
with the method's settings, and the seconds spent getting it ready (compiling or exporting, then one untimed run of
`warm_batches`, every batch that will be timed, so that any compiling happens there), which are never part of a
timed pass.

- eager: the given model, running the method for the pass (`method.applied`, then `method.run` per batch).
- compile: a copy of the model that runs the method by itself (`method.standalone`: the ATS settings set, or ToMe
  as one module), `torch.compile`d once per method. A method with static shapes (static mode, no ATS layers, ToMe)
  compiles with `fullgraph=True, dynamic=False`: one specialised graph per batch size. The adaptive mode compiles
  plainly (its host read is a graph break, and its row counts change with the data, so dynamo's automatic dynamic
  shapes apply).
- onnxruntime: the copy exported to ONNX (`ats_hf.export.write_onnx`; static shapes only) and run by an
  `onnxruntime.InferenceSession` on the CPU with as many intra-op threads as torch uses; every exported graph but the
  random sampler's (ONNX Runtime draws its own numbers) is checked against PyTorch on a few images, and the pass
  notes the result.
"""

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ats_hf_common.benchmark_defaults import COMPILE_BACKEND

from ..methods import Method
from .timing import synchronize

RUNTIMES = ("eager", "compile", "onnxruntime")
VERIFY_IMAGES = 4  # images an exported graph is checked on against PyTorch (at batch sizes 1 and 2)
# dynamo's limit of graphs per function: the methods' copies share their forward functions, and each method and
# batch size needs its own graph (the default, 8, would send the later ones back to eager PyTorch).
RECOMPILE_LIMIT = 256


@dataclass
class PreparedPass:
    """`run(batches) -> images` runs one pass; `preparation_seconds` is None in eager."""

    run: Callable[[list[torch.Tensor]], int]
    preparation_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    resources: list = field(default_factory=list, repr=False)  # kept alive as long as the pass (temp dirs)


def check_runtime(runtime: str, method: Method, device: torch.device, dtype: torch.dtype) -> None:
    """Raise `ValueError` when `method` cannot run in `runtime` on that device and dtype."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime={runtime!r} is unknown; choose one of {', '.join(RUNTIMES)}.")
    if runtime != "onnxruntime":
        return
    if not method.static:
        raise ValueError(
            f"method {method.name!r} is in the adaptive mode, which ONNX cannot express (its row count depends on the "
            "data); onnxruntime times the static mode only (set a capacity)."
        )
    if device.type != "cpu" or dtype != torch.float32:
        raise ValueError(f"onnxruntime is timed on the CPU in float32 here, not {device.type} {dtype}.")


def prepare_pass(
    runtime: str,
    model,
    method: Method,
    warm_batches: list[torch.Tensor],
    *,
    compile_backend: str = COMPILE_BACKEND,
    compile_mode: str | None = None,
) -> PreparedPass:
    """A timed pass of `method` in `runtime`, made ready (compiled or exported) and run once on `warm_batches` (the
    batches that will be timed, every batch size). The model's own settings are left as they are."""
    parameter = next(model.parameters())
    check_runtime(runtime, method, parameter.device, parameter.dtype)
    if runtime == "eager":
        return PreparedPass(lambda batches: _eager_pass(model, method, batches))
    if runtime == "compile":
        return _compiled(model, method, warm_batches, compile_backend, compile_mode)
    return _onnxruntime(model, method, warm_batches)


def _eager_pass(model, method: Method, batches: list[torch.Tensor]) -> int:
    with torch.inference_mode(), method.applied(model):
        for batch in batches:
            method.run(model, batch)
    return sum(len(batch) for batch in batches)


def _compiled(model, method: Method, warm_batches, backend: str, mode: str | None) -> PreparedPass:
    twin = method.standalone(model, warm_batches[0][:1])
    static = method.static
    compiled = torch.compile(twin, fullgraph=static, dynamic=False if static else None, backend=backend, mode=mode)
    cuda_graphs = mode == "reduce-overhead" and warm_batches[0].device.type == "cuda"

    def call(batch: torch.Tensor) -> None:
        if cuda_graphs:  # outputs of the previous replay may be overwritten: this run starts a new step
            torch.compiler.cudagraph_mark_step_begin()
        compiled(pixel_values=batch)

    def run(batches: list[torch.Tensor]) -> int:
        with torch.inference_mode(), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            for batch in batches:
                call(batch)
        return sum(len(batch) for batch in batches)

    start = time.perf_counter()
    run(warm_batches)
    synchronize(warm_batches[0].device)
    seconds = time.perf_counter() - start
    if cuda_graphs:  # CUDA graph trees run a shape eagerly first, then record it, then replay it
        run(warm_batches)
        run(warm_batches)
    return PreparedPass(run, seconds, resources=[compiled])


def _onnxruntime(model, method: Method, warm_batches) -> PreparedPass:
    import onnxruntime

    from ..export import verify_onnx, write_onnx

    start = time.perf_counter()
    twin = method.standalone(model, warm_batches[0][:1])
    folder = tempfile.TemporaryDirectory(prefix="ats-hf-onnx-")
    path = write_onnx(twin, Path(folder.name) / "model.onnx", warm_batches[0][:1])  # static shapes: check_runtime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(batches: list[torch.Tensor]) -> int:
        for batch in batches:
            session.run(["logits"], {"pixel_values": batch.numpy()})
        return sum(len(batch) for batch in batches)

    run(warm_batches)
    seconds = time.perf_counter() - start
    if method.family == "random":
        note = (f"onnxruntime {onnxruntime.__version__}: the {method.name} graph draws its own random numbers, so it "
                "is not compared with PyTorch's draws")
        return PreparedPass(run, seconds, [note], resources=[folder, session])
    images = torch.cat(warm_batches[:VERIFY_IMAGES])[:VERIFY_IMAGES]
    report = verify_onnx(path, twin, images, batch_sizes=(1, 2))
    note = (
        f"onnxruntime {onnxruntime.__version__}: the {method.name} graph "
        f"{'matches' if report['passed'] else 'DIFFERS FROM'} PyTorch on {len(images)} images (largest logit "
        f"difference {report['max_logit_difference']:.1e}, same kept tokens: "
        f"{'yes' if report['identical_kept_tokens'] else 'no'})"
    )
    return PreparedPass(run, seconds, [note], resources=[folder, session])


__all__ = ["RUNTIMES", "PreparedPass", "check_runtime", "prepare_pass"]
