"""Token Merging (the ToMe baseline) on every model of every family (images, and ViViT's videos): r = 0 is the model,
special tokens never merge, the schedule, batches, size-weighted pooling, GMACs, one compiled graph."""

from itertools import accumulate

import pytest
import torch
from conftest import tiny_config, tiny_model, tiny_plain_vit
from family_cases import CASES
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ats_hf import AtsCLIPConfig, AtsCLIPModel, AtsViTForImageClassification
from ats_hf.ats_sampling import bipartite_merge, tome_schedule
from ats_hf.evaluation import tensor_images
from ats_hf.families import FAMILIES, TOME, family_named
from ats_hf.flops import dense_gmacs, tome_gmacs
from ats_hf.modeling_ats_core import AtsModelOutput, mean_of_kept_patches
from ats_hf.tome import TomeClassifier, supports_tome, tome_forward

CASE_IDS = [case.name for case in CASES]
KINDS = [(case, model_class) for case in CASES for model_class in family_named(case.family).models]
KIND_IDS = [f"{case.name}-{model_class.__name__}" for case, model_class in KINDS]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """case -> the folder of its upstream checkpoint, saved once per module."""
    folders = {}

    def folder(case):
        if case.name not in folders:
            folders[case.name] = case.save(tmp_path_factory.mktemp(case.name))
        return folders[case.name]

    return folder


def load(model_class, folder, attn_implementation: str = "sdpa"):
    """`model_class` on a family case's upstream classifier checkpoint, in eval mode; a head the checkpoint lacks
    (a base model's pooler, CLIP's visual projection) is initialised, seeded."""
    torch.manual_seed(0)
    model = model_class.from_pretrained(folder, output_loading_info=True)[0].eval()
    model.set_attn_implementation(attn_implementation)
    return model


def float_fields(output) -> dict[str, torch.Tensor]:
    return {name: value for name, value in output.items() if torch.is_tensor(value) and value.is_floating_point()}


def test_every_family_with_a_classifier_has_tome():
    assert {family.name for family in FAMILIES if TOME in family.capabilities} == {case.family for case in CASES}


@pytest.mark.parametrize("case, model_class", KINDS, ids=KIND_IDS)
def test_r_zero_is_the_dense_model_whatever_its_ats_settings(saved, case, model_class):
    images = case.inputs(6, seed=1)  # images or videos
    model = load(model_class, saved(case))
    model.set_ats(layers=[1, 2], max_tokens=0.5)  # ToMe ignores them and runs every token
    assert supports_tome(model)
    with torch.no_grad():
        merged = tome_forward(model, images, 0)
        model.set_ats(layers=[])
        dense = model(images)
    assert type(merged) is type(dense)
    expected = float_fields(dense)
    assert expected and set(expected) <= set(merged.keys())  # logits (and DeiT's two heads), pooler, image_embeds
    for name, value in expected.items():
        assert (merged[name] - value).abs().max() <= 1e-5, name
    assert merged.num_tokens.dtype == torch.long
    assert merged.num_tokens.tolist() == [[case.num_tokens] * 4] * len(images)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_special_tokens_are_never_merged(saved, case):
    images = case.inputs(6, seed=1)
    model = load(family_named(case.family).base_model, saved(case))
    num_special, num_tokens = case.num_special, case.num_tokens
    layer = model.ats_encoder_layers[0]
    most = (num_tokens - num_special) // 2
    with torch.no_grad():
        embedded = model.ats_embed(images)
        sizes = torch.ones(embedded.shape[:2])
        merged_rows, merged_sizes = layer.ats_tome_forward(embedded, sizes, most)
        dense_rows, _ = layer.ats_tome_forward(embedded, sizes, 0)
        output = tome_forward(model, images, 8)
    # A block attends before it merges and its MLP is row-wise: the special rows come out first, alone (size 1) and
    # as the dense block gives them, however many tokens merge.
    assert merged_rows.shape[1] == num_tokens - most
    if num_special:  # (VideoMAE has none)
        assert (merged_rows[:, :num_special] - dense_rows[:, :num_special]).abs().max() <= 1e-6
    assert merged_sizes[:, :num_special].eq(1).all() and merged_sizes.sum(dim=1).eq(num_tokens).all()
    # Through the whole model: the schedule with the family's special tokens, sizes that add up to the input.
    schedule = tome_schedule(8, 4, num_tokens, num_special)
    assert output.num_tokens.tolist() == [[num_tokens - merged for merged in accumulate(schedule)]] * len(images)
    assert output.last_hidden_state.shape[1] == output.num_tokens[0, -1]
    assert output.token_sizes[:, :num_special].eq(1).all() and output.token_sizes.sum(dim=1).eq(num_tokens).all()


