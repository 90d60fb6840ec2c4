"""Token Merging (ToMe; Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023) as a baseline, written here
from the paper's description, on the same transformers ViT weights as ATS.

In every block, between attention and MLP, ToMe merges `r` pairs of similar tokens (`ats_sampling.bipartite_merge`):
the tokens are split into two alternating sets A and B, each A token finds its most similar B token (cosine
similarity of the attention keys, averaged over heads), and the `r` A tokens with the most similar partners are
merged into them (size-weighted means; sizes add up). Attention is proportional: each key's logit gets `log(size)`.
CLS is never merged. Every image merges the same number of tokens, so shapes are static: `TomeClassifier` compiles
with `fullgraph=True` and exports to ONNX (the stable sort becomes ONNX's TopK there, as in ATS's static mode).
GMACs: `flops.tome_gmacs`.

Shapes: B = batch, N = tokens entering a block, D = hidden size.
"""

import torch
from torch import nn

from .ats_sampling import bipartite_merge, tome_schedule


def supports_tome(model: nn.Module) -> bool:
    """Whether `tome_forward` can run `model`: a ViT classifier (ATS-ViT or transformers' ViT); the other ATS
    families (DeiT, DINOv2, CLIP) have no ToMe path here yet."""
    return hasattr(model, "vit") and hasattr(model.vit, "layers")


def _check_tome(model: nn.Module) -> None:
    if not supports_tome(model):
        raise ValueError(f"ToMe runs on ViT classifiers here (ATS-ViT or ViTForImageClassification), not "
                         f"{type(model).__name__}.")


def tome_forward(model: nn.Module, pixel_values: torch.Tensor, r: int | list[int]) -> tuple[torch.Tensor, list[int]]:
    """Classify with Token Merging on a ViT classifier's weights (an `AtsViTForImageClassification`, any ATS
    settings ignored, or transformers' `ViTForImageClassification`).

    Returns:
        (B, num_labels) logits and the number of tokens each block outputs (the same for every image).
    """
    _check_tome(model)
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


class TomeClassifier(nn.Module):
    """`model` (a ViT classifier, shared, not copied) run with Token Merging as one module, for torch.compile and
    ONNX export: forward((B, C, H, W) pixel values) -> (B, num_labels) logits."""

    def __init__(self, model: nn.Module, r: int | list[int]):
        super().__init__()
        _check_tome(model)  # here, not at the first call
        self.model = model
        self.r = r

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return tome_forward(self.model, pixel_values, self.r)[0]


__all__ = ["TomeClassifier", "supports_tome", "tome_forward"]
