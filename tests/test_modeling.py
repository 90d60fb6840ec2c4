"""ATS-ViT forward pass: faithfulness, batch invariance, attention implementations, training, dtypes."""

import pytest
import torch
from conftest import counting_host_reads, tiny_config, tiny_model, tiny_plain_vit
from official_reference import reference_forward

from ats_hf import AtsViTModel
from ats_hf.modeling_ats_core import AtsLayerPlan, TokenState

build = tiny_model


def kept_lists(output, image_index):
    return [row[row >= 0].tolist() for row in output.sampled_token_indices[image_index]]


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_same_tokens_and_logits_as_official_reference(images, attn_implementation):
    model = build(attn_implementation)
    with torch.no_grad():
        output = model(images)
    assert output.num_tokens[:, -1].float().mean() < 40, "test needs a model that actually drops tokens"
    for i, image in enumerate(images):
        logits, kept = reference_forward(model, image)
        assert kept_lists(output, i) == kept
        torch.testing.assert_close(output.logits[i], logits, atol=1e-5, rtol=1e-5)


def test_same_tokens_as_reference_with_fractional_k(images):
    model = build(ats_max_tokens=[0.5, 20, 0.25])
    with torch.no_grad():
        output = model(images)
    for i, image in enumerate(images):
        assert kept_lists(output, i) == reference_forward(model, image)[1]
    assert output.num_tokens[:, 1].max() <= 33 and output.num_tokens[:, 2].max() <= 20
    assert output.num_tokens[:, 3].max() <= 16


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_no_ats_layers_is_plain_vit(images, attn_implementation):
    ats = build(attn_implementation, peaky=False, ats_layers=[])
    plain = tiny_plain_vit()
    plain.set_attn_implementation(attn_implementation)
    plain.load_state_dict(ats.state_dict())
    with torch.no_grad():
        ours, theirs = ats(images, output_hidden_states=True), plain(images, output_hidden_states=True)
    assert (ours.logits - theirs.logits).abs().max() <= 1e-5
    for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert ours.num_tokens.eq(65).all() and ours.sampled_token_indices is None


@pytest.mark.parametrize("batch_size", [1, 6])
def test_keeping_every_token_is_plain_vit(images, batch_size):
    """top-K at K = all keeps every row in place (the no-gather path): outputs equal plain ViT's."""
    ats = build(peaky=False, ats_sampler="top_k", ats_max_tokens=1.0)
    plain = build(peaky=False, ats_layers=[])
    plain.load_state_dict(ats.state_dict())
    batch = images[:batch_size]
    with torch.no_grad():
        ours, theirs = ats(batch, output_hidden_states=True), plain(batch, output_hidden_states=True)
    assert (ours.logits - theirs.logits).abs().max() <= 1e-5
    for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert ours.num_tokens.eq(65).all() and ours.token_mask.all()
    assert ours.sampled_token_indices.tolist() == [[list(range(64))] * 3] * batch_size


