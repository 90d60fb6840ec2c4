"""`ats_dense_output`: the last hidden state on the full input token grid, each dropped token carrying its value
from the last layer that computed it."""

import pytest
import torch
from conftest import tiny_model
from PIL import Image
from transformers import ViTImageProcessorPil, pipeline

NUM_TOKENS = 65  # tiny geometry: 8 x 8 patches + CLS


@pytest.mark.parametrize("batch_size", [1, 5])
def test_kept_tokens_match_the_packed_output_and_dropped_ones_their_last_computed_value(images, batch_size):
    packed_model = tiny_model(ats_layers=[1, 3], ats_max_tokens=[0.5, 0.3])
    dense_model = tiny_model(ats_layers=[1, 3], ats_max_tokens=[0.5, 0.3], ats_dense_output=True)
    pixels = images[:batch_size]
    with torch.no_grad():
        packed = packed_model.vit(pixels, output_hidden_states=True)
        dense = dense_model.vit(pixels)
    layer_outputs = packed.hidden_states  # [i] is layer i-1's output rows
    assert dense.last_hidden_state.shape == (batch_size, NUM_TOKENS, 32)
    assert torch.equal(dense.token_mask, torch.ones(batch_size, NUM_TOKENS, dtype=torch.long))
    assert torch.equal(dense.num_tokens, packed.num_tokens)
    assert torch.equal(dense.sampled_token_indices, packed.sampled_token_indices)
    layernorm = dense_model.vit.layernorm
    for image in range(batch_size):
        kept_last = packed.sampled_token_indices[image, 1]
        kept_last = kept_last[kept_last >= 0]
        kept_first = packed.sampled_token_indices[image, 0]
        kept_first = kept_first[kept_first >= 0]
        real = packed.token_mask[image].bool()
        # CLS and the tokens the last ATS layer kept: exactly the packed rows, in grid order.
        grid_rows = torch.cat([torch.zeros(1, dtype=torch.long), 1 + kept_last])
        torch.testing.assert_close(dense.last_hidden_state[image, grid_rows], packed.last_hidden_state[image, real])
        # Tokens layer 1 dropped: their value is layer 0's output (hidden_states[1]), then the final norm.
        dropped_first = sorted(set(range(64)) - set(kept_first.tolist()))
        assert dropped_first, "the test needs tokens dropped in layer 1"
        expected = layernorm(layer_outputs[1][image, 1 + torch.tensor(dropped_first)])
        torch.testing.assert_close(dense.last_hidden_state[image, 1 + torch.tensor(dropped_first)], expected)
        # Tokens kept by layer 1 but dropped by layer 3: layer 2's output at their packed row.
        dropped_later = sorted(set(kept_first.tolist()) - set(kept_last.tolist()))
        assert dropped_later, "the test needs tokens dropped in layer 3"
        rows_after_layer_1 = {position: row + 1 for row, position in enumerate(kept_first.tolist())}
        source_rows = torch.tensor([rows_after_layer_1[p] for p in dropped_later])
        expected = layernorm(layer_outputs[3][image, source_rows])
        torch.testing.assert_close(dense.last_hidden_state[image, 1 + torch.tensor(dropped_later)], expected)


def test_without_ats_layers_the_dense_grid_is_the_ordinary_output(images):
    plain = tiny_model(ats_layers=[])
    dense = tiny_model(ats_layers=[], ats_dense_output=True)
    with torch.no_grad():
        assert torch.equal(dense.vit(images).last_hidden_state, plain.vit(images).last_hidden_state)


@pytest.mark.parametrize("capacity", [None, 0.3])
def test_dense_output_is_batch_invariant_and_the_logits_are_unchanged(images, capacity):
    packed = tiny_model(ats_capacity=capacity)
    dense = tiny_model(ats_capacity=capacity, ats_dense_output=True)
    with torch.no_grad():
        batched = dense.vit(images).last_hidden_state
        single = torch.cat([dense.vit(images[i : i + 1]).last_hidden_state for i in range(len(images))])
        torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dense(images).logits, packed(images).logits)


def test_dense_output_with_merging_and_gradients(images):
    model = tiny_model(ats_merge=0.0, ats_dense_output=True).train()
    output = model.vit(images)
    output.last_hidden_state.sum().backward()
    assert output.last_hidden_state.shape == (6, NUM_TOKENS, 32)
    assert model.vit.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def test_image_feature_extraction_pipeline_gives_the_full_grid(tmp_path):
    model = tiny_model(ats_dense_output=True)
    model.save_pretrained(tmp_path)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    image = Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy())
    features = extractor([image, image, image], batch_size=2)
    assert [torch.tensor(f).shape for f in features] == [torch.Size([1, NUM_TOKENS, 32])] * 3
