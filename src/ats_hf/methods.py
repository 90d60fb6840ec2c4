"""The ways to run a model that the tools compare: ATS settings (`AtsMethod`; no ATS layers is the dense model) and
Token Merging (`TomeMethod`, the peer baseline). Each kind knows how to run a batch and how to count its GMACs
(through `ats_hf.flops`), so the benchmark, tune and calibration never branch on the kind.

    method = AtsMethod("ats", AtsSettings(layers=(3, 4, 5), max_tokens=0.5))
    with method.applied(model):
        output = method.forward(model, pixel_values)
    gmacs = method.gmacs(model.config, output.num_tokens, num_input_tokens)
"""

import contextlib
import copy
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .configuration_ats_core import AtsSettings
from .flops import gmacs_per_image, static_gmacs, tome_gmacs
from .tome import TomeClassifier, tome_forward

SAMPLER_FAMILIES = {"inverse_transform": "ats", "top_k": "top-k", "random": "random"}


@dataclass(frozen=True)
class AtsMethod:
    """The model run with `settings` (an `AtsSettings`; no ATS layers: the dense model), under `name`."""

    name: str
    settings: AtsSettings = field(default_factory=AtsSettings)
    kind: ClassVar[str] = "ats"

    @property
    def family(self) -> str:
        """Which curve of the plots it belongs to: dense, ats, top-k or random."""
        return SAMPLER_FAMILIES[self.settings.sampler] if self.settings.layers else "dense"

    @property
    def static(self) -> bool:
        """Whether its shapes are fixed (static mode, or dense): torch.compile(fullgraph), ONNX."""
        return self.settings.static

    def applied(self, model) -> contextlib.AbstractContextManager:
        """A block in which `model` runs this method (its own settings come back afterwards)."""
        return model.ats_settings_applied(self.settings)

    def run(self, model, pixel_values: torch.Tensor) -> None:
        """One forward pass, its outputs left unread (what a timing measures; inside `applied`)."""
        model(pixel_values)

    def forward(self, model, pixel_values: torch.Tensor):
        """The model's output (logits, embeddings, `num_tokens`; inside `applied`)."""
        return model(pixel_values)

    def gmacs(self, config, num_tokens: torch.Tensor, num_input_tokens: int) -> torch.Tensor:
        """(B,) GMACs per image at the real kept tokens (the papers' convention)."""
        return gmacs_per_image(config, num_tokens, num_input_tokens=num_input_tokens, settings=self.settings)

    def executed_gmacs(self, config, num_input_tokens: int) -> float | None:
        """GMACs per image the hardware executes when that is the same for every image (static mode: its capacity
        rows; dense), else None (the adaptive mode runs the batch's largest kept count)."""
        if not self.static:
            return None
        return static_gmacs(config, num_input_tokens=num_input_tokens, settings=self.settings)

    def standalone(self, model, example: torch.Tensor) -> torch.nn.Module:
        """A copy of `model` (weights included) that runs this method by itself (for torch.compile and ONNX
        export), run once on `example`: the model fills a cache of its resolved settings on its first call, which
        would make a compiled model compile a second time on its second call."""
        twin = copy.deepcopy(model).eval()
        twin.set_ats(self.settings)
        with torch.inference_mode():
            twin(example)
        return twin

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "settings": self.settings.to_dict()}


@dataclass(frozen=True)
class TomeMethod:
    """Token Merging (Bolya et al., ICLR 2023) with `r` tokens merged per block, on the same weights (a model of any
    image family: `ats_hf.tome`); every image merges the same number, so its shapes are static."""

    name: str
    r: int
    kind: ClassVar[str] = "tome"
    family: ClassVar[str] = "tome"
    static: ClassVar[bool] = True

    def applied(self, model) -> contextlib.AbstractContextManager:
        """ToMe ignores the model's ATS settings."""
        return contextlib.nullcontext(model)

    def run(self, model, pixel_values: torch.Tensor) -> None:
        tome_forward(model, pixel_values, self.r)

    def forward(self, model, pixel_values: torch.Tensor):
        """The model's own output class (logits, embeddings, `num_tokens`) with Token Merging."""
        return tome_forward(model, pixel_values, self.r)

    def gmacs(self, config, num_tokens: torch.Tensor, num_input_tokens: int) -> torch.Tensor:
        return torch.full((len(num_tokens),), tome_gmacs(config, self.r, num_input_tokens=num_input_tokens),
                          dtype=torch.float64)

    def executed_gmacs(self, config, num_input_tokens: int) -> float:
        return tome_gmacs(config, self.r, num_input_tokens=num_input_tokens)

    def standalone(self, model, example: torch.Tensor) -> TomeClassifier:
        """A copy of `model` run with ToMe as one module (`TomeClassifier`; returns logits), for torch.compile and
        ONNX export. `example` is unused (the same signature as `AtsMethod.standalone`)."""
        return TomeClassifier(copy.deepcopy(model), self.r).eval()

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "r": self.r}


Method = AtsMethod | TomeMethod


def dense_method(name: str = "dense") -> AtsMethod:
    """The model without token sampling."""
    return AtsMethod(name)


def method_from_dict(data: dict) -> Method:
    """The inverse of `method.to_dict()` (after a JSON round trip)."""
    if data["kind"] == TomeMethod.kind:
        return TomeMethod(data["name"], data["r"])
    return AtsMethod(data["name"], AtsSettings(**data["settings"]))


__all__ = ["AtsMethod", "Method", "TomeMethod", "dense_method", "method_from_dict"]