def test_ats_layer_rows_equal_plain_layer_rows():
    model = build("eager", ats_layers=[0])
    layer = model.vit.layers[0]
    hidden = torch.randn(4, 65, 32)
    state = TokenState.initial(model.config, hidden, None)
    with torch.no_grad():
        plain_rows, plain_state = layer(hidden, state)
        kept_out, kept_state = layer(hidden, state, AtsLayerPlan(max_tokens=30))
    assert plain_state is state and kept_out.shape[1] < 65 and kept_state.padding is not None
    expected = plain_rows.gather(1, kept_state.positions[..., None].expand(-1, -1, 32))
    real = kept_state.token_mask
    torch.testing.assert_close(kept_out[real], expected[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_batch_invariance(images, attn_implementation):
    model = build(attn_implementation)
    with torch.no_grad():
        batch = model(images)
        counts = batch.num_tokens[:, -1]
        assert counts.unique().numel() > 1, "test needs images that keep different counts"
        for i in range(len(images)):
            alone = model(images[i : i + 1])
            assert kept_lists(alone, 0) == kept_lists(batch, i)
            assert torch.equal(alone.num_tokens[0], batch.num_tokens[i])
            torch.testing.assert_close(alone.logits[0], batch.logits[i], atol=1e-5, rtol=1e-5)
        reordered = model(images.flip(0))
    assert torch.equal(reordered.num_tokens.flip(0), batch.num_tokens)
    torch.testing.assert_close(reordered.logits.flip(0), batch.logits, atol=1e-5, rtol=1e-5)


def test_padding_rows_do_not_touch_real_rows(images):
    model = build("sdpa")
    with torch.no_grad():
        output = model.vit(images)
    mask = output.token_mask
    assert not mask.all(), "test needs a padded batch"
    for i in range(len(images)):
        with torch.no_grad():
            alone = model.vit(images[i : i + 1])
        n = int(mask[i].sum())
        assert alone.last_hidden_state.shape[1] == n
        torch.testing.assert_close(output.last_hidden_state[i, :n], alone.last_hidden_state[0], atol=1e-5, rtol=1e-5)
        assert int(output.num_tokens[i, -1]) == n


def test_eager_and_sdpa_agree(images):
    eager = build("eager")
    sdpa = build("sdpa")
    sdpa.load_state_dict(eager.state_dict())
    with torch.no_grad():
        a, b = eager(images), sdpa(images)
    assert torch.equal(a.sampled_token_indices, b.sampled_token_indices)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)


def test_outputs_are_consistent(images):
    model = build("eager")
    with torch.no_grad():
        output = model(images, output_hidden_states=True, output_attentions=True)
    config = model.config
    assert output.num_tokens.shape == (6, config.num_hidden_layers)
    assert output.sampled_token_indices.shape[:2] == (6, len(config.ats_layers))
    assert len(output.hidden_states) == config.num_hidden_layers + 1
    assert len(output.attentions) == config.num_hidden_layers
    all_indices = output.sampled_token_indices
    assert all_indices.shape[2] == int(output.num_tokens[:, config.ats_layers[0]].max()) - 1  # the widest layer
    previous = [set(range(64))] * 6
    for layer_index, indices in zip(config.ats_layers, all_indices.unbind(1), strict=True):
        counts = output.num_tokens[:, layer_index]
        width = int(counts.max()) - 1
        assert (indices[:, width:] == -1).all(), "beyond this layer's widest image: padding only"
        indices = indices[:, :width]
        assert torch.equal((indices >= 0).sum(1) + 1, counts)
        # Attentions of an ATS layer: kept query rows against all current keys.
        assert output.attentions[layer_index].shape[2] == width + 1
        assert output.hidden_states[layer_index + 1].shape[1] == width + 1
        current = [indices[i][indices[i] >= 0].tolist() for i in range(6)]
        assert all(row == sorted(row) for row in current)
        assert all(set(row) <= earlier for row, earlier in zip(current, previous, strict=True)), "a subset of before"
        previous = [set(row) for row in current]
    assert torch.equal(output.token_mask.sum(1), output.num_tokens[:, -1])


def test_return_dict_false(images):
    model = build()
    with torch.no_grad():
        as_tuple = model(images, return_dict=False)
        as_output = model(images)
    torch.testing.assert_close(as_tuple[0], as_output.logits)


@pytest.mark.parametrize("sampler", ["top_k", "random"])
def test_baseline_samplers_keep_fixed_counts(images, sampler):
    model = build(ats_sampler=sampler, ats_max_tokens=[40, 20, 10])
    with torch.no_grad():
        output = model(images)
    assert output.num_tokens[:, 1:].tolist() == [[40, 20, 10]] * 6


def test_user_attention_mask_tokens_are_never_kept(images):
    model = build(ats_layers=[1, 2, 3])
    mask = torch.ones(6, 65, dtype=torch.long)
    mask[:, 1:20] = 0
    mask[2, 30:60] = 0
    with torch.no_grad():
        output = model(images, attention_mask=mask)
    assert torch.equal(output.num_tokens[:, 0], mask.sum(1))
    for i in range(6):
        masked_patches = set((mask[i, 1:] == 0).nonzero().flatten().tolist())
        for indices in output.sampled_token_indices.unbind(1):
            assert not masked_patches & set(indices[i].tolist())
    with pytest.raises(ValueError, match="2-D mask of shape"):
        model(images, attention_mask=mask[:, 1:])


def test_interpolate_pos_encoding_follows_input_length():
    model = build(ats_max_tokens=[None, 0.5, None])
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        output = model(images, interpolate_pos_encoding=True)
    assert output.num_tokens[:, 0].tolist() == [145, 145]
    assert output.num_tokens[:, 2].max() <= 73  # 0.5 of 145, rounded half up
    for i in range(2):
        assert kept_lists(output, i) == reference_forward_interpolated(model, images[i])


def reference_forward_interpolated(model, image):
    embeddings = model.vit.embeddings
    original = embeddings.forward
    embeddings.forward = lambda pixel_values, **kw: original(pixel_values, interpolate_pos_encoding=True)
    try:
        return reference_forward(model, image)[1]
    finally:
        embeddings.forward = original


def test_training_selection_ignores_dropout_and_gradients_flow(images):
    # Scores use the attention probabilities before dropout: with the same layer input, an ATS layer keeps the
    # same tokens in training as in evaluation, whatever the dropout draws (layer 0's input has no dropout).
    model = build(ats_layers=[0, 2, 3], attention_probs_dropout_prob=0.3)
    with torch.no_grad():
        eval_output = model(images)
    model.train()
    first = model(images, labels=torch.arange(6) % 5)
    second = model(images)
    assert torch.equal(first.sampled_token_indices[:, 0], eval_output.sampled_token_indices[:, 0])
    assert torch.equal(second.sampled_token_indices[:, 0], eval_output.sampled_token_indices[:, 0])
    assert not torch.allclose(first.logits, second.logits), "dropout should be active"
    first.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


MODES = {"adaptive": dict(ats_layers=[1, 3]), "static": dict(ats_capacity=16),
         "static-merging": dict(ats_capacity=16, ats_merge=-1.0)}


@pytest.mark.parametrize("settings", MODES.values(), ids=MODES.keys())
def test_gradient_checkpointing_matches(images, settings):
    labels = torch.arange(6) % 5
    model = build(**settings)
    model.train()
    model(images, labels=labels).loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in expected.values())
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(images, labels=labels).loss.backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("settings", MODES.values(), ids=MODES.keys())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_never_nan(images, dtype, settings):
    model = build(**settings).to(dtype)
    with torch.no_grad():
        output = model(images.to(dtype))
        reference = build(**settings)(images)
    assert torch.isfinite(output.logits.float()).all()
    assert output.num_tokens[:, -1].max() < 65
    # Selection uses float32 scores, so low precision keeps about as many tokens as float32.
    assert (output.num_tokens.float().mean() - reference.num_tokens.float().mean()).abs() < 4


