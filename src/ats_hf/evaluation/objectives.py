"""What "good" means when a tool scores a method: the objective.

- accuracy: top-1 accuracy against the labels (image classifiers of every family).
- agreement: top-1 agreement with the same model without ATS: how often the method predicts what dense predicts.
  Any classifier; no labels needed.
- fidelity: mean cosine similarity of the image embedding to the dense model's (`image_embeds` of a model with a
  projection, else `pooler_output`, else the final CLS row). Feature extractors (DINOv2, CLIP vision, any base
  model); no labels needed.
- patch-fidelity: mean cosine similarity, over the patch positions, of the dense-output patch features
  (`ats_dense_output`: the last hidden state on the full token grid) to the dense model's. Feature extractors whose
  patch features are used (segmentation, retrieval, depth); no labels needed. Token Merging has no such grid.
- zero-shot: top-1 accuracy of CLIP's zero-shot classification against the labels: each image embedding is matched
  with the text embeddings of one prompt per class (`ats_hf.evaluation.zero_shot` builds the objective and the
  vision tower it scores from a `CLIPModel`).

Every objective scores each image in [0, 1] (fidelity: the cosine, in [-1, 1]) and reports 100 x the mean, so the
tools treat them alike (higher is better, points of loss, standard errors).

    objective = default_objective(model, has_labels=source.labels is not None)
"""

import dataclasses
from dataclasses import dataclass, field

import torch

from ..configuration_ats_core import num_special_tokens
from ..families import is_classifier

OBJECTIVES = ("accuracy", "agreement", "fidelity", "patch-fidelity", "zero-shot")


@dataclass(frozen=True)
class Objective:
    """One objective (see the module docstring): its `name`, and whether it needs labels or the dense outputs.
    zero-shot carries the (C, E) unit-norm text embeddings of its C class prompts (`zero_shot.zero_shot_objective`);
    patch-fidelity the number of special tokens before the patches (`for_model`)."""

    name: str
    class_embeddings: torch.Tensor | None = field(default=None, compare=False, repr=False)
    num_special: int = field(default=1, compare=False, repr=False)

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ValueError(f"objective {self.name!r} is unknown; choose one of {', '.join(OBJECTIVES)}.")

    @property
    def needs_labels(self) -> bool:
        return self.name in ("accuracy", "zero-shot")

    @property
    def needs_reference(self) -> bool:
        """Whether each image is compared with the dense model's output on it."""
        return self.name in ("agreement", "fidelity", "patch-fidelity")

    @property
    def needs_token_grid(self) -> bool:
        """Whether every method must output features on the input token grid (Token Merging cannot)."""
        return self.name == "patch-fidelity"

    def for_model(self, model) -> "Objective":
        """This objective with what it needs to know of `model` (its special tokens)."""
        return dataclasses.replace(self, num_special=num_special_tokens(model.config))

    @property
    def unit(self) -> str:
        """What the reported number is, for tables and plots."""
        return {"accuracy": "top-1 accuracy (%)", "agreement": "top-1 agreement with dense (%)",
                "fidelity": "cosine similarity to dense x 100",
                "patch-fidelity": "patch-feature cosine similarity to dense x 100",
                "zero-shot": "zero-shot top-1 accuracy (%)"}[self.name]

    @property
    def short(self) -> str:
        """Column title."""
        titles = {"accuracy": "top-1 %", "agreement": "agree. w/ dense %", "fidelity": "cos. to dense x100",
                  "patch-fidelity": "patch cos. x100", "zero-shot": "zero-shot top-1 %"}
        return titles[self.name]

    def check(self, model, has_labels: bool) -> None:
        """`ValueError` when the objective cannot score `model` on the data (e.g. accuracy without labels)."""
        kind = type(model).__name__
        if self.needs_labels and not has_labels:
            raise ValueError(f"objective {self.name!r} needs labelled data; the data has no labels (use 'agreement' "
                             "for a classifier, 'fidelity' for a feature extractor).")
        if self.name == "zero-shot":
            if self.class_embeddings is None or not hasattr(model, "visual_projection"):
                raise ValueError(f"objective 'zero-shot' scores a CLIPModel's image embeddings against its class "
                                 f"prompts; {kind} is not a CLIP vision tower with projection built by "
                                 "ats_hf.evaluation.zero_shot.zero_shot_objective.")
            return
        if self.name in ("accuracy", "agreement") and not is_classifier(type(model)):
            raise ValueError(f"objective {self.name!r} compares class predictions; {kind} has no classifier head "
                             "(use 'fidelity', which compares embeddings).")
        if self.name in ("fidelity", "patch-fidelity") and is_classifier(type(model)):
            raise ValueError(f"objective {self.name!r} compares features of a feature extractor; {kind} is a "
                             "classifier (use 'agreement' or 'accuracy').")
        if self.needs_token_grid and not model.config.ats_dense_output:
            raise ValueError("objective 'patch-fidelity' compares the patch features on the input token grid; set "
                             "model.config.ats_dense_output = True (the command line does).")

    def reference(self, output) -> torch.Tensor:
        """What each image is compared with, from the dense model's `output`: (B,) predicted classes or (B, D)
        embeddings."""
        if self.name == "patch-fidelity":
            return output.last_hidden_state[:, self.num_special :]
        return output.logits.argmax(-1) if self.name == "agreement" else image_embedding(output)

    def scores(self, output, labels: torch.Tensor | None, reference: torch.Tensor | None) -> torch.Tensor:
        """(B,) float64 score of each image on the CPU: 1.0 / 0.0 for a right / wrong top-1 (accuracy, agreement),
        the cosine similarity to `reference` (fidelity)."""
        if self.name == "fidelity":
            embedding = image_embedding(output).float()
            return torch.nn.functional.cosine_similarity(embedding, reference.float(), dim=-1).double().cpu()
        if self.name == "patch-fidelity":
            patches = output.last_hidden_state[:, self.num_special :]
            if patches.shape != reference.shape:
                raise ValueError(f"objective 'patch-fidelity' needs every method's features on the input token grid "
                                 f"{tuple(reference.shape)}; this one gives {tuple(patches.shape)} (Token Merging "
                                 "merges tokens: leave it out).")
            cosines = torch.nn.functional.cosine_similarity(patches.float(), reference.float(), dim=-1)
            return cosines.mean(dim=-1).double().cpu()
        if self.name == "zero-shot":
            embedding = torch.nn.functional.normalize(output.image_embeds.float(), dim=-1)
            predicted = (embedding @ self.class_embeddings.to(embedding.device).T).argmax(-1)
            return (predicted.cpu() == labels.cpu()).double()
        target = labels if self.name == "accuracy" else reference
        return (output.logits.argmax(-1).cpu() == target.cpu()).double()


def image_embedding(output) -> torch.Tensor:
    """(B, D) the embedding a feature extractor's `output` gives of each image: `image_embeds` (a projection),
    else `pooler_output`, else the final CLS row of `last_hidden_state`."""
    for name in ("image_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return output.last_hidden_state[:, 0]


def default_objective(model, has_labels: bool) -> Objective:
    """accuracy for a classifier on labelled data; agreement for a classifier without labels; fidelity for a
    feature extractor."""
    if is_classifier(type(model)):
        return Objective("accuracy" if has_labels else "agreement")
    return Objective("fidelity")


__all__ = ["OBJECTIVES", "Objective", "default_objective", "image_embedding"]
