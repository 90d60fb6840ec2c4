"""Per-image compute of every ATS family and method, in the papers' convention: 1 multiply-add (MAC) = 1 "FLOP".

The count follows what the ATS models actually compute (see docs/how-ats-works.md):
- ordinary layer, N tokens: q, k, v projections 3 N D^2; attention scores and weighted sum 2 N^2 D;
  output projection N D^2; MLP 2 N D I (a gated SwiGLU MLP, as in some DINOv2 models: 3 N D I).
- ATS layer, N_in tokens in and N_out out: q, k, v projections 3 N_in D^2; CLS attention row N_in D (the
  scoring overhead); attention of kept rows 2 N_out N_in D; output projection N_out D^2; MLP 2 N_out D I; with
  `ats_merge`, the key similarity of entering rows to kept patch rows N_in (N_out - S) D.
- patch embedding (num_patches C p_h p_w D; ViViT's tubelets of p_t frames: num_patches C p_t p_h p_w D) and
  classifier head (D num_labels; a head on more than the CLS feature, as DINOv2's CLS + mean, is counted at
  D num_labels too).
- Token Merging (`tome_gmacs`): every block runs q, k, v, attention and the output projection on the tokens entering
  it, the bipartite matching on the |A| |B| pairs of head-width keys (the N_in - S mergeable tokens in two alternating
  sets, about (N_in / 2)^2 pairs), and the MLP on the tokens left.
LayerNorm, softmax, GELU, sorting and other element-wise work are not counted (as in the papers).
"""

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from .ats_sampling import tome_schedule
from .configuration_ats_core import AtsSettings, num_special_tokens, patch_values
from .configuration_ats_core import num_input_tokens as input_token_count

_ITEMS = ("patch_embedding", "projections", "attention", "mlp", "ats_scoring", "ats_merging", "head")


@dataclass
class MacBreakdown:
    """Multiply-adds per image, itemised; every field is a (B,) float64 tensor."""

    patch_embedding: torch.Tensor
    projections: torch.Tensor
    attention: torch.Tensor
    mlp: torch.Tensor
    ats_scoring: torch.Tensor
    ats_merging: torch.Tensor
    head: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return sum(getattr(self, name) for name in _ITEMS)

    @property
    def gmacs(self) -> torch.Tensor:
        """(B,) total in GMACs (the papers' "GFLOPs")."""
        return self.total / 1e9


def mac_breakdown(
    config: PretrainedConfig,
    num_tokens: torch.Tensor,
    num_input_tokens: int | None = None,
    with_head: bool = True,
    settings: AtsSettings | None = None,
) -> MacBreakdown:
    """Itemised multiply-adds per image (per video for a video family: one input of the batch).

    Args:
        config: a ViT-family or ATS config (hidden_size, MLP width, patch geometry, num_channels, num_labels).
        num_tokens: (B, num_hidden_layers) tokens each layer outputs per image (`output.num_tokens`).
        num_input_tokens: tokens entering layer 0, special tokens included; defaults to the config's input size.
        with_head: count the classifier (D x num_labels); False for a base model.
        settings: the ATS settings the counts were taken with (default: the config's).
    """
    counts = num_tokens.to(torch.float64)
    batch_size, num_layers = counts.shape
    if num_layers != config.num_hidden_layers:
        raise ValueError(f"num_tokens has {num_layers} layers; the config has {config.num_hidden_layers}.")
    hidden = float(config.hidden_size)
    if num_input_tokens is None:
        num_input_tokens = input_token_count(config)
    tokens_in = torch.cat([counts.new_full((batch_size, 1), float(num_input_tokens)), counts[:, :-1]], dim=1)
    tokens_out = counts
    if settings is None:
        settings = AtsSettings.from_config(config) if hasattr(config, "ats_layers") else AtsSettings()
    ats_layers = set(settings.layers)
    is_ats = torch.tensor([i in ats_layers for i in range(num_layers)], dtype=torch.bool, device=counts.device)

    # q, k and v over the N_in rows entering a layer; the output projection over the N_out rows leaving it (the same
    # N rows in an ordinary layer).
    projections = (3 * tokens_in + tokens_out) * hidden**2
    attention = 2 * tokens_out * tokens_in * hidden
    mlp = tokens_out * mlp_macs_per_token(config)
    ats_scoring = torch.where(is_ats, tokens_in * hidden, torch.zeros_like(tokens_in))
    # ats_merge: key similarity of every entering row to every kept patch row (the special rows receive nothing).
    special = num_special_tokens(config)
    merges = is_ats & (settings.merge is not None)
    ats_merging = torch.where(merges, tokens_in * (tokens_out - special) * hidden, torch.zeros_like(tokens_in))
    num_labels = float(config.num_labels) if with_head else 0.0
    patches = float(num_input_tokens - special)
    return MacBreakdown(
        patch_embedding=torch.full((batch_size,), patches * patch_values(config) * hidden),
        projections=projections.sum(dim=1),
        attention=attention.sum(dim=1),
        mlp=mlp.sum(dim=1),
        ats_scoring=ats_scoring.sum(dim=1),
        ats_merging=ats_merging.sum(dim=1),
        head=torch.full((batch_size,), hidden * num_labels),
    )


