"""Loading, saving and uploading ATS checkpoints of every family (Hub ids or local folders)."""

import os
import re
from pathlib import Path

from huggingface_hub import HfApi
from transformers import AutoConfig, PretrainedConfig

from ..modeling_ats_clip import AtsCLIPForImageClassification
from ..modeling_ats_deit import AtsDeiTForImageClassification, AtsDeiTForImageClassificationWithTeacher
from ..modeling_ats_dinov2 import AtsDinov2ForImageClassification
from ..modeling_ats_vit import AtsViTForImageClassification
from .model_card import write_model_card

# The ATS image classifier for each source `model_type` (upstream or ATS): the one place a family is detected.
CLASSIFIER_FOR_MODEL_TYPE = {
    "vit": AtsViTForImageClassification,
    "ats_vit": AtsViTForImageClassification,
    "deit": AtsDeiTForImageClassificationWithTeacher,  # the distilled checkpoints (facebook/deit-*-distilled-*)
    "ats_deit": AtsDeiTForImageClassificationWithTeacher,
    # CLIP: the vision tower of a full CLIP (CLIPModel, CLIPForImageClassification) or of a CLIPVisionModel.
    "clip": AtsCLIPForImageClassification,
    "clip_vision_model": AtsCLIPForImageClassification,
    "ats_clip": AtsCLIPForImageClassification,
    "ats_clip_vision_model": AtsCLIPForImageClassification,
    # DINOv2 with and without registers: one ATS class for both.
    "dinov2": AtsDinov2ForImageClassification,
    "dinov2_with_registers": AtsDinov2ForImageClassification,
    "ats_dinov2": AtsDinov2ForImageClassification,
}
# A family's other classifier, taken instead when the checkpoint's `config.architectures` names it (upstream or ATS
# name) and it is of the same family: DeiT's CLS-only head, whose checkpoints share model_type "deit"/"ats_deit".
CLASSIFIER_FOR_ARCHITECTURE = {
    "DeiTForImageClassification": AtsDeiTForImageClassification,
    "AtsDeiTForImageClassification": AtsDeiTForImageClassification,
}
SUPPORTED_MODEL_TYPES = tuple(CLASSIFIER_FOR_MODEL_TYPE)
UPLOAD_IGNORE = ["checkpoint-*", "_*"]
# What a Hub repo id can look like: "name" or "namespace/name" (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def is_local_path(source: str | os.PathLike) -> bool:
    """Whether `source` names a local file or folder rather than a Hub repo id: it exists, or it cannot be a Hub id
    ('./x', '/x', '~/x', 'a/b/c'), or its parent folder exists ('outputs/model' where outputs/ exists)."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.exists() or not _HUB_ID.fullmatch(text):
        return True
    return "/" in text and path.parent.is_dir()


def check_source(source: str | os.PathLike, what: str = "model") -> None:
    """Raise `FileNotFoundError` naming `what` when `source` is a local path that does not exist (so that it is not
    reported as a malformed Hub id); Hub ids pass unchecked."""
    if is_local_path(source) and not Path(os.fspath(source)).expanduser().exists():
        raise FileNotFoundError(f"{what} folder {os.fspath(source)!r} does not exist")


def ats_classifier_class(source: str | os.PathLike, **hub_kwargs) -> type:
    """The ATS image-classification class for `source`'s `model_type` (see `CLASSIFIER_FOR_MODEL_TYPE`, and
    `CLASSIFIER_FOR_ARCHITECTURE` for a family with two heads); another model type raises `ValueError` naming it and
    the supported ones."""
    config_dict, _ = PretrainedConfig.get_config_dict(source, **hub_kwargs)
    model_type = config_dict.get("model_type")
    if model_type not in CLASSIFIER_FOR_MODEL_TYPE:
        raise ValueError(
            f"{str(source)!r} is a {model_type!r} checkpoint; ATS loads model_type "
            f"{', '.join(repr(name) for name in SUPPORTED_MODEL_TYPES)} (see docs/families.md)."
        )
    default = CLASSIFIER_FOR_MODEL_TYPE[model_type]
    for architecture in config_dict.get("architectures") or []:
        chosen = CLASSIFIER_FOR_ARCHITECTURE.get(architecture)
        if chosen is not None and chosen.config_class is default.config_class:
            return chosen
    return default


def load_ats_classifier(source: str | os.PathLike, **kwargs):
    """`from_pretrained(source, **kwargs)` of the ATS image classifier of `source`'s family (Hub id or directory);
    unsupported model types raise `ValueError` naming the type, a missing local folder `FileNotFoundError`. Keyword
    arguments override config fields (`ats_layers`, `ats_max_tokens`, `ats_sampler`,
    `id2label`, ...) as in transformers."""
    check_source(source)
    hub_kwargs = {key: kwargs[key] for key in ("cache_dir", "revision", "token") if key in kwargs}
    return ats_classifier_class(source, **hub_kwargs).from_pretrained(source, **kwargs)


def save_ats_checkpoint(
    model,
    save_directory: str | os.PathLike,
    image_processor=None,
    **card_kwargs,
) -> Path:
    """`model.save_pretrained` (weights, config with an `auto_map` for AutoConfig, AutoModel and
    AutoModelForImageClassification, modeling code), the image processor, and README.md (see
    `ats_hf.hub.model_card.build_model_card` for `card_kwargs`). Returns the directory."""
    save_directory = Path(save_directory)
    model.save_pretrained(save_directory)
    if image_processor is not None:
        image_processor.save_pretrained(save_directory)
    write_model_card(save_directory, model.config, **card_kwargs)
    return save_directory


def push_checkpoint(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    card_kwargs: dict | None = None,
    commit_message: str = "Upload ATS-ViT checkpoint",
) -> str:
    """Create `repo_id` if needed and upload `directory` with huggingface_hub's standard upload (`token`, else the
    one from `hf auth login` or HF_TOKEN), leaving out Trainer's checkpoint-* folders and _* files as
    `Trainer.push_to_hub` does. If the Hub names the repo differently (a bare name gets your namespace), the model
    card is rewritten with that id when `card_kwargs` are given. Returns the repo id."""
    api = HfApi(token=token)
    created_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if card_kwargs is not None and created_id != card_kwargs.get("model_id"):
        config = AutoConfig.from_pretrained(directory)
        write_model_card(directory, config, **{**card_kwargs, "model_id": created_id})
    api.upload_folder(
        repo_id=created_id, folder_path=str(directory), commit_message=commit_message, ignore_patterns=UPLOAD_IGNORE
    )
    return created_id


__all__ = [
    "CLASSIFIER_FOR_ARCHITECTURE",
    "CLASSIFIER_FOR_MODEL_TYPE",
    "ats_classifier_class",
    "check_source",
    "is_local_path",
    "load_ats_classifier",
    "push_checkpoint",
    "save_ats_checkpoint",
]
