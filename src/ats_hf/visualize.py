"""Pictures of what ATS keeps (the paper's figures 3 and 7): the input image and, for every ATS layer, the same image
with the kept patches at full brightness and the dropped ones dimmed, titled with the layer's token count."""

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .benchmark import DEFAULT_MODEL_DIR, Method, method_from_options, parse_max_tokens, use_method
from .modeling_ats_vit import AtsViTForImageClassification

GAP = 8  # pixels between and around panels
DIM = 0.25  # brightness of dropped patches


def kept_patch_grids(sampled_token_indices: torch.Tensor, grid_size: tuple[int, int]) -> list[torch.Tensor]:
    """Kept-patch maps of the first image: one (grid_h, grid_w) bool tensor per ATS layer.

    Args:
        sampled_token_indices: the model output's (B, ats_layers, max_kept) original patch positions, -1 padded.
        grid_size: (grid_h, grid_w) patches of the input image.
    """
    grids = []
    for positions in sampled_token_indices[0].cpu():
        kept = torch.zeros(grid_size[0] * grid_size[1], dtype=torch.bool)
        kept[positions[positions >= 0]] = True
        grids.append(kept.view(grid_size))
    return grids


def token_map(
    image,
    model: AtsViTForImageClassification | None = None,
    processor=None,
    ats: Method | None = None,
    panel_size: int = 192,
    columns: int = 5,
) -> Image.Image:
    """Render the token map of one image.

    Args:
        image: a path, a PIL image or an (H, W, 3) uint8 array.
        model, processor: an ATS-ViT classifier and its image processor; both default to the embedded model.
        ats: ATS settings to use instead of the model config's (`Method`).
        panel_size: side of each square panel in pixels; columns: panels per row.
    Returns:
        An RGB image of columns' * (panel_size + GAP) + GAP by rows * (panel_size + title + GAP) + GAP pixels, where
        columns' = min(columns, panels) and panels = 1 + the number of ATS layers; the top-left panel is the input.
    """
    if panel_size < 16 or columns < 1:
        raise ValueError(f"panel_size={panel_size} must be >= 16 and columns={columns} >= 1.")
    if model is None:
        model = AtsViTForImageClassification.from_pretrained(DEFAULT_MODEL_DIR)
    if processor is None:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(model.name_or_path or DEFAULT_MODEL_DIR)
    if isinstance(image, (str, Path)):
        image = Image.open(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    pixel_values = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]

    model.eval()
    parameter = next(model.parameters())
    with torch.inference_mode(), use_method(model, ats or Method.from_config(model.config)):
        output = model(pixel_values.to(device=parameter.device, dtype=parameter.dtype))
        ats_layers = list(model.config.ats_layers)
    patch = model.config.patch_size if isinstance(model.config.patch_size, int) else model.config.patch_size[0]
    grid_size = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
    grids = kept_patch_grids(output.sampled_token_indices, grid_size)
    counts = output.num_tokens[0].tolist()
    total = grid_size[0] * grid_size[1] + 1

    shown = _displayable(pixel_values[0], processor)
    panels = [(shown, f"input: {total} tokens")]
    for layer, grid in zip(ats_layers, grids):
        kept = grid.repeat_interleave(patch, 0).repeat_interleave(patch, 1).numpy()
        kept = np.pad(kept, ((0, shown.shape[0] - kept.shape[0]), (0, shown.shape[1] - kept.shape[1])))
        dimmed = np.where(kept[..., None], shown, (shown * DIM).astype(np.uint8))
        panels.append((dimmed, f"layer {layer}: {counts[layer]} tokens"))
    return _compose(panels, panel_size, columns)


def _displayable(pixel_values: torch.Tensor, processor) -> np.ndarray:
    """(C, H, W) processed pixels -> (H, W, 3) uint8, undoing the processor's normalisation."""
    pixels = pixel_values.float()
    if getattr(processor, "do_normalize", False):
        mean = torch.tensor(processor.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(processor.image_std, dtype=torch.float32)[:, None, None]
        pixels = pixels * std + mean
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _compose(panels: list[tuple[np.ndarray, str]], panel_size: int, columns: int) -> Image.Image:
    font = ImageFont.load_default(size=max(10, panel_size // 14))
    title_height = font.getbbox("Hg")[3] + 6
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    canvas = Image.new(
        "RGB", (columns * (panel_size + GAP) + GAP, rows * (panel_size + title_height + GAP) + GAP), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for index, (pixels, title) in enumerate(panels):
        left = GAP + (index % columns) * (panel_size + GAP)
        top = GAP + (index // columns) * (panel_size + title_height + GAP)
        picture = Image.fromarray(pixels)
        upscale = picture.width <= panel_size and picture.height <= panel_size
        picture = picture.resize((panel_size, panel_size), Image.NEAREST if upscale else Image.LANCZOS)
        draw.text((left, top), title, fill="black", font=font)
        canvas.paste(picture, (left, top + title_height))
    return canvas


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `ats-hf visualize`."""
    parser.add_argument("image", type=Path, help="image file to draw")
    parser.add_argument("--model", help="Hub id or folder of an ATS-ViT / ViT classifier (default: the embedded model)")
    parser.add_argument("--output", type=Path, help="PNG to write (default: IMAGE-ats.png in the current folder)")
    parser.add_argument("--ats-layers", type=int, nargs="+", help="ATS layers (default: the model config's)")
    parser.add_argument("--ats-max-tokens", type=parse_max_tokens, nargs="+", help="K: 'all', an int >= 2 or a fraction; one, or one per layer")
    parser.add_argument("--panel-size", type=int, default=192, help="panel side in pixels")
    parser.add_argument("--columns", type=int, default=5, help="panels per row")


def run(args: argparse.Namespace) -> int:
    """`ats-hf visualize`: write the token map PNG and print each ATS layer's token count."""
    from transformers import AutoImageProcessor

    model_path = args.model or str(DEFAULT_MODEL_DIR)
    model = AtsViTForImageClassification.from_pretrained(model_path)
    ats = method_from_options(model.config, args.ats_layers, args.ats_max_tokens)
    picture = token_map(args.image, model, AutoImageProcessor.from_pretrained(model_path), ats, args.panel_size, args.columns)
    output = args.output or Path(f"{args.image.stem}-ats.png")
    picture.save(output)
    print(f"wrote {output} ({picture.width} x {picture.height})")
    return 0


__all__ = ["kept_patch_grids", "token_map"]
