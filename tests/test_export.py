"""Deployment paths of the static mode: torch.compile(fullgraph), torch.export and ONNX Runtime."""

import json

import onnx
import pytest
import torch
from conftest import tiny_model
from transformers import AutoImageProcessor

from ats_hf import AtsViTForImageClassification, ats_sampling
from ats_hf.data import DEFAULT_MODEL_DIR
from ats_hf.evaluation import open_images
from ats_hf.export import check_exportable, export_folder, verify_onnx, write_onnx

pytestmark = pytest.mark.slow  # compiling takes about half a minute on 2 CPU cores


build = tiny_model


@pytest.mark.parametrize(
    ("merge", "search"), [(None, False), (0.5, False), (None, True)], ids=["drop", "merge", "drop-binary-search"]
)
def test_compile_fullgraph_of_the_static_mode_equals_eager(images, merge, search, monkeypatch):
    """Both nearest-value paths of the sampler compile into one graph: the distance matrix (small batches) and the
    binary search (above the CPU's matrix size limit, forced here)."""
    if search:
        monkeypatch.setattr(ats_sampling, "NEAREST_BY_DISTANCES_LIMIT", 0)
    torch._dynamo.reset()
    model = build(ats_capacity=[40, 36, 28], ats_merge=merge)
    with torch.no_grad():
        eager = model(images)
        compiled = torch.compile(model, fullgraph=True)(pixel_values=images)
    assert not eager.token_mask.all() and (eager.num_tokens[:, -1] == 28).any(), "needs padding and truncation"
    torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(compiled.sampled_token_indices, eager.sampled_token_indices)
    assert torch.equal(compiled.num_tokens, eager.num_tokens)


