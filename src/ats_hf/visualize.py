"""Pictures of what ATS keeps (the paper's figures 3 and 7): the input image and, for every ATS layer, the same image
with the dropped patches covered by a light hatched veil and the kept ones outlined, titled with the layer's token
count; the model's prediction heads the picture. The veil and outline read on dark and light images alike.

The model (an image classifier of any family) runs with its current ATS settings; try others with
`model.ats_settings_applied`:

    with model.ats_settings_applied(layers=[2, 3], max_tokens=0.5):
        picture = token_map("cat.jpg", model, processor)
"""

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ats_hf_common.grammar import format_settings

from .configuration_ats_core import input_size, num_input_tokens, patch_grid, patch_shape
from .data import DEFAULT_MODEL_DIR
from .hub.checkpoint import load_classifier_and_processor

GAP = 8  # pixels between and around panels
MIN_PANEL_SIZE = 16
VEIL = (235, 235, 235)  # dropped patches are blended towards this colour ...
VEIL_OPACITY = 0.6
HATCH = (110, 110, 110)  # ... and crossed by diagonal lines of this colour
HATCH_PERIOD = 6  # pixels between hatch lines
OUTLINE = (255, 190, 0)  # the border of the kept patches


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
    model=None,
    processor=None,
    panel_size: int = 192,
    columns: int = 5,
) -> Image.Image:
    """Render the token map of one image with the model's current ATS settings.

    Args:
        image: a path, a PIL image or an (H, W, 3) uint8 array.
        model, processor: an ATS image classifier (any family) and its image processor; both default to the
            embedded model.
        panel_size: the longer side of each panel in pixels (>= 16); columns: panels per row (>= 1).
    Returns:
        An RGB image: a header line with the prediction, then panels (the input first, then one per ATS layer) of
        the image's aspect ratio (of the processed image when the processor crops), `columns` to a row.
    """
    if panel_size < MIN_PANEL_SIZE or columns < 1:
        raise ValueError(f"panel_size={panel_size} must be >= {MIN_PANEL_SIZE} and columns={columns} >= 1.")
    if model is None:
        model, default_processor = load_classifier_and_processor(DEFAULT_MODEL_DIR)
        processor = processor or default_processor
    elif processor is None:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(model.name_or_path)
    if isinstance(image, (str, Path)):
        image = Image.open(image)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]

    model.eval()
    parameter = next(model.parameters())
    with torch.inference_mode():
        output = model(pixel_values.to(device=parameter.device, dtype=parameter.dtype))
    config = model.config
    patch = patch_shape(config)
    grid_size = patch_grid(config, tuple(pixel_values.shape[-2:]))
    settings = model.ats_settings
    grids = [] if output.sampled_token_indices is None else kept_patch_grids(output.sampled_token_indices, grid_size)
    counts = output.num_tokens[0].tolist()
    probabilities = output.logits[0].float().softmax(-1)
    label = int(probabilities.argmax())
    ats = f"ATS {format_settings(settings)}" if settings.layers else "no ATS layers: every layer keeps every token"
    header = f"prediction: {config.id2label.get(label, label)} ({100 * probabilities[label]:.1f}%)   {ats}"

    shown = _panel_pixels(image, pixel_values[0], processor, grid_size, patch, panel_size)
    panels = [(shown, f"input: {num_input_tokens(config, tuple(pixel_values.shape[-2:]))} tokens")]
    for layer, grid in zip(settings.layers, grids, strict=True):
        panels.append((_veil_dropped(shown, grid), f"layer {layer}: {counts[layer]} tokens"))
    return _compose(panels, header, columns)


def video_token_map(frames, model, processor, panel_size: int = 96) -> Image.Image:
    """Render the token map of one video with a video model's (ViViT's) current ATS settings: a row of frames (the
    first of every tubelet time step), then one row per ATS layer with the tubelets it kept outlined on those frames
    and the dropped ones veiled.

    Args:
        frames: the video, T frames as PIL images or (H, W, 3) uint8 arrays (the model's frame count and size after
            its processor); model, processor: an ATS video classifier and its image processor.
        panel_size: the longer side of each panel in pixels (>= 16).
    """
    if panel_size < MIN_PANEL_SIZE:
        raise ValueError(f"panel_size={panel_size} must be >= {MIN_PANEL_SIZE}.")
    frames = [Image.fromarray(frame) if isinstance(frame, np.ndarray) else frame.convert("RGB") for frame in frames]
    pixel_values = processor([frames], return_tensors="pt")["pixel_values"]  # (1, T, C, H, W)
    model.eval()
    parameter = next(model.parameters())
    with torch.inference_mode():
        output = model(pixel_values.to(device=parameter.device, dtype=parameter.dtype))
    config = model.config
    time_steps, rows, columns = config.ats_patch_grid(input_size(pixel_values))
    step = pixel_values.shape[1] // time_steps
    shown = [_displayable(pixel_values[0, t * step], processor) for t in range(time_steps)]
    scale = panel_size / max(shown[0].shape[:2])
    size = (max(1, round(shown[0].shape[1] * scale)), max(1, round(shown[0].shape[0] * scale)))
    shown = [np.asarray(Image.fromarray(frame).resize(size, Image.NEAREST)) for frame in shown]
    settings = model.ats_settings
    grids = [] if output.sampled_token_indices is None else kept_patch_grids(output.sampled_token_indices,
                                                                              (time_steps, rows * columns))
    counts = output.num_tokens[0].tolist()
    probabilities = output.logits[0].float().softmax(-1)
    label = int(probabilities.argmax())
    header = (f"prediction: {config.id2label.get(label, label)} ({100 * probabilities[label]:.1f}%)   "
              f"{'ATS ' + format_settings(settings) if settings.layers else 'no ATS layers'}")
    panels = [(frame, f"frame {t * step}") for t, frame in enumerate(shown)]
    for layer, grid in zip(settings.layers, grids, strict=True):
        panels += [(_veil_dropped(frame, grid[t].view(rows, columns)), f"layer {layer}: {counts[layer]}" if t == 0
                    else f"t {t}") for t, frame in enumerate(shown)]
    return _compose(panels, header, time_steps)


