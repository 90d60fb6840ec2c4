"""Sharing ATS checkpoints: loading any supported checkpoint, saving and uploading ready-to-share folders
(`checkpoint`), converting a plain checkpoint (`convert`, also `ats-hf convert`), and model cards (`model_card`)."""

from .checkpoint import load_ats_classifier, load_ats_model, push_checkpoint, save_ats_checkpoint
from .convert import convert_to_ats, measure_mean_gmacs
from .model_card import build_model_card, write_model_card

__all__ = [
    "build_model_card",
    "convert_to_ats",
    "load_ats_classifier",
    "load_ats_model",
    "measure_mean_gmacs",
    "push_checkpoint",
    "save_ats_checkpoint",
    "write_model_card",
]
