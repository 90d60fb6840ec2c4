"""Configuration of ATS-DINOv2: a DINOv2 (with or without register tokens) whose chosen encoder layers keep an
adaptive subset of tokens.

Self-contained for the Hub: imports only huggingface_hub, transformers and `.configuration_ats_core`.
"""

from huggingface_hub.dataclasses import strict
from transformers import Dinov2Config

from .configuration_ats_core import ATS_CONFIG_DOC, AtsConfigMixin


@strict
class AtsDinov2Config(AtsConfigMixin, Dinov2Config):
    model_type = "ats_dinov2"
    # A `dinov2_with_registers` config carries `num_register_tokens`; a `dinov2` one leaves it at 0.
    ats_base_model_types = ("dinov2", "dinov2_with_registers")

    num_register_tokens: int = 0

    @property
    def ats_num_special_tokens(self) -> int:
        """S = 1 + num_register_tokens: CLS and the registers, always kept, never scored."""
        return 1 + self.num_register_tokens

    def validate_num_register_tokens(self) -> None:
        if isinstance(self.num_register_tokens, bool) or self.num_register_tokens < 0:
            raise ValueError(f"num_register_tokens={self.num_register_tokens!r} must be an int >= 0.")


AtsDinov2Config.__doc__ = (
    "A [`Dinov2Config`] plus the settings of Adaptive Token Sampling (Fayyaz et al., ECCV 2022). It also reads "
    "`dinov2_with_registers` configs: with `num_register_tokens` > 0 the model is a DINOv2 with registers.\n"
    r"""
    num_register_tokens (`int`, *optional*, defaults to 0):
        Register tokens after CLS (DINOv2 with registers); 0 for plain DINOv2. The special tokens that ATS always
        keeps and never scores are CLS and the registers (`1 + num_register_tokens`); only CLS's attention row
        scores the patches.
"""
    + ATS_CONFIG_DOC
)

__all__ = ["AtsDinov2Config"]
