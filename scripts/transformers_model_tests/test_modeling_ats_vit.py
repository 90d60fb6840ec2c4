"""transformers' own ModelTesterMixin run against ATS-ViT (a development check; see
`scripts/run_transformers_model_tests.sh` and `ats_model_testing.py`).

Two classes: `ats_layers=[]`, where ATS-ViT must behave exactly like ViT (every applicable test passes), and ATS in
layers 0 and 1 keeping at most 24 of 65 tokens (tests that assume every layer keeps the input's sequence length are
skipped with the reason).
"""

import unittest

from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

import ats_hf  # noqa: F401  (registers the families with the Auto classes)
from ats_hf import AtsViTConfig, AtsViTForImageClassification, AtsViTModel

from .ats_model_testing import AtsModelTestMixin, skip_common_tests

# transformers' tests treat a class by the mappings it is listed in (base models are not trained, classifiers get
# labels); an upstream model is listed there, ours is registered at run time: list it the same way.
MODEL_MAPPING_NAMES.setdefault("ats_vit", "AtsViTModel")
MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.setdefault("ats_vit", "AtsViTForImageClassification")


class _AtsViTCommonTests(AtsModelTestMixin):
    config_class = AtsViTConfig
    all_model_classes = (AtsViTModel, AtsViTForImageClassification)
    config_kwargs = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}


class AtsViTNoSamplingModelTest(_AtsViTCommonTests, unittest.TestCase):
    ats_layers = []


class AtsViTModelTest(_AtsViTCommonTests, unittest.TestCase):
    ats_layers = [0, 1]
    ats_max_tokens = 24


skip_common_tests(AtsViTNoSamplingModelTest, AtsViTModelTest)
