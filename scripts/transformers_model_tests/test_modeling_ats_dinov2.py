"""transformers' own ModelTesterMixin run against ATS-DINOv2 (a development check; see
`scripts/run_transformers_model_tests.sh` and `ats_model_testing.py`).

Four classes: DINOv2 (no registers) and DINOv2 with 2 register tokens, each with `ats_layers=[]` (must behave exactly
like upstream: every applicable test passes) and with ATS in layers 0 and 1 keeping at most 24 of 65 (67) tokens.
"""

import unittest

from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

import ats_hf  # noqa: F401  (registers the families with the Auto classes)
from ats_hf import AtsDinov2Config, AtsDinov2ForImageClassification, AtsDinov2Model

from .ats_model_testing import AtsModelTestMixin, skip_common_tests

# transformers' tests treat a class by the mappings it is listed in (base models are not trained, classifiers get
# labels); an upstream model is listed there, ours is registered at run time: list it the same way.
MODEL_MAPPING_NAMES.setdefault("ats_dinov2", "AtsDinov2Model")
MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.setdefault("ats_dinov2", "AtsDinov2ForImageClassification")


class _AtsDinov2CommonTests(AtsModelTestMixin):
    config_class = AtsDinov2Config
    all_model_classes = (AtsDinov2Model, AtsDinov2ForImageClassification)
    config_kwargs = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
    # DINOv2 always builds `embeddings.mask_token`, used only with `bool_masked_pos`, which these inputs leave out
    # (upstream's Dinov2ModelTest skips the gradient checkpointing tests for it): check every other gradient.
    test_all_params_have_gradient = False


class AtsDinov2NoSamplingModelTest(_AtsDinov2CommonTests, unittest.TestCase):
    ats_layers = []


class AtsDinov2ModelTest(_AtsDinov2CommonTests, unittest.TestCase):
    ats_layers = [0, 1]
    ats_max_tokens = 24


class AtsDinov2WithRegistersNoSamplingModelTest(_AtsDinov2CommonTests, unittest.TestCase):
    config_kwargs = {**_AtsDinov2CommonTests.config_kwargs, "num_register_tokens": 2}
    num_special_tokens = 3
    ats_layers = []


class AtsDinov2WithRegistersModelTest(_AtsDinov2CommonTests, unittest.TestCase):
    config_kwargs = {**_AtsDinov2CommonTests.config_kwargs, "num_register_tokens": 2}
    num_special_tokens = 3
    ats_layers = [0, 1]
    ats_max_tokens = 24


skip_common_tests(AtsDinov2NoSamplingModelTest, AtsDinov2ModelTest)
skip_common_tests(AtsDinov2WithRegistersNoSamplingModelTest, AtsDinov2WithRegistersModelTest)