def test_the_adaptive_mode_runs_under_plain_compile(images):
    torch._dynamo.reset()
    model = build()
    with torch.no_grad():
        eager = model(images)
        compiled = torch.compile(model)(pixel_values=images)
    torch.testing.assert_close(compiled.logits, eager.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(compiled.sampled_token_indices, eager.sampled_token_indices)


def test_torch_export_of_the_static_mode(images):
    model = build(ats_capacity=0.5)
    program = torch.export.export(model, (), {"pixel_values": images})
    with torch.no_grad():
        exported, eager = program.module()(pixel_values=images), model(images)
    torch.testing.assert_close(exported.logits, eager.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(exported.sampled_token_indices, eager.sampled_token_indices)


def test_onnx_runtime_matches_pytorch_on_images_that_cannot_be_ranked(tmp_path, images):
    """An ATS layer whose values are all zero scores every patch 0 (NaN once normalised): each image keeps every real
    patch, and the static packing its first ones, in PyTorch and in the exported graph alike (ties to the lower index;
    PyTorch's topk chose others). A one-image example still exports a graph for any batch size."""
    model = build(ats_capacity=0.5)
    with torch.no_grad():
        value = model.vit.layers[1].attention.v_proj
        value.weight.zero_()
        value.bias.zero_()
        output = model(images[:3])
    assert (output.num_tokens[:, 1] == 33).all(), "every image keeps its first 32 patches (capacity 0.5 of 65)"
    assert torch.equal(output.sampled_token_indices[:, 0, :32], torch.arange(32).expand(3, -1))
    report = verify_onnx(write_onnx(model, tmp_path / "model.onnx", images[:1]), model, images[:6])
    assert report["passed"] and report["identical_kept_tokens"] and report["batch_sizes"] == [1, 3]


@pytest.mark.parametrize("merge", [None, 0.5], ids=["drop", "merge"])
def test_onnx_runtime_matches_pytorch_on_the_embedded_model(tmp_path, merge):
    model = AtsViTForImageClassification.from_pretrained(DEFAULT_MODEL_DIR).eval()
    model.set_ats(merge=merge)
    processor = AutoImageProcessor.from_pretrained(DEFAULT_MODEL_DIR)
    pixel_values = open_images(None, processor, model.config.id2label, num_images=24).head(24)
    with torch.no_grad():
        adaptive_counts = model(pixel_values).num_tokens[:, model.config.ats_layers[0]]  # out of the first ATS layer
    assert (adaptive_counts > 12).any() and (adaptive_counts < 12).any(), "test needs truncated and fitting images"
    model.set_ats(capacity=12)
    report = export_folder(model, tmp_path / "onnx", pixel_values, processor)
    assert report["passed"] and report["identical_kept_tokens"] and report["max_logit_difference"] <= 1e-4
    assert report["batch_sizes"] == [1, 3] and report["images"] == 24  # each image at both batch sizes
    written = {path.name for path in (tmp_path / "onnx").iterdir()}
    assert {"model.onnx", "config.json", "preprocessor_config.json", "onnx_verification.json"} <= written
    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["ats_capacity"] == 12
    # The static graph's size budget (docs/benchmarks.md, section 4: at batch 1 onnxruntime is bound by its node
    # count): the shipped layers 2-3 at capacity 12, as counted on 2026-12-07 (435 and 516 before the head-split
    # scoring, the additive sdpa mask and the static packing's cuts); a graph that grows fails here.
    graph = onnx.load(tmp_path / "onnx" / "model.onnx").graph
    assert len(graph.node) <= {None: 418, 0.5: 505}[merge]


def test_only_the_static_mode_exports():
    with pytest.raises(ValueError, match="adaptive mode"):
        check_exportable(build())
    with pytest.raises(ValueError, match="no ATS layers"):
        check_exportable(build(ats_layers=[]))
    with pytest.raises(ValueError, match=r"ats_sampler='random' .* draws its own random numbers"):
        check_exportable(build(ats_capacity=20, ats_sampler="random"))
    check_exportable(build(ats_capacity=20, ats_sampler="top_k"))


def test_a_compiled_model_compiles_once(images):
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model = build()
    model.set_ats(capacity=0.5)
    counter = CompileCounter()
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    with torch.no_grad():
        compiled(pixel_values=images)
        compiled(pixel_values=images)
    assert counter.frame_count == 1


def test_tome_of_another_family_exports_to_onnx_runtime(tmp_path):
    """ToMe's static shapes export for any family: DINOv2 with registers (3 special tokens, a head on CLS and the
    size-weighted mean of the merged patches) gives PyTorch's logits at another batch size."""
    import onnxruntime
    from family_cases import CASES

    from ats_hf.export import write_onnx
    from ats_hf.families import family_named
    from ats_hf.tome import TomeClassifier

    case = next(c for c in CASES if c.name == "dinov2-registers")
    model = family_named(case.family).classifier.from_pretrained(case.save(tmp_path / "upstream")).eval()
    module = TomeClassifier(model, 6)
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    path = write_onnx(module, tmp_path / "tome.onnx", pixel_values[:2])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"pixel_values": pixel_values.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), module(pixel_values), atol=1e-5, rtol=0)


class _SortOrder(torch.nn.Module):
    def __init__(self, descending: bool):
        super().__init__()
        self.descending = descending

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        from ats_hf.ats_sampling import _stable_sort

        return _stable_sort(values, self.descending)[1]


@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
def test_the_exported_sort_keeps_ties_in_index_order_in_onnx_runtime(tmp_path, descending):
    """The exported graphs sort with ONNX's TopK, whose specification breaks ties by the lower index: ONNX Runtime
    must give the stable order that eager PyTorch gives, on rows full of ties, +-inf included."""
    import onnxruntime

    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 4, (16, 150), generator=generator).float() / 3
    values[:, 5], values[:, 7], values[3, 9:40] = float("inf"), float("-inf"), float("inf")
    batch, width = torch.export.Dim("batch"), torch.export.Dim("width")
    program = torch.onnx.export(_SortOrder(descending), (values[:2, :20],), dynamo=True,
                                dynamic_shapes=({0: batch, 1: width},))
    program.save(str(tmp_path / "sort.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "sort.onnx"), providers=["CPUExecutionProvider"])
    (order,) = session.run(None, {session.get_inputs()[0].name: values.numpy()})
    assert torch.equal(torch.from_numpy(order), torch.sort(values, dim=1, stable=True, descending=descending)[1])