def _panel_pixels(image, pixel_values, processor, grid_size, patch, panel_size: int) -> np.ndarray:
    """What a panel shows, (h, w, 3) uint8 with max(h, w) = panel_size: the image at its own aspect ratio when the
    processor only resizes (each patch is then a cell of a grid stretched over it), else the processed image."""
    if getattr(processor, "do_center_crop", False):
        picture = Image.fromarray(_displayable(pixel_values, processor))
    else:  # the model saw the whole image, resized: cut it into the patch grid's area, then show it as it is
        covered_h = grid_size[0] * patch[0] / pixel_values.shape[-2]
        covered_w = grid_size[1] * patch[1] / pixel_values.shape[-1]
        picture = image.crop((0, 0, round(image.width * covered_w), round(image.height * covered_h)))
    scale = panel_size / max(picture.width, picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    upscale = scale >= 1
    return np.asarray(picture.resize(size, Image.NEAREST if upscale else Image.LANCZOS))


def _veil_dropped(pixels: np.ndarray, kept_grid: torch.Tensor) -> np.ndarray:
    """`pixels` with the dropped patches veiled (light tint with diagonal hatching) and the kept ones outlined."""
    height, width = pixels.shape[:2]
    grid = kept_grid.numpy()
    rows = np.arange(height) * grid.shape[0] // height
    cols = np.arange(width) * grid.shape[1] // width
    kept = grid[rows[:, None], cols[None, :]]
    y, x = np.mgrid[0:height, 0:width]
    veil_colour = np.where(((x + y) % HATCH_PERIOD == 0)[..., None], HATCH, VEIL)
    veiled = (pixels * (1 - VEIL_OPACITY) + veil_colour * VEIL_OPACITY).round().astype(np.uint8)
    result = np.where(kept[..., None], pixels, veiled)
    padded = np.pad(kept, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    result[kept & ~inner] = OUTLINE
    return result


def _displayable(pixel_values: torch.Tensor, processor) -> np.ndarray:
    """(C, H, W) processed pixels -> (H, W, 3) uint8, undoing the processor's normalisation (and ViViT's offset)."""
    pixels = pixel_values.float()
    if getattr(processor, "do_normalize", False):
        mean = torch.tensor(processor.image_mean, dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.tensor(processor.image_std, dtype=torch.float32).reshape(-1, 1, 1)
        pixels = pixels * std + mean
    if getattr(processor, "offset", False):  # ViViT's rescaling to [-1, 1]
        pixels = (pixels + 1) / 2
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _compose(panels: list[tuple[np.ndarray, str]], header: str, columns: int) -> Image.Image:
    """Panels of one size in a grid, each under its title, below a header line. A cell is as wide as its panel, or
    as the widest title when titles are wider (small panels)."""
    panel_h, panel_w = panels[0][0].shape[:2]
    font = ImageFont.load_default(size=max(10, max(panel_h, panel_w) // 14))
    title_height = font.getbbox("Hg")[3] + 6
    cell_w = max(panel_w, max(math.ceil(font.getlength(title)) for _, title in panels))
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    header_height = title_height + GAP // 2
    width = max(columns * (cell_w + GAP) + GAP, math.ceil(font.getlength(header)) + 2 * GAP)
    canvas = Image.new("RGB", (width, GAP + header_height + rows * (panel_h + title_height + GAP)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP, GAP), header, fill="black", font=font)
    for index, (pixels, title) in enumerate(panels):
        left = GAP + (index % columns) * (cell_w + GAP)
        top = GAP + header_height + (index // columns) * (panel_h + title_height + GAP)
        draw.text((left, top), title, fill="black", font=font)
        canvas.paste(Image.fromarray(pixels), (left, top + title_height))
    return canvas


__all__ = ["kept_patch_grids", "token_map", "video_token_map"]
