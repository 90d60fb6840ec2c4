"""transformers' own ModelTesterMixin run against ATS-DeiT (distilled DeiT; a development check, see
`scripts/run_transformers_model_tests.sh` and `ats_model_testing.py`).

Two classes: `ats_layers=[]` (must behave exactly like upstream DeiT: every applicable test passes) and ATS in layers
0 and 1 keeping at most 24 of 66 tokens (CLS and the distillation token always among them). Unlike upstream's
`DeiTForImageClassificationWithTeacher`, ours takes labels (the mean of both heads' losses), so it is trained and
gets labels like the other classifier.
"""

import unittest

from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

import ats_hf  # noqa: F401  (registers the families with the Auto classes)
from ats_hf import AtsDeiTConfig, AtsDeiTForImageClassification, AtsDeiTForImageClassificationWithTeacher, AtsDeiTModel

from .ats_model_testing import AtsModelTestMixin, skip_common_tests

# transformers' tests treat a class by the mappings it is listed in (base models are not trained, classifiers get
# labels); an upstream model is listed there, ours is registered at run time: list it the same way.
MODEL_MAPPING_NAMES.setdefault("ats_deit", "AtsDeiTModel")
MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.setdefault(
    "ats_deit", ("AtsDeiTForImageClassification", "AtsDeiTForImageClassificationWithTeacher")
)


class _AtsDeiTCommonTests(AtsModelTestMixin):
    config_class = AtsDeiTConfig
    all_model_classes = (AtsDeiTModel, AtsDeiTForImageClassification, AtsDeiTForImageClassificationWithTeacher)
    config_kwargs = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "encoder_stride": 2}
    num_special_tokens = 2


class AtsDeiTNoSamplingModelTest(_AtsDeiTCommonTests, unittest.TestCase):
    ats_layers = []


class AtsDeiTModelTest(_AtsDeiTCommonTests, unittest.TestCase):
    ats_layers = [0, 1]
    ats_max_tokens = 24


skip_common_tests(AtsDeiTNoSamplingModelTest, AtsDeiTModelTest)