@pytest.mark.parametrize("case, model_class", KINDS, ids=KIND_IDS)
def test_a_batch_gives_every_image_what_it_gets_alone(saved, case, model_class):
    images = case.inputs(6, seed=1)
    model = load(model_class, saved(case))
    with torch.no_grad():
        together = tome_forward(model, images, 6)
        alone = [tome_forward(model, image[None], 6) for image in images]
    for name, value in together.items():
        torch.testing.assert_close(torch.cat([output[name] for output in alone]), value, atol=1e-5, rtol=0)


def test_mean_of_kept_patches_weighs_merged_rows_by_size():
    hidden = torch.tensor([[[9.0], [1.0], [3.0]]])  # CLS, then rows standing for 1 and 3 patches
    outputs = AtsModelOutput(last_hidden_state=hidden, token_mask=torch.ones(1, 3, dtype=torch.long),
                             token_sizes=torch.tensor([[1.0, 1.0, 3.0]]))
    assert mean_of_kept_patches(outputs, 1, False).tolist() == [[2.5]]  # (1 + 3 * 3) / 4
    outputs.token_sizes = None
    assert mean_of_kept_patches(outputs, 1, False).tolist() == [[2.0]]


AVERAGING = [c for c in CASES if c.family in ("dinov2", "clip", "videomae")]


@pytest.mark.parametrize("case", AVERAGING, ids=[c.name for c in AVERAGING])
def test_heads_that_average_patches_weigh_merged_rows_by_size(saved, case, images):
    model = load(family_named(case.family).classifier, saved(case))
    if case.videos:
        images = case.inputs(len(images), seed=2)
    with torch.no_grad():
        logits = tome_forward(model, images, 8).logits
        merged = model.base_model.ats_tome_forward(images, 8)
        patches, sizes = merged.last_hidden_state[:, case.num_special:], merged.token_sizes[:, case.num_special:, None]
        features = (patches * sizes).sum(dim=1) / sizes.sum(dim=1)
        if case.family == "dinov2":  # CLS and the mean of the patches
            features = torch.cat([merged.last_hidden_state[:, 0], features], dim=1)
        if case.family == "videomae":  # a norm on the mean of the tokens
            features = model.fc_norm(features)
        expected = model.classifier(features)
    assert sizes.max() > 1
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("deit-distilled", "dinov2-registers")],
                         ids=["deit-distilled", "dinov2-registers"])
@pytest.mark.parametrize("r", [8, [32, 0, 5, 40]], ids=["r8", "per-block"])
def test_gmacs_count_what_runs_in_families_with_more_special_tokens(saved, case, r):
    model = load(family_named(case.family).classifier, saved(case), "eager")  # eager attention: plain matmuls
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        tome_forward(model, torch.randn(1, 3, 32, 32), r)
    measured = counter.get_total_flops() / 2
    # Exact but for the head, counted at D x num_labels in every family (DINOv2's reads 2 D, DeiT has two).
    head = model.config.hidden_size * model.config.num_labels
    assert measured - tome_gmacs(model.config, r) * 1e9 == pytest.approx(head)


def test_r_zero_is_the_model_on_a_transformers_vit_checkpoint(images, tmp_path):
    plain = tiny_plain_vit()
    plain.save_pretrained(tmp_path)
    model = AtsViTForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        output = tome_forward(model, images, 0)
        torch.testing.assert_close(output.logits, plain(images).logits, atol=1e-5, rtol=1e-5)
        merged = tome_forward(model, images, 8)
    assert merged.num_tokens[0].tolist() == [57, 49, 41, 33] and merged.logits.shape == (6, 5)


def test_schedule_caps_each_block_at_half_the_patches():
    assert tome_schedule(40, 4, 65) == [32, 16, 8, 4]
    assert tome_schedule([0, 5, 5, 0], 4, 65) == [0, 5, 5, 0]
    assert tome_schedule(40, 2, 67, num_special=3) == [32, 16]
    for bad in (-1, [1, 2], 1.5):
        with pytest.raises(ValueError, match="ToMe r="):
            tome_schedule(bad, 4, 65)