def mlp_macs_per_token(config: PretrainedConfig) -> float:
    """Multiply-adds of one token's MLP: 2 D I (fc1, fc2), or 3 D I for a gated SwiGLU MLP (DINOv2's
    `use_swiglu_ffn`, whose width is two thirds of D * mlp_ratio rounded up to a multiple of 8)."""
    hidden = config.hidden_size
    if getattr(config, "use_swiglu_ffn", False):
        return 3.0 * hidden * ((int(int(hidden * config.mlp_ratio) * 2 / 3) + 7) // 8 * 8)
    width = getattr(config, "intermediate_size", None) or int(hidden * config.mlp_ratio)
    return 2.0 * hidden * width


def gmacs_per_image(config: PretrainedConfig, num_tokens: torch.Tensor, **kwargs) -> torch.Tensor:
    """(B,) GMACs per image (per video for a video family); arguments as in `mac_breakdown`."""
    return mac_breakdown(config, num_tokens, **kwargs).gmacs


def dense_gmacs(config: PretrainedConfig, num_input_tokens: int | None = None, with_head: bool = True) -> float:
    """GMACs of the same geometry with no token sampling."""
    if num_input_tokens is None:
        num_input_tokens = input_token_count(config)
    counts = torch.full((1, config.num_hidden_layers), num_input_tokens)
    return float(gmacs_per_image(config, counts, num_input_tokens=num_input_tokens, with_head=with_head,
                                 settings=AtsSettings())[0])


def static_gmacs(
    config: PretrainedConfig,
    num_input_tokens: int | None = None,
    with_head: bool = True,
    settings: AtsSettings | None = None,
) -> float:
    """GMACs the static mode computes per image (a capacity set): every ATS layer processes its capacity of rows,
    padding included, whatever the image keeps; with no ATS layers, the dense GMACs. `gmacs_per_image(config,
    output.num_tokens)` is the cost at the real kept counts (the papers' convention); this is what the hardware
    executes. `settings` default to the config's."""
    if num_input_tokens is None:
        num_input_tokens = input_token_count(config)
    settings = AtsSettings.from_config(config) if settings is None else settings
    if not settings.layers:
        return dense_gmacs(config, num_input_tokens, with_head)
    if settings.capacity is None:
        raise ValueError("static_gmacs needs static-mode settings (a capacity set); these are adaptive.")
    resolved = settings.resolve(num_input_tokens, num_special_tokens(config))
    capacity = {layer: rows for layer, (_, rows) in resolved.items()}
    rows, counts = num_input_tokens, []
    for layer in range(config.num_hidden_layers):
        rows = min(rows, capacity.get(layer, rows))
        counts.append(rows)
    tokens = torch.tensor([counts])
    return float(gmacs_per_image(config, tokens, num_input_tokens=num_input_tokens, with_head=with_head,
                                 settings=settings)[0])


def tome_gmacs(config: PretrainedConfig, r: int | list[int], num_input_tokens: int | None = None,
               with_head: bool = True) -> float:
    """GMACs per image of Token Merging with merge schedule `r` (see `ats_sampling.tome_schedule`) on the config's
    geometry (any family: its special tokens are never merged)."""
    hidden = config.hidden_size
    tokens = input_token_count(config) if num_input_tokens is None else num_input_tokens
    special = num_special_tokens(config)
    total = (tokens - special) * patch_values(config) * hidden
    for merged in tome_schedule(r, config.num_hidden_layers, tokens, special):
        total += 4 * tokens * hidden**2 + 2 * tokens * tokens * hidden
        if merged:  # sets A and B: the even and odd positions after the special tokens
            set_a, set_b = (tokens + 1) // 2 - (special + 1) // 2, tokens // 2 - special // 2
            total += set_a * set_b * (hidden // config.num_attention_heads)
        tokens -= merged
        total += tokens * mlp_macs_per_token(config)
    if with_head:
        total += hidden * config.num_labels
    return total / 1e9


__all__ = [
    "MacBreakdown",
    "dense_gmacs",
    "gmacs_per_image",
    "mac_breakdown",
    "mlp_macs_per_token",
    "static_gmacs",
    "tome_gmacs",
]
