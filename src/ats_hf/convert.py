"""Turn a plain ViT/DeiT checkpoint (or an ATS one) into a ready-to-share ATS-ViT checkpoint directory.

The directory holds the weights, the config (with `auto_map`), the image processor, the modeling code for
`trust_remote_code` users and a model card; `--push-to-hub` uploads it with huggingface_hub's standard upload.

    ats-hf convert google/vit-base-patch16-224 ./vit-base-ats --ats-layers 3-11 --ats-max-tokens all
"""

import argparse
import os
from pathlib import Path

import torch
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from transformers import AutoImageProcessor, PretrainedConfig

from .configuration_ats_vit import ATS_SAMPLERS, AtsViTConfig
from .flops import gmacs_per_image
from .model_card import write_model_card
from .modeling_ats_vit import AtsViTForImageClassification

SUPPORTED_MODEL_TYPES = ("vit", "ats_vit")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
UPLOAD_IGNORE = ["checkpoint-*", "_*"]
def load_ats_classifier(source: str | os.PathLike, **kwargs) -> AtsViTForImageClassification:
    """`AtsViTForImageClassification.from_pretrained(source, **kwargs)` for a ViT, non-distilled DeiT or ATS-ViT
    checkpoint (Hub id or directory); other model types raise `ValueError` naming the type. Keyword arguments
    override config fields (`ats_layers`, `ats_max_tokens`, `ats_sampler`, `id2label`, ...) as in transformers."""
    hub_kwargs = {key: kwargs[key] for key in ("cache_dir", "revision", "token") if key in kwargs}
    config_dict, _ = PretrainedConfig.get_config_dict(source, **hub_kwargs)
    model_type = config_dict.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{str(source)!r} is a {model_type!r} checkpoint; ATS-ViT loads model_type 'vit' (google/vit-*, the "
            "non-distilled facebook/deit-*) or 'ats_vit'. Distilled DeiT ('deit') is not supported."
        )
    return AtsViTForImageClassification.from_pretrained(source, **kwargs)


def save_ats_checkpoint(
    model: AtsViTForImageClassification,
    save_directory: str | os.PathLike,
    image_processor=None,
    **card_kwargs,
) -> Path:
    """`model.save_pretrained` (weights, config with an `auto_map` for AutoConfig, AutoModel and
    AutoModelForImageClassification, modeling code), the image processor, and README.md (see
    `ats_hf.model_card.build_model_card` for `card_kwargs`). Returns the directory."""
    save_directory = Path(save_directory)
    model.save_pretrained(save_directory)
    if image_processor is not None:
        image_processor.save_pretrained(save_directory)
    write_model_card(save_directory, model.config, **card_kwargs)
    return save_directory


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
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"output_dir {str(output_dir)!r} is not empty; pass overwrite=True (--overwrite).")
    model = load_ats_classifier(source, **config_overrides).eval()
    processor = _load_image_processor(image_processor or source)
    source_card = _read_card(source)
    if base_model is None:
        if _source_model_type(source) == "ats_vit":
            base_model = source_card.get("base_model")
        elif not Path(source).is_dir():
            base_model = str(source)
    card_kwargs = {
        "model_id": push_to_hub or str(output_dir),
        "base_model": base_model,
        "license": license or source_card.get("license"),
    }
    if measure_gmacs_on is not None:
        images = _image_files(measure_gmacs_on)
        card_kwargs["ats_gmacs"] = measure_mean_gmacs(model, processor, images)
        card_kwargs["gmacs_measured_on"] = f"{len(images)} images of `{Path(measure_gmacs_on).name}`"
    save_ats_checkpoint(model, output_dir, processor, **card_kwargs)
    if push_to_hub is not None:
        push_checkpoint(output_dir, push_to_hub, private=private, card_kwargs=card_kwargs)
    return output_dir


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
        config = AtsViTConfig.from_pretrained(directory)
        write_model_card(directory, config, **{**card_kwargs, "model_id": created_id})
    api.upload_folder(
        repo_id=created_id, folder_path=str(directory), commit_message=commit_message, ignore_patterns=UPLOAD_IGNORE
    )
    return created_id


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


def parse_ats_layers(text: str) -> list[int]:
    """'3-11' -> [3, ..., 11]; '1,3,5-7' -> [1, 3, 5, 6, 7]; 'none' or '' -> [] (plain ViT)."""
    text = text.strip().lower()
    if text in ("", "none"):
        return []
    layers = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            layers.extend(range(int(first), int(last or first) + 1))
        except ValueError:
            raise ValueError(f"ats_layers={text!r}: {part!r} is not a layer index or range like '3-11'.") from None
    return layers


def parse_ats_max_tokens(text: str) -> int | float | list[int | float | None] | None:
    """'all' or 'none' -> None (keep up to all tokens); '0.5' -> a fraction; '100' -> a count; a comma list gives
    one such value per ATS layer."""
    values = [_parse_max_tokens_value(part, text) for part in text.split(",")]
    return values[0] if len(values) == 1 else values


def _parse_max_tokens_value(part: str, text: str) -> int | float | None:
    part = part.strip().lower()
    if part in ("all", "none"):
        return None
    try:
        return float(part) if "." in part else int(part)
    except ValueError:
        raise ValueError(
            f"ats_max_tokens={text!r}: {part!r} is not 'all', a count (int >= 2) or a fraction in (0, 1]."
        ) from None


def ats_config_overrides(ats_layers: str | None, ats_max_tokens: str | None, ats_sampler: str | None) -> dict:
    """The ATS config fields given on a command line (each a string, or None for "keep the checkpoint's")."""
    overrides = {}
    if ats_layers is not None:
        overrides["ats_layers"] = parse_ats_layers(ats_layers)
    if ats_max_tokens is not None:
        overrides["ats_max_tokens"] = parse_ats_max_tokens(ats_max_tokens)
    if ats_sampler is not None:
        overrides["ats_sampler"] = ats_sampler
    return overrides


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
        raise ValueError(f"measure_gmacs_on={str(directory)!r} is not a directory of images.")
    files = sorted(path for path in directory.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"measure_gmacs_on={str(directory)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="Hub id or directory of a ViT / non-distilled DeiT / ATS-ViT classifier.")
    parser.add_argument("output_dir", help="Directory to write the ATS checkpoint into (empty or absent).")
    parser.add_argument(
        "--ats-layers",
        help="0-based ATS layers: '3-11', '1,3,5', or 'none'. Default: keep the "
        "source's (an ATS source) or the paper's recipe, num_layers//4 .. num_layers-1.",
    )
    parser.add_argument(
        "--ats-max-tokens",
        help="K, most tokens an ATS layer keeps incl. CLS: 'all' (the paper), "
        "a count like 120, a fraction like 0.5, or a comma list (one per ATS layer).",
    )
    parser.add_argument("--ats-sampler", choices=ATS_SAMPLERS, help="Token sampler (default: inverse_transform).")
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
        **ats_config_overrides(args.ats_layers, args.ats_max_tokens, args.ats_sampler),
    )
    print(
        f"Wrote an ATS checkpoint to {output_dir}"
        + (f" and uploaded it to {args.push_to_hub}" if args.push_to_hub else "")
    )
    return 0


__all__ = [
    "ats_config_overrides",
    "convert_to_ats",
    "load_ats_classifier",
    "measure_mean_gmacs",
    "parse_ats_layers",
    "parse_ats_max_tokens",
    "push_checkpoint",
    "save_ats_checkpoint",
]
