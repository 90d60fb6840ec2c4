"""Turn a plain ViT/DeiT checkpoint (or an ATS one) into a ready-to-share ATS-ViT checkpoint directory.

The directory holds the weights, the config (with `auto_map`), the image processor, the modeling code for
`trust_remote_code` users and a model card; `--push-to-hub` uploads it with huggingface_hub's standard upload.

    ats-hf convert google/vit-base-patch16-224 ./vit-base-ats --ats-layers 3-11 --ats-max-tokens all
"""

import argparse
import os
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoImageProcessor, PretrainedConfig

from ats_hf_cli import UsageError, usage_errors

from ..flops import gmacs_per_image
from ..modeling_ats_vit import AtsViTForImageClassification
from ..settings import add_ats_arguments, settings_from_args
from .checkpoint import check_source, load_ats_classifier, push_checkpoint, save_ats_checkpoint

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


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
    """Write a ready-to-share ATS-ViT checkpoint of `source` into `output_dir`.

    Args:
        source: Hub id or directory of a ViT / non-distilled DeiT / ATS-ViT image classifier.
        output_dir: where to write; must be empty or absent unless `overwrite`.
        image_processor: where to read the image processor from; defaults to `source`.
        base_model: Hub id of the plain model, for the card; defaults to `source` when it is a Hub id of a plain
            model, or to the `base_model` in the card of an ATS `source`.
        license: for the card; defaults to the license in `source`'s card, if it can be read.
        measure_gmacs_on: a directory of images (searched recursively): their mean GMACs per image with ATS goes on
            the card.
        push_to_hub: a Hub repo id to upload the directory to (huggingface_hub `create_repo` + `upload_folder`).
        private: visibility of a repo that `push_to_hub` creates.
        config_overrides: config fields to set, e.g. `ats_layers=[3, 4, 5]`, `ats_max_tokens=0.5`,
            `ats_sampler="top_k"`; fields not given keep the source's values (ATS defaults for a plain source).
    Returns:
        The output directory.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise FileExistsError(f"output_dir {str(output_dir)!r} is not empty; pass overwrite=True (--overwrite).")
    images = None if measure_gmacs_on is None else _image_files(measure_gmacs_on)
    model = load_ats_classifier(source, **config_overrides).eval()
    processor = _load_image_processor(image_processor or source)
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
        push_checkpoint(output_dir, push_to_hub, private=private, card_kwargs=card_kwargs)
    return output_dir


@torch.no_grad()
def measure_mean_gmacs(
    model: AtsViTForImageClassification, image_processor, images: list[Path], batch_size: int = 16
) -> float:
    """Mean GMACs per image of `model` over image files (RGB-converted, preprocessed by `image_processor`, run in
    batches of `batch_size`)."""
    if not images:
        raise ValueError("measure_mean_gmacs got no images.")
    device = next(model.parameters()).device
    total = 0.0
    for start in range(0, len(images), batch_size):
        batch = [Image.open(path).convert("RGB") for path in images[start : start + batch_size]]
        pixel_values = image_processor(batch, return_tensors="pt")["pixel_values"].to(device)
        num_tokens = model(pixel_values=pixel_values).num_tokens
        total += float(gmacs_per_image(model.config, num_tokens.cpu()).sum())
    return total / len(images)


def _load_image_processor(source):
    try:
        return AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"No usable image processor in {str(source)!r} ({error}). Pass image_processor= (--image-processor) "
            "with a directory or Hub id holding the preprocessor_config.json that matches this model."
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ats-hf convert`."""
    parser.add_argument("source", help="Hub id or directory of a ViT / non-distilled DeiT / ATS-ViT classifier.")
    parser.add_argument("output_dir", help="Directory to write the ATS checkpoint into (empty or absent).")
    add_ats_arguments(parser)
    parser.add_argument("--image-processor", help="Where to take preprocessor_config.json from (default: SOURCE).")
    parser.add_argument("--base-model", help="Hub id of the plain base model, for the model card.")
    parser.add_argument("--license", help="License for the model card (default: the source card's, if readable).")
    parser.add_argument(
        "--measure-gmacs-on", metavar="DIR", help="Images whose mean GMACs per image with ATS go on the model card."
    )
    parser.add_argument("--overwrite", action="store_true", help="Write into a non-empty OUTPUT_DIR.")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="Upload OUTPUT_DIR to this Hub repo.")
    parser.add_argument("--private", action="store_true", default=None, help="Create the Hub repo as private.")


def run(args: argparse.Namespace) -> int:
    """`ats-hf convert`: write the checkpoint (and upload it)."""
    for path, what in ((args.source, "SOURCE"), (args.image_processor, "--image-processor")):
        if path is not None:
            with usage_errors(FileNotFoundError):
                check_source(path, what)
    overrides = {f"ats_{key}": value for key, value in settings_from_args(args).items()}
    try:
        output_dir = convert_to_ats(
            args.source,
            args.output_dir,
            image_processor=args.image_processor,
            base_model=args.base_model,
            license=args.license,
            measure_gmacs_on=args.measure_gmacs_on,
            overwrite=args.overwrite,
            push_to_hub=args.push_to_hub,
            private=args.private,
            **overrides,
        )
    except (OSError, ValueError) as error:  # a missing or unloadable source, a bad setting, a non-empty OUTPUT_DIR
        message = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UsageError(f"cannot convert {args.source!r}: {message}") from error
    print(
        f"Wrote an ATS checkpoint to {output_dir}"
        + (f" and uploaded it to {args.push_to_hub}" if args.push_to_hub else "")
    )
    return 0


__all__ = ["convert_to_ats", "measure_mean_gmacs"]
