"""Configuration of ATS-DeiT: a distilled DeiT whose chosen encoder layers keep an adaptive subset of tokens.

Self-contained for the Hub: imports only huggingface_hub, transformers and `.configuration_ats_core`.

DeiT's embeddings output [CLS, distillation token, patches]: two special tokens, both always kept and never
scored; the significance scores come from the CLS token's attention row only (see docs/family-deit.md).
"""

from huggingface_hub.dataclasses import strict
from transformers import DeiTConfig

from .configuration_ats_core import ATS_CONFIG_DOC, AtsConfigMixin


@strict
class AtsDeiTConfig(AtsConfigMixin, DeiTConfig):
    model_type = "ats_deit"
    ats_base_model_types = ("deit",)
    # Also the two heads' separate logits (the averaged `logits` is the prediction), so that evaluation sees
    # (logits, num_tokens) as with every other family.
    keys_to_ignore_at_inference = [*AtsConfigMixin.keys_to_ignore_at_inference, "cls_logits", "distillation_logits"]

    @property
    def ats_num_special_tokens(self) -> int:
        """CLS and the distillation token: always kept, never scored."""
        return 2


AtsDeiTConfig.__doc__ = (
    "A [`DeiTConfig`] plus the settings of Adaptive Token Sampling (Fayyaz et al., ECCV 2022); the two special "
    "tokens are CLS and the distillation token (K counts both), and patches are scored by the CLS row.\n"
    + ATS_CONFIG_DOC
)

__all__ = ["AtsDeiTConfig"]