def test_bipartite_merge_protects_cls_and_conserves_size():
    # Tokens 0 (CLS), 1..5; A = 2, 4 and B = 1, 3, 5. Token 2 is a copy of token 3, token 4 is unlike anything.
    keys = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.6, 0.8, 0]]])
    hidden = torch.arange(6.0).view(1, 6, 1)
    sizes = torch.tensor([[1.0, 1.0, 2.0, 1.0, 1.0, 1.0]])
    merged, new_sizes = bipartite_merge(hidden, sizes, keys, r=1)
    # CLS, then A's token 4; token 2 (size 2) joined token 3: (2 * 2 + 3) / 3.
    assert new_sizes.tolist() == [[1.0, 1.0, 1.0, 3.0, 1.0]]
    torch.testing.assert_close(merged[0, :, 0], torch.tensor([0.0, 4.0, 1.0, 7.0 / 3.0, 5.0]))
    assert new_sizes.sum() == sizes.sum()


def test_bipartite_merge_keeps_every_special_token_first():
    # Tokens 0, 1 special (DeiT's CLS and distillation token, keys like tokens 2 and 3); A = 2, 4 and B = 3, 5.
    keys = torch.tensor([[[0, 1.0], [0, 1.0], [0, 1.0], [0, 1.0], [1.0, 0], [1.0, 0]]])
    hidden = torch.arange(6.0).view(1, 6, 1)
    merged, sizes = bipartite_merge(hidden, torch.ones(1, 6), keys, r=2, num_special=2)
    assert sizes.tolist() == [[1.0, 1.0, 2.0, 2.0]]
    assert merged[0, :, 0].tolist() == [0.0, 1.0, 2.5, 4.5]  # 2 joined 3, 4 joined 5


def test_merging_is_per_image(images):
    model = tiny_model()
    with torch.no_grad():
        batch = tome_forward(model, images, 6).logits
        for i in range(len(images)):
            alone = tome_forward(model, images[i : i + 1], 6).logits
            torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=1e-5)


def test_gmacs_count_what_runs():
    config = tiny_config(ats_layers=[])
    assert tome_gmacs(config, 0) == pytest.approx(dense_gmacs(config), rel=1e-12)
    model = tiny_model("eager", ats_layers=[])
    image = torch.randn(1, 3, 32, 32)
    # The math backend of sdpa is plain matmuls, which FlopCounterMode sees (it does not see the CPU flash kernel).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        tome_forward(model, image, 8)
    measured = counter.get_total_flops() / 2 / 1e9
    assert tome_gmacs(config, 8) < dense_gmacs(config)
    assert tome_gmacs(config, 8) == pytest.approx(measured, rel=1e-9)


def test_what_tome_cannot_run_is_refused_by_name(images):
    plain = tiny_plain_vit()
    clip = AtsCLIPModel(AtsCLIPConfig(vision_config={"hidden_size": 32, "num_hidden_layers": 1,
                                                     "num_attention_heads": 4, "intermediate_size": 64,
                                                     "image_size": 32, "patch_size": 8},
                                      text_config={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                                                   "intermediate_size": 64, "vocab_size": 64}))
    for model in (plain, clip, torch.nn.Linear(2, 2)):
        assert not supports_tome(model)
        with pytest.raises(ValueError, match=f"ToMe runs on the ATS models of every image family .* not "
                                             f"{type(model).__name__}"):
            TomeClassifier(model, 1)
    with pytest.raises(ValueError, match="TomeClassifier takes an image classifier, not AtsViTModel"):
        TomeClassifier(tiny_model().vit, 1)
    model = tiny_model()
    model.set_attn_implementation("flex_attention")
    with pytest.raises(ValueError, match=r"ToMe needs attn_implementation 'eager' or 'sdpa'.*'flex_attention'"):
        tome_forward(model, images, 2)


def test_the_benchmark_runs_tome_on_another_family(saved, images):
    from ats_hf.benchmark.engine import run_benchmark

    case = next(c for c in CASES if c.name == "dinov2-registers")
    model = load(family_named(case.family).classifier, saved(case))
    model.set_ats(layers=[1])
    labels = torch.zeros(len(images), dtype=torch.long)
    result = run_benchmark(model, tensor_images(images, labels), batch_sizes=())
    (tome,) = [r for r in result.methods if r.method.kind == "tome"]
    logits = tome_forward(model, images, tome.method.r).logits
    assert tome.score == pytest.approx(100 * (logits.argmax(-1) == labels).float().mean().item())
    assert tome.gmacs_mean == pytest.approx(tome_gmacs(model.config, tome.method.r))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_tome_classifier_compiles_in_one_graph_with_the_same_logits(saved, case):
    images = case.inputs(6, seed=1)
    torch._dynamo.reset()
    module = TomeClassifier(load(family_named(case.family).classifier, saved(case)), 6).eval()
    compiled = torch.compile(module, fullgraph=True, dynamic=False, backend="eager")  # fails on any graph break
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), tome_forward(module.model, images, 6).logits, atol=1e-6, rtol=0)
