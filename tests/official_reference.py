"""A naive, per-image (batch size 1) ATS forward pass that follows the official implementation's arithmetic:
full N x N attention, scores from the CLS row, argmin over |y - cdf| (first minimum), de-duplication.
Written for the tests only; slow and simple on purpose."""

import torch


def official_picks(scores: torch.Tensor, max_tokens: int) -> list[int]:
    """Patch indices (into `scores`) that the official sampler keeps for one image. scores: (P,) float32."""
    scores = scores / scores.sum()
    sorted_scores, order = torch.sort(scores, stable=True)
    cdf = torch.cumsum(sorted_scores, 0)
    normalized = (cdf - cdf.min()) / (cdf.max() - cdf.min())
    points = max_tokens - 1
    start = normalized[normalized > 0].min()
    if points == 1:
        ys = torch.ones(1)
    else:
        steps = torch.arange(points, dtype=torch.float32)
        ys = start + (torch.linspace(0, 1, points) * (points - 1) - start * steps) / (points - 1)
    picks = torch.argmin((ys[:, None] - normalized[None, :]).abs(), dim=1)
    return sorted(set(order[picks].tolist()))


@torch.no_grad()
def reference_forward(model, image: torch.Tensor):
    """Logits (num_labels,) and, per ATS layer, the sorted original patch positions kept, for one image."""
    vit = model.vit
    config = model.config
    x = vit.embeddings(image[None])
    positions = list(range(x.shape[1]))
    max_tokens = config.resolve_ats_max_tokens(x.shape[1])
    kept_per_layer = []
    for index, layer in enumerate(vit.layers):
        attention = layer.attention
        n = x.shape[1]
        h = layer.layernorm_before(x)
        q, k, v = (
            projection(h).view(1, n, config.num_attention_heads, -1).transpose(1, 2)
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj)
        )
        probs = torch.softmax(q @ k.transpose(2, 3) * attention.scaling, dim=-1)
        context = (probs @ v).transpose(1, 2).reshape(1, n, -1)
        out = attention.o_proj(context) + x
        out = out + layer.mlp(layer.layernorm_after(out))
        if index in max_tokens:
            scores = probs[0, :, 0, 1:].sum(0) * attention.v_proj(h)[0, 1:].norm(dim=-1)
            rows = [0] + [p + 1 for p in official_picks(scores, max_tokens[index])]
            out = out[:, rows]
            positions = [positions[r] for r in rows]
            kept_per_layer.append(sorted(p - 1 for p in positions[1:]))
        x = out
    logits = model.classifier(vit.layernorm(x)[:, 0])[0]
    return logits, kept_per_layer
