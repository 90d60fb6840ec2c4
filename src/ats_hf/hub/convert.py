"""Turn a plain checkpoint of any ATS family (or an ATS one) into a ready-to-share ATS checkpoint folder.

The folder holds the weights, the config (with `auto_map`), the image processor (CLIP's image-text model: its whole
processor, tokenizer included), the modeling code for `trust_remote_code` users and a model card. The checkpoint
keeps what it is (the registry's `model_class_for`): a classifier stays a classifier, a backbone (e.g. `ViTModel`)
becomes its family's ATS base model, and CLIP's image-text model stays an image-text model; no head is ever invented.
`push_checkpoint` uploads it.

    ats-hf convert google/vit-base-patch16-224 ./vit-base-ats --ats-layers 3-11 --ats-max-tokens all
"""

import os
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, PretrainedConfig

from ats_hf_common.paths import check_target

from ..families import ZERO_SHOT, family_of, is_classifier, takes_videos
from ..flops import gmacs_per_image
from ..modeling_ats_core import AtsBaseModelMixin
from .checkpoint import load_ats_model, push_checkpoint, save_ats_checkpoint

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class UploadError(RuntimeError):
    """The checkpoint folder was written, but uploading it failed (no network, no token, no permission)."""

SETTING_FIELDS = ("ats_layers", "ats_max_tokens", "ats_sampler", "ats_capacity", "ats_merge")


def convert_to_ats(
    source: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    image_processor: str | os.PathLike | None = None,
    base_model: str | None = None,
    license: str | None = None,
    measure_gmacs_on: str | os.PathLike | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool | None = None,
    **config_overrides,
) -> Path:
    """Write a ready-to-share ATS checkpoint of `source` into `output_dir`.

    Args:
        source: Hub id or directory of a checkpoint of any ATS family (see docs/families.md), plain or ATS.
        output_dir: where to write; must be empty or absent unless `overwrite`.
        image_processor: where to read the image processor from; defaults to `source`.
        base_model: Hub id of the plain model, for the card; defaults to `source` when it is a Hub id of a plain
            model, or to the `base_model` in the card of an ATS `source`.
        license: for the card; defaults to the license in `source`'s card, if it can be read.
        measure_gmacs_on: a directory of images (searched recursively): their mean GMACs per image with ATS goes on
            the card (image models only).
        push_to_hub: a Hub repo id to upload the directory to (huggingface_hub `create_repo` + `upload_folder`).
        private: visibility of a repo that `push_to_hub` creates.
        config_overrides: config fields to set, e.g. `ats_layers=[3, 4, 5]`, `ats_max_tokens=0.5`,
            `ats_sampler="top_k"` (the ATS settings are applied with `set_ats`, so they work for every class); fields
            not given keep the source's values (ATS defaults for a plain source).
    Returns:
        The output directory. Raises `UploadError` when the folder was written but the upload failed.
    """
    check_target(output_dir, "output_dir", overwrite)
    images = None if measure_gmacs_on is None else _image_files(measure_gmacs_on)
    settings = {name.removeprefix("ats_"): config_overrides.pop(name) for name in SETTING_FIELDS
                if name in config_overrides}
    model = load_ats_model(source, **config_overrides).eval()
    model.set_ats(**settings)
    if images is not None and takes_videos(model):
        raise ValueError(
            f"measure_gmacs_on takes images, and {family_of(model).title} takes videos: measure its GMACs per video "
            "with ats_hf.flops.gmacs_per_image(model.config, outputs.num_tokens) on your videos."
        )
    processor = _load_processor(image_processor or source, zero_shot=ZERO_SHOT in family_of(model).capabilities)
    source_card = _read_card(source)
    if base_model is None:
        if (_source_model_type(source) or "").startswith("ats_"):
            base_model = source_card.get("base_model")
        elif not Path(source).is_dir():
            base_model = str(source)
    card_kwargs = {
        "model_id": push_to_hub or str(output_dir),
        "base_model": base_model,
        "license": license or source_card.get("license"),
    }
    if images is not None:
        card_kwargs["ats_gmacs"] = measure_mean_gmacs(model, processor, images)
        card_kwargs["gmacs_measured_on"] = f"{len(images)} images of `{Path(measure_gmacs_on).name}`"
    save_ats_checkpoint(model, output_dir, processor, **card_kwargs)
    if push_to_hub is not None:
        try:
            push_checkpoint(output_dir, push_to_hub, private=private, card_kwargs=card_kwargs)
        except Exception as error:  # no network, no token, no permission: the HTTP library's errors vary by version
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UploadError(f"wrote {os.fspath(output_dir)}, but uploading it to {push_to_hub!r} failed: "
                              f"{reason}") from error
    return Path(output_dir)


@torch.no_grad()
def measure_mean_gmacs(model, image_processor, images: list[Path], batch_size: int = 16) -> float:
    """Mean GMACs per image of an ATS model (any family and kind) over image files (RGB-converted, preprocessed by
    `image_processor`, run in batches of `batch_size`); a classifier's head is counted."""
    if not images:
        raise ValueError("measure_mean_gmacs got no images.")
    tower = next(module for module in model.modules() if isinstance(module, AtsBaseModelMixin))
    device = next(model.parameters()).device
    total = 0.0
    for start in range(0, len(images), batch_size):
        batch = [Image.open(path).convert("RGB") for path in images[start : start + batch_size]]
        pixel_values = image_processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
        num_tokens = tower(pixel_values=pixel_values).num_tokens
        total += float(gmacs_per_image(tower.config, num_tokens.cpu(), with_head=is_classifier(type(model))).sum())
    return total / len(images)


def _load_processor(source, zero_shot: bool):
    """The image processor (a zero-shot model's whole processor: its tokenizer too) that `source` holds."""
    try:
        return (AutoProcessor if zero_shot else AutoImageProcessor).from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"No usable {'processor' if zero_shot else 'image processor'} in {str(source)!r} ({error}). Pass "
            "image_processor= (--image-processor) with a directory or Hub id holding the preprocessor_config.json "
            "that matches this model."
        ) from error


def _source_model_type(source) -> str | None:
    return PretrainedConfig.get_config_dict(source)[0].get("model_type")


def _read_card(source) -> dict:
    """Metadata of `source`'s model card, or {} when it has none or it cannot be read (e.g. offline)."""
    local = Path(source) / "README.md"
    if Path(source).is_dir() and not local.is_file():
        return {}
    try:
        card = ModelCard.load(local if Path(source).is_dir() else str(source))
    except Exception:  # no card on the Hub, no network, or malformed metadata: the new card lacks these fields
        return {}
    return card.data.to_dict()


def _image_files(directory) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"measure_gmacs_on={str(directory)!r} is not a directory of images.")
    files = sorted(path for path in directory.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"measure_gmacs_on={str(directory)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return files


__all__ = ["UploadError", "convert_to_ats", "measure_mean_gmacs"]
