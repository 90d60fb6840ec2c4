"""The family registry: every ATS model family declared once.

A family is an upstream transformers model family with ATS: its config class, its base model, its other model
classes (task heads), the auto classes they register with, the special tokens ATS always keeps, what its heads
compute, and what the tools can do with it. `ats_hf/__init__.py` registers every family with transformers' Auto
classes (`register_families`); the hub tools detect a checkpoint's family here (`model_class_for`); the benchmark,
tune and model cards read it. Adding a family means its configuration and modeling files plus one entry in
`FAMILIES` (docs/architecture.md walks through it).
"""

from dataclasses import dataclass, field

import transformers
from transformers import AutoConfig, AutoModel

from .configuration_ats_clip import AtsCLIPConfig, AtsCLIPVisionConfig
from .configuration_ats_deit import AtsDeiTConfig
from .configuration_ats_dinov2 import AtsDinov2Config
from .configuration_ats_videomae import AtsVideoMAEConfig
from .configuration_ats_vit import AtsViTConfig
from .configuration_ats_vivit import AtsVivitConfig
from .modeling_ats_clip import (
    AtsCLIPForImageClassification,
    AtsCLIPModel,
    AtsCLIPVisionModel,
    AtsCLIPVisionModelWithProjection,
)
from .modeling_ats_core import AtsClassifierMixin
from .modeling_ats_deit import AtsDeiTForImageClassification, AtsDeiTForImageClassificationWithTeacher, AtsDeiTModel
from .modeling_ats_dinov2 import AtsDinov2ForImageClassification, AtsDinov2Model
from .modeling_ats_videomae import AtsVideoMAEForVideoClassification, AtsVideoMAEModel
from .modeling_ats_vit import AtsViTForImageClassification, AtsViTModel
from .modeling_ats_vivit import AtsVivitForVideoClassification, AtsVivitModel

CLASSIFY, FEATURES, ZERO_SHOT, TOME, VIDEO = "classify", "features", "zero-shot", "tome", "video"
IMAGE_CLASSIFICATION = "AutoModelForImageClassification"
VIDEO_CLASSIFICATION = "AutoModelForVideoClassification"


@dataclass(frozen=True)
class Family:
    """One ATS model family.

    Attributes:
        name: short name (`ats-hf benchmark --speed-mode` geometries and docs use it).
        title: what a model card calls the upstream model.
        config_class: the ATS config; its `model_type` and `ats_base_model_types` are the checkpoints it reads.
        base_model: the ATS base model (AutoModel).
        models: every ATS model class of the family, the base model first.
        auto_models: auto class name -> the classes it builds, the default first (transformers picks the one a
            checkpoint's `architectures` names).
        special_tokens: the tokens before the patches that ATS always keeps and never scores.
        head: what the task head computes.
        capabilities: what the tools support: CLASSIFY (image classification), FEATURES (embeddings), ZERO_SHOT,
            TOME (the Token Merging baseline: `ats_hf.tome`, on every model class of the family); VIDEO: the inputs
            are videos, (B, T, C, H, W), and the classifier classifies videos (`video-classification`), which the
            image tools (benchmark, tune, calibrate, visualize) do not take.
        aliases: more upstream architecture names the family's classes read (beyond each class's upstream parent).
        classifier_family: the family whose image classifier reads this family's checkpoints, when it has none of
            its own (CLIP's image-text model: the vision tower's classifier), for fine-tuning a new head.
    """

    name: str
    title: str
    config_class: type
    base_model: type
    models: tuple[type, ...]
    auto_models: dict[str, tuple[type, ...]]
    special_tokens: str
    head: str
    capabilities: frozenset[str]
    aliases: dict[str, type] = field(default_factory=dict)
    classifier_family: str | None = None

    @property
    def model_types(self) -> tuple[str, ...]:
        """The checkpoint `model_type`s the family reads: its own and its upstream ones."""
        return (self.config_class.model_type, *self.config_class.ats_base_model_types)

    @property
    def classifier(self) -> type | None:
        """The default classifier of the family: of images, or of videos for a video family (None if it has none)."""
        classifiers = self.auto_models.get(IMAGE_CLASSIFICATION) or self.auto_models.get(VIDEO_CLASSIFICATION)
        return classifiers[0] if classifiers else None

    @property
    def architectures(self) -> dict[str, type]:
        """Architecture name (ATS or upstream, as in a checkpoint's `architectures`) -> ATS class."""
        names = {}
        for model_class in self.models:
            names[model_class.__name__] = names[_upstream_class(model_class).__name__] = model_class
        return {**names, **self.aliases}


