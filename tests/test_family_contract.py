"""The contract every classifier family of the registry keeps (of images, and ViViT's of videos), checked on
transformers' own checkpoints of each (`family_cases.CASES`): without ATS it is the upstream model; batches do not
change any input's result; the static mode equals the adaptive one when everything fits; the dense grid; running on
from a dense prefix; save and load; the Auto classes and the pipeline; remote code where ats_hf cannot be imported;
GMACs against FlopCounterMode. What only one family has (its heads, special tokens, loading formats) stays in its own
test file."""

import json
import textwrap

import pytest
import torch
import transformers
from family_cases import CASES, load_ats
from hf_fixtures import run_without_ats_hf
from torch.utils.flop_counter import FlopCounterMode
from transformers import pipeline

from ats_hf import AtsSettings
from ats_hf.families import FAMILIES, family_named, family_of
from ats_hf.flops import mac_breakdown
from ats_hf.hub.checkpoint import load_ats_classifier, save_ats_checkpoint

IDS = [case.name for case in CASES]


def test_every_classifier_family_has_a_contract_case():
    classifiers = {family.name for family in FAMILIES if family.classifier is not None}
    assert classifiers == {case.family for case in CASES}


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request, tmp_path_factory):
    """(case, folder of its upstream checkpoint)."""
    return request.param, request.param.save(tmp_path_factory.mktemp(request.param.name) / "upstream")


@pytest.fixture
def batch(case):
    """Six random inputs of the case (images or videos)."""
    return case[0].inputs(6, seed=5)


def kept(output, index: int) -> list[list[int]]:
    return [row[row >= 0].tolist() for row in output.sampled_token_indices[index]]


def test_the_registry_picks_the_family_class(case):
    family_case, folder = case
    model = load_ats_classifier(folder)
    assert family_of(model) is family_named(family_case.family)
    assert type(model) in family_named(family_case.family).auto_models[family_case.auto_class]
    assert model.config.ats_num_special_tokens == family_case.num_special


def test_without_ats_layers_it_is_the_upstream_model(case, batch):
    family_case, folder = case
    upstream = family_case.upstream()
    model = load_ats(folder, layers=[])
    with torch.no_grad():
        ours, theirs = model(batch, output_hidden_states=True), upstream(batch, output_hidden_states=True)
    assert (ours.logits - theirs.logits).abs().max() <= 1e-5
    for mine, upstreams in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        assert (mine - upstreams).abs().max() <= 1e-5
    assert ours.num_tokens.eq(family_case.num_tokens).all() and ours.sampled_token_indices is None


@pytest.mark.parametrize("settings", [dict(), dict(max_tokens=0.5, layers=[0, 2]), dict(sampler="top_k", max_tokens=9)],
                         ids=["K-all", "K-half", "top-k"])
def test_a_batch_gives_every_image_what_it_gets_alone(case, batch, settings):
    model = load_ats(case[1], **settings)
    with torch.no_grad():
        together = model(batch)
        alone = [model(image[None]) for image in batch]
    if not settings:
        assert len(set(together.num_tokens[:, -1].tolist())) > 1, "the test needs images that keep different counts"
    for index, single in enumerate(alone):
        assert (together.logits[index] - single.logits[0]).abs().max() <= 1e-5
        assert torch.equal(together.num_tokens[index], single.num_tokens[0])
        assert kept(together, index) == kept(single, 0)


def test_the_static_mode_equals_the_adaptive_one_when_everything_fits(case, batch):
    model = load_ats(case[1], max_tokens=0.5)
    with torch.no_grad():
        adaptive = model(batch)
        model.set_ats(capacity=0.5)  # = K: no image can keep more
        static = model(batch)
    assert static.token_mask.shape[1] == (case[0].num_tokens + 1) // 2
    assert (static.logits - adaptive.logits).abs().max() <= 1e-5
    assert torch.equal(static.num_tokens, adaptive.num_tokens)
    assert all(kept(static, i) == kept(adaptive, i) for i in range(len(batch)))


@pytest.mark.parametrize("merge", [None, -1.0], ids=["drop", "merge"])
def test_the_dense_grid_holds_every_token_and_changes_no_prediction(case, batch, merge):
    """Under merging, heads that average patches weigh kept rows by their sizes, which the grid carries too."""
    model = load_ats(case[1], merge=merge)
    with torch.no_grad():
        packed = model(batch)
        model.config.ats_dense_output = True
        dense = model(batch, output_hidden_states=True)
    assert (dense.logits - packed.logits).abs().max() <= 1e-5
    if merge is not None:
        sizes = model.base_model(batch).token_sizes
        assert sizes.shape == dense.token_mask.shape and sizes.sum(dim=1).eq(case[0].num_tokens).all()
    assert dense.token_mask.shape == (len(batch), case[0].num_tokens) and dense.token_mask.all()
    base = model.base_model
    with torch.no_grad():
        grid = base(batch).last_hidden_state
    assert grid.shape == (len(batch), case[0].num_tokens, model.config.hidden_size)


