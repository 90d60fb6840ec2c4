"""Token Merging (ToMe; Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023) as a baseline, written here
from the paper's description, on the same weights as ATS, for every family of the registry with ToMe (ViT, distilled
DeiT, DINOv2 with or without registers, CLIP's vision tower, and ViViT on videos).

In every block, between attention and MLP, ToMe merges `r` pairs of similar tokens (`ats_sampling.bipartite_merge`):
the tokens are split into two alternating sets A and B, each A token finds its most similar B token (cosine
similarity of the attention keys, averaged over heads), and the `r` A tokens with the most similar partners are
merged into them (size-weighted means; sizes add up). Attention is proportional: each key's logit gets `log(size)`.
The special tokens (CLS, DeiT's distillation token, DINOv2's registers) are never merged. Heads and poolers that read
CLS read it as usual; those that average patch tokens (DINOv2's and CLIP's classifiers) weigh each merged row by its
size. Every image merges the same number of tokens, so shapes are static: `TomeClassifier` compiles with
`fullgraph=True` and exports to ONNX (the stable sort becomes ONNX's TopK there, as in ATS's static mode). GMACs:
`flops.tome_gmacs`.

The block, the layer loop and the heads are the core mixins' (`ats_tome_forward` of the attention, layer and base
model; `ats_task_output` of the model), through the branches each family already names for ATS.
"""

import torch
from torch import nn
from transformers.utils import ModelOutput

from .families import TOME, family_of, is_classifier
from .modeling_ats_core import AtsBaseModelMixin

PROPORTIONAL_ATTENTION = ("eager", "sdpa")
"""Attention implementations that take proportional attention's per-key bias."""


def supports_tome(model: nn.Module) -> bool:
    """Whether `tome_forward` can run `model`: an ATS model of a family with ToMe (every image family and ViViT; not
    CLIP's image-text model)."""
    try:
        return TOME in family_of(model).capabilities
    except ValueError:
        return False


def _check_tome(model: nn.Module) -> None:
    if not supports_tome(model):
        raise ValueError(
            f"ToMe runs on the ATS models of every image family (ViT, DeiT, DINOv2, CLIP vision) and ViViT, not "
            f"{type(model).__name__}; load a transformers checkpoint with its ATS class (same weights)."
        )
    implementation = model.config._attn_implementation
    if implementation not in PROPORTIONAL_ATTENTION:
        raise ValueError(
            f"ToMe needs attn_implementation 'eager' or 'sdpa' (proportional attention adds a per-key bias), got "
            f"{implementation!r}; call model.set_attn_implementation('sdpa')."
        )


def tome_forward(model: nn.Module, pixel_values: torch.Tensor, r: int | list[int]) -> ModelOutput:
    """Run `model` with Token Merging instead of its ATS settings: `r` tokens merged in every block, or one count per
    block (`ats_sampling.tome_schedule`).

    Args:
        model: an ATS base model, image classifier or CLIP's projection model (see `supports_tome`).
        pixel_values: (B, C, H, W) images (ViViT: (B, T, C, H, W) videos).
    Returns:
        The output the model's own forward returns (`logits`, with distilled DeiT's `cls_logits` and
        `distillation_logits`; or `last_hidden_state` (B, M, D) of the merged rows after the final norm, special
        tokens first, and `pooler_output`; or `image_embeds`), with `num_tokens` (B, num_hidden_layers): the tokens
        each block outputs, special tokens included, the same for every image.
    """
    _check_tome(model)
    base_model = next(module for module in model.modules() if isinstance(module, AtsBaseModelMixin))
    return model.ats_task_output(base_model.ats_tome_forward(pixel_values, r))


class TomeClassifier(nn.Module):
    """`model` (an ATS classifier of any family with ToMe, shared, not copied) run with Token Merging as one module,
    for torch.compile and ONNX export: forward((B, C, H, W) pixel values; ViViT's (B, T, C, H, W)) -> (B, num_labels)
    logits."""

    def __init__(self, model: nn.Module, r: int | list[int]):
        super().__init__()
        _check_tome(model)  # here, not at the first call
        if not is_classifier(type(model)):
            raise ValueError(f"TomeClassifier takes an image classifier, not {type(model).__name__}.")
        self.model = model
        self.r = r

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return tome_forward(self.model, pixel_values, self.r).logits


__all__ = ["TomeClassifier", "supports_tome", "tome_forward"]