def _upstream_class(model_class: type) -> type:
    """The transformers class an ATS model class extends (its last base)."""
    return model_class.__bases__[-1]


FAMILIES = (
    Family(
        name="vit",
        title="ViT/DeiT",
        config_class=AtsViTConfig,
        base_model=AtsViTModel,
        models=(AtsViTModel, AtsViTForImageClassification),
        auto_models={IMAGE_CLASSIFICATION: (AtsViTForImageClassification,)},
        special_tokens="CLS",
        head="a linear layer on the final CLS token",
        capabilities=frozenset({CLASSIFY, FEATURES, TOME}),
    ),
    Family(
        name="deit",
        title="distilled DeiT",
        config_class=AtsDeiTConfig,
        base_model=AtsDeiTModel,
        models=(AtsDeiTModel, AtsDeiTForImageClassificationWithTeacher, AtsDeiTForImageClassification),
        auto_models={IMAGE_CLASSIFICATION: (AtsDeiTForImageClassificationWithTeacher, AtsDeiTForImageClassification)},
        special_tokens="CLS and the distillation token",
        head="the mean of a linear head on the final CLS token and one on the final distillation token",
        capabilities=frozenset({CLASSIFY, FEATURES, TOME}),
    ),
    Family(
        name="dinov2",
        title="DINOv2",
        config_class=AtsDinov2Config,
        base_model=AtsDinov2Model,
        models=(AtsDinov2Model, AtsDinov2ForImageClassification),
        auto_models={IMAGE_CLASSIFICATION: (AtsDinov2ForImageClassification,)},
        special_tokens="CLS and the register tokens",
        head="a linear layer on the final CLS token and the mean of the kept patch tokens",
        capabilities=frozenset({CLASSIFY, FEATURES, TOME}),
        aliases={
            "Dinov2WithRegistersModel": AtsDinov2Model,
            "Dinov2WithRegistersForImageClassification": AtsDinov2ForImageClassification,
        },
    ),
    Family(
        name="clip",
        title="CLIP vision",
        config_class=AtsCLIPVisionConfig,
        base_model=AtsCLIPVisionModel,
        models=(AtsCLIPVisionModel, AtsCLIPVisionModelWithProjection, AtsCLIPForImageClassification),
        auto_models={IMAGE_CLASSIFICATION: (AtsCLIPForImageClassification,)},
        special_tokens="CLS",
        head="a linear layer on the mean of the kept patch tokens",
        capabilities=frozenset({CLASSIFY, FEATURES, TOME}),
    ),
    Family(
        name="clip-zero-shot",
        title="CLIP",
        config_class=AtsCLIPConfig,
        base_model=AtsCLIPModel,
        models=(AtsCLIPModel,),
        auto_models={"AutoModelForZeroShotImageClassification": (AtsCLIPModel,)},
        special_tokens="CLS (of the vision tower; the text tower is CLIP's)",
        head="image-text similarity of the projected vision and text embeddings",
        capabilities=frozenset({ZERO_SHOT}),
        classifier_family="clip",
    ),
    Family(
        name="vivit",
        title="ViViT",
        config_class=AtsVivitConfig,
        base_model=AtsVivitModel,
        models=(AtsVivitModel, AtsVivitForVideoClassification),
        auto_models={VIDEO_CLASSIFICATION: (AtsVivitForVideoClassification,)},
        special_tokens="CLS",
        head="a linear layer on the final CLS token",
        capabilities=frozenset({VIDEO, TOME}),
    ),
    Family(
        name="videomae",
        title="VideoMAE",
        config_class=AtsVideoMAEConfig,
        base_model=AtsVideoMAEModel,
        models=(AtsVideoMAEModel, AtsVideoMAEForVideoClassification),
        auto_models={VIDEO_CLASSIFICATION: (AtsVideoMAEForVideoClassification,)},
        special_tokens="none (the tokens' mean query scores them)",
        head="a norm and a linear layer on the mean of the kept tokens",
        capabilities=frozenset({VIDEO, TOME}),
    ),
)


