"""Token Merging (ToMe; Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023) as a baseline for the
benchmark, written here from the paper's description, on the same transformers ViT weights as ATS.

In every block, between attention and MLP, ToMe merges `r` pairs of similar tokens: the tokens are split into two
alternating sets A and B, each A token finds its most similar B token (cosine similarity of the attention keys,
averaged over heads), and the `r` A tokens with the most similar partners are merged into them (size-weighted
means; sizes add up). Attention is proportional: each key's logit gets `log(size)`. CLS is never merged. Every
image merges the same number of tokens, so shapes are static.

Shapes: B = batch, N = tokens entering a block, D = hidden size.
"""

import torch
from torch import nn

from .configuration_ats_vit import num_input_tokens, patch_shape


def tome_schedule(r: int | list[int], num_layers: int, num_tokens: int) -> list[int]:
    """Tokens merged in each block: `r` in every block (each capped at half of the non-CLS tokens present), or
    one value per block. Raises `ValueError` for a negative r or a list of the wrong length."""
    values = list(r) if isinstance(r, (list, tuple)) else [r] * num_layers
    if len(values) != num_layers or any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in values):
        raise ValueError(f"ToMe r={r!r}: give an int >= 0, or one int >= 0 per block ({num_layers} blocks).")
    schedule = []
    for value in values:
        merged = min(value, (num_tokens - 1) // 2)
        schedule.append(merged)
        num_tokens -= merged
    return schedule


def bipartite_merge(
    hidden_states: torch.Tensor, sizes: torch.Tensor, keys: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge `r` tokens of set A (even positions, CLS first and protected) into their most similar token of set B
    (odd positions).

    Args:
        hidden_states: (B, N, D); sizes: (B, N) float32; keys: (B, N, Dk) the similarity metric.
        r: tokens to remove, at most (N - 1) // 2.
    Returns:
        (B, N - r, D) hidden states and (B, N - r) sizes: the unmerged A tokens (CLS first, in their order), then the
        B tokens with what they absorbed.
    """
    if r == 0:
        return hidden_states, sizes
    metric = torch.nn.functional.normalize(keys.float(), dim=-1)
    metric_a, metric_b = metric[:, ::2], metric[:, 1::2]
    similarity = metric_a @ metric_b.transpose(1, 2)  # (B, Na, Nb)
    similarity[:, 0] = float("-inf")  # CLS is never merged
    best, partner = similarity.max(dim=-1)  # (B, Na)
    order = best.argsort(dim=-1, descending=True, stable=True)
    merged_a, kept_a = order[:, :r], order[:, r:].sort(dim=-1).values  # kept A tokens keep their order (CLS first)

    width = hidden_states.shape[-1]
    weighted = hidden_states.float() * sizes[..., None]
    weighted_a, weighted_b = weighted[:, ::2], weighted[:, 1::2]
    sizes_a, sizes_b = sizes[:, ::2], sizes[:, 1::2]
    target = partner.gather(1, merged_a)
    sum_b = weighted_b.scatter_add(1, target[..., None].expand(-1, -1, width),
                                   weighted_a.gather(1, merged_a[..., None].expand(-1, -1, width)))
    size_b = sizes_b.scatter_add(1, target, sizes_a.gather(1, merged_a))
    size_a = sizes_a.gather(1, kept_a)
    sum_a = weighted_a.gather(1, kept_a[..., None].expand(-1, -1, width))
    new_sizes = torch.cat([size_a, size_b], dim=1)
    merged = torch.cat([sum_a, sum_b], dim=1) / new_sizes[..., None]
    return merged.to(hidden_states.dtype), new_sizes


@torch.no_grad()
def supports_tome(model: nn.Module) -> bool:
    """Whether `tome_forward` can run `model`: a ViT classifier (ATS-ViT or transformers' ViT); the other ATS
    families (DeiT, DINOv2, CLIP) have no ToMe path here yet."""
    return hasattr(model, "vit") and hasattr(model.vit, "layers")


def tome_forward(model: nn.Module, pixel_values: torch.Tensor, r: int | list[int]) -> tuple[torch.Tensor, list[int]]:
    """Classify with Token Merging on a ViT classifier's weights (an `AtsViTForImageClassification`, any ATS
    settings ignored, or transformers' `ViTForImageClassification`).

    Returns:
        (B, num_labels) logits and the number of tokens each block outputs (the same for every image).
    """
    if not supports_tome(model):
        raise ValueError(f"ToMe runs on ViT classifiers here (ATS-ViT or ViTForImageClassification), not "
                         f"{type(model).__name__}.")
    vit = model.vit
    hidden_states = vit.embeddings(pixel_values.to(vit.embeddings.patch_embeddings.projection.weight.dtype))
    batch_size, num_tokens, _ = hidden_states.shape
    schedule = tome_schedule(r, len(vit.layers), num_tokens)
    sizes = hidden_states.new_ones(batch_size, num_tokens, dtype=torch.float32)
    counts = []
    for layer, merged in zip(vit.layers, schedule, strict=True):
        attention = layer.attention
        normed = layer.layernorm_before(hidden_states)
        queries, keys, values = (
            projection(normed).view(batch_size, normed.shape[1], -1, attention.head_dim).transpose(1, 2)
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj)
        )
        bias = sizes.log().to(queries.dtype)[:, None, None, :]  # proportional attention
        attended = torch.nn.functional.scaled_dot_product_attention(
            queries, keys, values, attn_mask=bias, scale=attention.scaling
        )
        hidden_states = hidden_states + attention.o_proj(attended.transpose(1, 2).reshape(*normed.shape))
        head_mean_keys = keys.mean(dim=1)  # (B, N, head_dim): the paper's metric, keys averaged over heads
        hidden_states, sizes = bipartite_merge(hidden_states, sizes, head_mean_keys, merged)
        hidden_states = hidden_states + layer.mlp(layer.layernorm_after(hidden_states))
        counts.append(hidden_states.shape[1])
    logits = model.classifier(vit.layernorm(hidden_states)[:, 0])
    return logits, counts


def tome_gmacs(config, r: int | list[int], image_size=None, with_head: bool = True) -> float:
    """GMACs per image of ToMe with merge schedule `r` (1 MAC = 1 "FLOP", as in the papers): every block runs q, k, v,
    attention and the output projection on the N_in tokens entering it, the matching on (N_in / 2)^2 pairs, and
    the MLP on the N_in - r tokens left."""
    hidden, intermediate = config.hidden_size, config.intermediate_size
    tokens = num_input_tokens(config, image_size)
    patches = tokens - 1
    patch_h, patch_w = patch_shape(config)
    total = patches * config.num_channels * patch_h * patch_w * hidden
    for merged in tome_schedule(r, config.num_hidden_layers, tokens):
        total += 4 * tokens * hidden**2 + 2 * tokens * tokens * hidden
        if merged:
            total += ((tokens + 1) // 2) * (tokens // 2) * (hidden // config.num_attention_heads)
        tokens -= merged
        total += 2 * tokens * hidden * intermediate
    if with_head:
        total += hidden * config.num_labels
    return total / 1e9


__all__ = ["bipartite_merge", "tome_forward", "tome_gmacs", "tome_schedule"]