def test_running_on_from_a_dense_prefix_equals_the_whole_pass(case, batch):
    model = load_ats(case[1], layers=[2, 3], max_tokens=0.5)
    base = model.base_model
    with torch.no_grad(), model.ats_settings_applied(AtsSettings()):
        prefix = base.run_layers(base.ats_embed(batch), None, 0, 2).hidden_states
    with torch.no_grad():
        whole, from_prefix = model(batch), model.forward_from_layer(prefix, 2)
    assert (whole.logits - from_prefix.logits).abs().max() <= 1e-5
    assert torch.equal(whole.num_tokens, from_prefix.num_tokens)
    with pytest.raises(ValueError, match=r"start_layer=3 comes after ATS layer\(s\) \[2\]"):
        model.forward_from_layer(prefix, 3)


def test_save_load_and_the_auto_class_give_the_same_model(case, batch, tmp_path):
    model = load_ats(case[1], layers=[1, 3], max_tokens=[20, 0.25], sampler="top_k")
    model.save_pretrained(tmp_path)
    loaded = getattr(transformers, case[0].auto_class).from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model) and loaded.ats_settings == model.ats_settings
    with torch.no_grad():
        assert torch.equal(loaded(batch).logits, model(batch).logits)


def test_the_pipeline_in_batches_equals_one_image_at_a_time(case, tmp_path):
    model = load_ats(case[1])
    save_ats_checkpoint(model, tmp_path / "checkpoint", load_processor(case[1]))
    classifier = pipeline(case[0].task, model=str(tmp_path / "checkpoint"))
    inputs = case[0].pipeline_inputs(tmp_path, 3)
    together = classifier(inputs, batch_size=2, top_k=2)
    alone = [classifier(one, top_k=2) for one in inputs]
    for batched, single in zip(together, alone, strict=True):
        assert [r["label"] for r in batched] == [r["label"] for r in single]
        assert [r["score"] for r in batched] == pytest.approx([r["score"] for r in single], abs=1e-6)


def load_processor(folder):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(folder)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import transformers

    checkpoint, pixels, outputs, auto_class = sys.argv[1:]
    model = getattr(transformers, auto_class).from_pretrained(checkpoint, trust_remote_code=True).eval()
    with torch.no_grad():
        result = model(pixel_values=torch.load(pixels))
    torch.save({"logits": result.logits, "num_tokens": result.num_tokens,
                "sampled_token_indices": result.sampled_token_indices}, outputs)
    print(json.dumps({"module": type(model).__module__, "ats_hf": sorted(m for m in sys.modules if "ats_hf" in m)}))
    """
)


def test_remote_code_where_ats_hf_cannot_be_imported_gives_the_same_outputs(case, batch, tmp_path):
    model = load_ats(case[1], max_tokens=0.5)
    save_ats_checkpoint(model, tmp_path / "checkpoint", load_processor(case[1]))
    torch.save(batch, tmp_path / "pixels.pt")
    run = run_without_ats_hf(REMOTE_SCRIPT, tmp_path / "checkpoint", tmp_path / "pixels.pt", tmp_path / "out.pt",
                             case[0].auto_class, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["module"].startswith("transformers_modules.") and seen["ats_hf"] == []
    remote = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        local = model(batch)
    for name in ("logits", "num_tokens", "sampled_token_indices"):
        assert torch.equal(remote[name], getattr(local, name)), name


@pytest.mark.parametrize("settings", [dict(layers=[]), dict(), dict(max_tokens=0.5, merge=-1.0)],
                         ids=["dense", "K-all", "merge"])
def test_gmacs_equal_what_flop_counter_mode_counts(case, settings):
    model = load_ats(case[1], **settings)
    model.set_attn_implementation("eager")  # FlopCounterMode does not see inside CPU sdpa kernels
    base = model.base_model
    image = case[0].inputs(1, seed=3)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        output = base(image)
    measured = counter.get_total_flops() / 2 / 1e9
    # The counter sees matrix products only: not the CLS row's scoring, an elementwise product and sum of N_in x D
    # multiply-adds per ATS layer (mac_breakdown's ats_scoring), which the count includes.
    breakdown = mac_breakdown(model.config, output.num_tokens, with_head=False)
    ours = (breakdown.total - breakdown.ats_scoring).item() / 1e9
    if settings.get("layers") != []:
        assert output.num_tokens[0, -1] < case[0].num_tokens, "the model must drop tokens for this test to mean much"
    assert ours == pytest.approx(measured, rel=1e-3)