def family_named(name: str) -> Family:
    """The family called `name`; `ValueError` naming the known ones otherwise."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"family {name!r} is unknown; choose one of {', '.join(f.name for f in FAMILIES)}.")


def family_of(model_or_config) -> Family:
    """The family of an ATS model or config (an instance or a class); `ValueError` for anything else."""
    config = getattr(model_or_config, "config_class", None) or getattr(model_or_config, "config", model_or_config)
    config_class = config if isinstance(config, type) else type(config)
    for family in FAMILIES:
        if issubclass(config_class, family.config_class):
            return family
    raise ValueError(f"{getattr(config_class, '__name__', config_class)!r} belongs to no ATS family.")


def family_for_model_type(model_type: str | None) -> Family:
    """The family whose config reads checkpoints of `model_type` (its own, e.g. 'ats_vit', or an upstream one, e.g.
    'vit'; a full 'clip' checkpoint is the zero-shot family's); `ValueError` naming the supported types otherwise."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ValueError(
        f"model_type {model_type!r} is not supported; ATS reads {', '.join(repr(t) for t in supported_model_types())} "
        "(see docs/families.md)."
    )


def supported_model_types() -> tuple[str, ...]:
    return tuple(model_type for family in FAMILIES for model_type in family.model_types)


def model_class_for(config_dict: dict) -> type:
    """The ATS class that reads a checkpoint, from its config dict: the class its `architectures` names (ATS or
    upstream name; a full CLIP checkpoint's vision part is read by the CLIP vision classes too), else the family's
    default classifier (of images, or of videos), else its base model. `ValueError` for an unsupported model type."""
    model_type = config_dict.get("model_type")
    family = family_for_model_type(model_type)
    candidates = [family] + [f for f in FAMILIES if f is not family and model_type in f.model_types]
    if model_type in AtsCLIPVisionConfig.ats_composite_model_types:
        candidates.append(family_named("clip"))
    for architecture in config_dict.get("architectures") or []:
        for candidate in candidates:
            if architecture in candidate.architectures:
                return candidate.architectures[architecture]
    return family.classifier or family.base_model


def classifier_for(model_class: type) -> type | None:
    """The classifier (of images, or of videos for a video family) that reads checkpoints of `model_class` (the same
    family's default classifier, or that of `classifier_family`), for fine-tuning a new head; None when there is
    none."""
    family = family_of(model_class)
    if family.classifier is None and family.classifier_family is not None:
        family = family_named(family.classifier_family)
    return family.classifier


def is_classifier(model_class: type) -> bool:
    """Whether an ATS model class is a classifier (a head over the base model's outputs) of images, or of videos for a
    video family."""
    return issubclass(model_class, AtsClassifierMixin)


def takes_videos(model_or_config) -> bool:
    """Whether an ATS model, config or class belongs to a video family (inputs (B, T, C, H, W))."""
    return VIDEO in family_of(model_or_config).capabilities


def register_families() -> None:
    """Register every family with AutoConfig, AutoModel and its task auto classes, mark the classes so that
    `save_pretrained` writes the modeling code, and give each class the `auto_map` of its whole family (every auto
    class, with the class itself for its own), so remote-code users can load a checkpoint with any of them."""
    for family in FAMILIES:
        config_class = family.config_class
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, family.base_model, exist_ok=True)
        config_class.register_for_auto_class()
        family.base_model.register_for_auto_class("AutoModel")
        for auto_name, model_classes in family.auto_models.items():
            # A tuple makes transformers pick by the checkpoint's `architectures`; one class needs none.
            registered = model_classes if len(model_classes) > 1 else model_classes[0]
            getattr(transformers, auto_name).register(config_class, registered, exist_ok=True)
            for model_class in model_classes:
                model_class.register_for_auto_class(auto_name)
        auto_map = {"AutoConfig": _code_reference(config_class), "AutoModel": _code_reference(family.base_model)}
        auto_map.update({name: _code_reference(classes[0]) for name, classes in family.auto_models.items()})
        for model_class in family.models:
            own = {model_class._auto_class: _code_reference(model_class)} if model_class._auto_class else {}
            model_class._ats_auto_map = {**auto_map, **own}


def _code_reference(cls: type) -> str:
    """'module.ClassName' as `auto_map` names code saved beside a checkpoint."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


__all__ = [
    "CLASSIFY",
    "FAMILIES",
    "FEATURES",
    "TOME",
    "VIDEO",
    "ZERO_SHOT",
    "Family",
    "classifier_for",
    "family_for_model_type",
    "family_named",
    "family_of",
    "is_classifier",
    "model_class_for",
    "register_families",
    "supported_model_types",
    "takes_videos",
]
