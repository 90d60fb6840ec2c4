"""Loading, saving and uploading ATS checkpoints of every family (Hub ids or local folders).

Which ATS class reads a checkpoint is the registry's answer (`ats_hf.families.model_class_for`): the class its
`architectures` names, plain or ATS. A tool that needs a classifier (`load_ats_classifier`) refuses a backbone, or a
classifier whose head would be randomly initialised, instead of reporting accuracies of random weights. The image
tools' loaders: `load_model_and_processor` (benchmark, tune, calibrate: images and videos) and
`load_classifier_and_processor` (visualize, export: images; a video model (ViViT) is refused).
"""

import os
from pathlib import Path

from huggingface_hub import HfApi
from transformers import AutoConfig, AutoImageProcessor, PretrainedConfig

from ats_hf_common.paths import check_source

from ..families import classifier_for, family_of, is_classifier, model_class_for, takes_videos
from .model_card import write_model_card

UPLOAD_IGNORE = ["checkpoint-*", "_*"]
_HUB_OPTIONS = ("cache_dir", "revision", "token")


def ats_model_class(source: str | os.PathLike, **hub_kwargs) -> type:
    """The ATS class that reads `source` (see `families.model_class_for`); an unsupported model type raises
    `ValueError` naming it and the supported ones."""
    folder = Path(os.fspath(source)).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ValueError(f"{os.fspath(source)!r} holds no config.json: it is not a transformers checkpoint folder.")
    config_dict, _ = PretrainedConfig.get_config_dict(source, **hub_kwargs)
    if config_dict.get("model_type") is None:
        raise ValueError(f"the config.json of {os.fspath(source)!r} names no model_type, so its family is unknown.")
    return model_class_for(config_dict)


def load_ats_model(source: str | os.PathLike, **kwargs):
    """`from_pretrained(source, **kwargs)` of the ATS class that reads `source` (Hub id or folder): a classifier, a
    base model or CLIP's image-text model, as the checkpoint is. A missing local folder raises `FileNotFoundError`,
    an unsupported model type `ValueError`. Keyword arguments override config fields (`ats_layers`,
    `ats_max_tokens`, ...) as in transformers."""
    check_source(source)
    hub_kwargs = {key: kwargs[key] for key in _HUB_OPTIONS if key in kwargs}
    return ats_model_class(source, **hub_kwargs).from_pretrained(source, **kwargs)


def load_ats_classifier(source: str | os.PathLike, *, allow_new_head: bool = False, **kwargs):
    """`load_ats_model` for a checkpoint that must be a classifier (of images; of videos for a video family) with a
    trained head: a backbone (e.g. a
    `ViTModel` or `CLIPModel` checkpoint), or a checkpoint whose head weights are missing, raises `ValueError`
    instead of loading a randomly initialised head. With `allow_new_head` (fine-tuning), a backbone loads into its
    family's image classifier and a missing head is initialised, as transformers does."""
    check_source(source)
    hub_kwargs = {key: kwargs[key] for key in _HUB_OPTIONS if key in kwargs}
    model_class = ats_model_class(source, **hub_kwargs)
    if not is_classifier(model_class):
        upstream = model_class.__bases__[-1].__name__
        model_class = classifier_for(model_class) if allow_new_head else None
        if model_class is None:
            raise ValueError(
                f"{os.fspath(source)!r} is a {upstream} checkpoint without an image-classification head; this needs "
                "an image classifier (e.g. a *ForImageClassification checkpoint). Fine-tune a head on it first "
                "(examples/run_image_classification.py), or convert the backbone with `ats-hf convert`."
            )
    if allow_new_head:
        return model_class.from_pretrained(source, **kwargs)
    model, info = model_class.from_pretrained(source, output_loading_info=True, **kwargs)
    missing = [key for key in info["missing_keys"] if not key.endswith("embeddings.mask_token")]
    if missing or info["unexpected_keys"] or info["mismatched_keys"]:
        raise ValueError(
            f"{os.fspath(source)!r} does not hold a trained {model_class.__name__}: {len(missing)} weight(s) would "
            f"be randomly initialised {sorted(missing)[:4]}, {len(info['unexpected_keys'])} ignored; a classifier "
            "needs its head's weights (allow_new_head=True initialises a new head, for fine-tuning)."
        )
    return model


def load_classifier_and_processor(source: str | os.PathLike, **kwargs):
    """(`load_ats_classifier(source, **kwargs)` in eval mode, the checkpoint's image processor), for the image tools
    (visualize, export): a video model raises `ValueError`."""
    check_source(source)
    hub_kwargs = {key: kwargs[key] for key in _HUB_OPTIONS if key in kwargs}
    _refuse_videos(source, ats_model_class(source, **hub_kwargs))
    return _classifier_and_processor(source, hub_kwargs, **kwargs)


def load_model_and_processor(source: str | os.PathLike, **kwargs):
    """(the ATS model a checkpoint holds in eval mode, its image processor), for the evaluation tools (benchmark,
    tune, calibrate): a classifier of images or videos checked as by `load_ats_classifier`, or a feature extractor
    (base model, CLIP's projection model) as `load_ats_model` loads it."""
    check_source(source)
    hub_kwargs = {key: kwargs[key] for key in _HUB_OPTIONS if key in kwargs}
    if is_classifier(ats_model_class(source, **hub_kwargs)):
        return _classifier_and_processor(source, hub_kwargs, **kwargs)
    return load_ats_model(source, **kwargs).eval(), AutoImageProcessor.from_pretrained(source, **hub_kwargs)


def _classifier_and_processor(source, hub_kwargs: dict, **kwargs):
    return load_ats_classifier(source, **kwargs).eval(), AutoImageProcessor.from_pretrained(source, **hub_kwargs)


def _refuse_videos(source, model_class: type) -> None:
    if takes_videos(model_class):
        raise ValueError(
            f"{os.fspath(source)!r} is a {family_of(model_class).title} model, which takes videos; this tool takes "
            "image models (run a video model from Python: docs/family-vivit.md)."
        )


def save_ats_checkpoint(
    model,
    save_directory: str | os.PathLike,
    image_processor=None,
    **card_kwargs,
) -> Path:
    """`model.save_pretrained` (weights, config with an `auto_map` for every auto class of its family, modeling
    code), the image processor, and README.md (see `ats_hf.hub.model_card.build_model_card` for `card_kwargs`).
    Returns the directory."""
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
    commit_message: str = "Upload ATS checkpoint",
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
    "ats_model_class",
    "load_ats_classifier",
    "load_ats_model",
    "load_classifier_and_processor",
    "load_model_and_processor",
    "push_checkpoint",
    "save_ats_checkpoint",
]
