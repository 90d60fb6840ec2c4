"""Data for the tooling: the synthetic digits (`synthetic_digits`), labelled images from folders or datasets
(`labelled_images`), and the small trained model embedded in the package (`DEFAULT_MODEL_DIR`)."""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DEFAULT_MODEL_NAME = "embedded default model (synthetic digits ViT)"

__all__ = ["DEFAULT_MODEL_DIR", "DEFAULT_MODEL_NAME"]
