"""Data for the tooling: the synthetic digits (`synthetic_digits`) and clips (`synthetic_clips`, videos), the small
trained model embedded in the package (`DEFAULT_MODEL_DIR`, a ViT) and a DINOv2 with registers trained the same way
(`DIGITS_DINOV2_REGISTERS_DIR`), and a ViViT and a VideoMAE trained on the clips (`CLIPS_VIVIT_DIR`,
`CLIPS_VIDEOMAE_DIR`); images from folders or datasets are `ats_hf.evaluation.sources`."""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DEFAULT_MODEL_NAME = "embedded default model (synthetic digits ViT)"
DIGITS_DINOV2_REGISTERS_DIR = DEFAULT_MODEL_DIR.parent / "digits_dinov2_registers"
CLIPS_VIVIT_DIR = DEFAULT_MODEL_DIR.parent / "clips_vivit"
CLIPS_VIDEOMAE_DIR = DEFAULT_MODEL_DIR.parent / "clips_videomae"

__all__ = [
    "CLIPS_VIDEOMAE_DIR",
    "CLIPS_VIVIT_DIR",
    "DEFAULT_MODEL_DIR",
    "DEFAULT_MODEL_NAME",
    "DIGITS_DINOV2_REGISTERS_DIR",
]
