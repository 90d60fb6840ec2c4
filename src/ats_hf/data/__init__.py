"""Data for the tooling: the synthetic digits (`synthetic_digits`) and the small trained model embedded in the
package (`DEFAULT_MODEL_DIR`); images from folders or datasets are `ats_hf.evaluation.sources`."""

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DEFAULT_MODEL_NAME = "embedded default model (synthetic digits ViT)"

__all__ = ["DEFAULT_MODEL_DIR", "DEFAULT_MODEL_NAME"]