def test_base_model_outputs(images):
    model = AtsViTModel(tiny_config()).eval()
    with torch.no_grad():
        output = model(images)
    assert output.pooler_output.shape == (6, 32)
    assert output.last_hidden_state.shape[1] == output.token_mask.shape[1]


def test_at_most_one_host_read_per_ats_layer(images, monkeypatch):
    model = build("sdpa")
    mask = torch.ones(6, 65, dtype=torch.long)
    mask[0, 5:9] = 0
    with torch.no_grad(), counting_host_reads(monkeypatch) as reads:
        output = model(images, attention_mask=mask)
    assert not output.token_mask.all(), "test needs a padded batch"
    # One read per ATS layer (the kept counts) plus one for the user's mask.
    assert len(reads) <= len(model.config.ats_layers) + 1, reads


@pytest.mark.slow
def test_flex_attention_agrees(images):
    """flex_attention compiles on first use (about a minute on 2 CPU cores)."""
    model = build("sdpa")
    with torch.no_grad():
        expected = model(images)
        model.set_attn_implementation("flex_attention")
        output = model(images)
    assert not output.token_mask.all(), "test needs a padded batch"
    assert torch.equal(output.sampled_token_indices, expected.sampled_token_indices)
    torch.testing.assert_close(output.logits, expected.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_user_mask_matches_plain_vit_on_real_rows(images, attn_implementation):
    ats = build(attn_implementation, ats_layers=[])
    plain = tiny_plain_vit()
    plain.set_attn_implementation(attn_implementation)
    plain.load_state_dict(ats.state_dict())
    mask = torch.ones(6, 65, dtype=torch.long)
    mask[1, 3:40] = 0
    mask[4, 50:] = 0
    with torch.no_grad():
        ours = ats(images, attention_mask=mask, output_hidden_states=True)
        theirs = plain(images, attention_mask=mask, output_hidden_states=True)
    real = mask.bool()
    for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(ours.num_tokens[:, 0], mask.sum(1))


def test_a_masked_cls_token_is_a_clear_error(images):
    model = build()
    mask = torch.ones(6, 65, dtype=torch.long)
    mask[3] = 0  # an all-zero row
    with pytest.raises(ValueError, match=r"masks the CLS token \(position 0\) of image\(s\) \[3\]"):
        model(images, attention_mask=mask)
    mask[3], mask[1, 0] = 1, 0
    with pytest.raises(ValueError, match=r"image\(s\) \[1\]; every image needs its CLS token"):
        model(images, attention_mask=mask)


@pytest.mark.parametrize("sampler", ["inverse_transform", "top_k"])
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_an_image_with_non_finite_pixels_keeps_every_token(images, sampler, bad_value):
    model = build(ats_sampler=sampler, ats_max_tokens=0.5 if sampler == "top_k" else None)
    broken = images.clone()
    broken[2, 0, 5, 5] = bad_value
    with torch.no_grad():
        output, clean = model(broken), model(images)
    assert output.num_tokens[2].eq(65).all(), "an unscorable image keeps all its tokens (and counts as dense)"
    assert output.sampled_token_indices[2].tolist() == [list(range(64))] * 3
    others = [0, 1, 3, 4, 5]
    assert torch.equal(output.num_tokens[others], clean.num_tokens[others])
    torch.testing.assert_close(output.logits[others], clean.logits[others], atol=1e-5, rtol=1e-5)


def test_outputs_equal_as_tuple_and_as_dict_with_integer_token_mask(images):
    model = build("eager")
    with torch.no_grad():
        as_dict = model(images, output_hidden_states=True, output_attentions=True)
        as_tuple = model(images, output_hidden_states=True, output_attentions=True, return_dict=False)
    assert as_dict.token_mask.dtype == torch.long and set(as_dict.token_mask.unique().tolist()) == {0, 1}
    assert len(as_tuple) == len(as_dict.to_tuple())
    for key, from_tuple in zip(as_dict.keys(), as_tuple, strict=True):
        from_dict = as_dict[key]
        for a, b in zip(*(x if isinstance(x, tuple) else (x,) for x in (from_dict, from_tuple)), strict=True):
            assert a.dtype == b.dtype and torch.allclose(a, b, atol=1e-6), key


def test_running_from_a_later_layer_reuses_a_dense_prefix(images):
    model = build(ats_layers=[2, 3])
    with torch.no_grad():
        expected = model.vit(images)
        hidden = model.vit.embeddings(images)
        state = TokenState.initial(model.config, hidden, None)
        for layer in model.vit.layers[:2]:
            hidden, state = layer(hidden, state)
        hidden, _, num_tokens, sampled, _ = model.vit.run_layers(hidden, start_layer=2)
    torch.testing.assert_close(model.vit.layernorm(hidden), expected.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert torch.equal(num_tokens, expected.num_tokens) and torch.equal(sampled, expected.sampled_token_indices)
    with pytest.raises(ValueError, match=r"start_layer=3 comes after ATS layer\(s\) \[2\]"):
        model.vit.run_layers(hidden, start_layer=3)
    for start, end in ((2, 2), (0, 5), (-1, 2), (4, None)):  # no layer, or beyond the 4 layers
        with pytest.raises(ValueError, match=rf"start_layer={start}, end_layer={end} run no layer .* <= 4"):
            model.vit.run_layers(hidden, start_layer=start, end_layer=end)


def test_an_ats_class_given_its_upstream_config_names_the_ats_config():
    """Building an ATS model from the upstream config (not the ATS one) is a `TypeError` saying which config to use,
    for every family's classifier."""
    from ats_hf.families import FAMILIES

    for family in FAMILIES:
        if family.classifier is None:
            continue
        ats_config = family.classifier.config_class
        upstream = next(base for base in ats_config.__mro__[1:] if base.__module__.startswith("transformers.models"))
        message = rf"takes an ATS config \({ats_config.__name__}\), got a {upstream.__name__}"
        with pytest.raises(TypeError, match=message):
            family.classifier(upstream())
