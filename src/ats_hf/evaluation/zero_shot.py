"""CLIP zero-shot classification as an objective: an ATS `CLIPModel` is scored through its vision tower with
projection (`ats_image_embedder()`, which the evaluation loop runs like any feature extractor), and each image
embedding is matched with the text embeddings of one prompt per class, `template.format(class name)`.

    vision, objective = zero_shot_objective(clip_model, tokenizer, ["cat", "dog"], "a photo of a {}.")
    evaluate_methods(vision, methods, source, objective)   # source labels index the class names

The vision tower shares its modules and config with `clip_model`: ATS settings applied to one apply to the other, so
a tuned setting is saved with the whole CLIPModel.
"""

import torch

from .objectives import Objective

DEFAULT_TEMPLATE = "a photo of a {}."


def check_template(template: str) -> str:
    """The prompt template, which must hold exactly one `{}` for the class name."""
    if template.count("{}") != 1:
        raise ValueError(f"prompt template {template!r} must hold exactly one '{{}}' for the class name.")
    return template


@torch.inference_mode()
def class_embeddings(clip_model, tokenizer, class_names: list[str], template: str = DEFAULT_TEMPLATE) -> torch.Tensor:
    """(C, E) unit-norm text embeddings of the C prompts `template.format(name)`."""
    if not class_names:
        raise ValueError("zero-shot classification needs the dataset's class names; the data has none.")
    prompts = [check_template(template).format(name) for name in class_names]
    device = clip_model.logit_scale.device
    inputs = tokenizer(prompts, padding=True, return_tensors="pt").to(device)
    features = clip_model.get_text_features(**inputs)
    features = features if isinstance(features, torch.Tensor) else features.pooler_output
    return torch.nn.functional.normalize(features.float(), dim=-1)


def zero_shot_objective(clip_model, tokenizer, class_names: list[str],
                        template: str = DEFAULT_TEMPLATE) -> tuple[object, Objective]:
    """(the vision tower to evaluate, the zero-shot objective) for an ATS `CLIPModel` and the dataset's class
    names (label i is `class_names[i]`)."""
    embeddings = class_embeddings(clip_model, tokenizer, class_names, template)
    return clip_model.ats_image_embedder(), Objective("zero-shot", class_embeddings=embeddings)


__all__ = ["DEFAULT_TEMPLATE", "check_template", "class_embeddings", "zero_shot_objective"]
