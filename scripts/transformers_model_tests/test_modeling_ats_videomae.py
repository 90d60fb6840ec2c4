"""transformers' own ModelTesterMixin run against ATS-VideoMAE (a development check; see
`scripts/run_transformers_model_tests.sh` and `ats_model_testing.py`).

Videos of 2 frames of 16 px in tubelets of 2 frames x 2 x 2 px: 64 tubelets and no special token. Two classes:
`ats_layers=[]` (must behave exactly like VideoMAE) and ATS in layers 0 and 1 keeping at most 24 of 64 tokens. With
no CLS token, the eager-vs-sdpa variants that mask position 0 apply here and run.
"""

import unittest

from transformers.models.auto.modeling_auto import (
    MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

import ats_hf  # noqa: F401  (registers the families with the Auto classes)
from ats_hf import AtsVideoMAEConfig, AtsVideoMAEForVideoClassification, AtsVideoMAEModel

from .ats_model_testing import (
    SHRINKING_SEQUENCE_TESTS,
    WEIGHT_NAME_TESTS,
    AtsModelTestMixin,
    AtsVisionModelTester,
    skip_tests,
)

MODEL_MAPPING_NAMES.setdefault("ats_videomae", "AtsVideoMAEModel")
MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES.setdefault("ats_videomae", "AtsVideoMAEForVideoClassification")


class AtsVideoMAEModelTester(AtsVisionModelTester):
    """The image tester's sizes, with videos of `num_frames` frames cut into tubelets of 2 frames x 2 x 2 px."""

    num_frames = 2
    tubelet_size = 2

    def geometry(self) -> dict:
        return {"num_frames": self.num_frames, "tubelet_size": self.tubelet_size, "patch_size": self.patch_size}

    def input_shape(self) -> list[int]:
        return [self.batch_size, self.num_frames, self.num_channels, self.image_size, self.image_size]


class _AtsVideoMAECommonTests(AtsModelTestMixin):
    model_tester_class = AtsVideoMAEModelTester
    config_class = AtsVideoMAEConfig
    all_model_classes = (AtsVideoMAEModel, AtsVideoMAEForVideoClassification)
    num_special_tokens = 0
    config_kwargs = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}


class AtsVideoMAENoSamplingModelTest(_AtsVideoMAECommonTests, unittest.TestCase):
    ats_layers = []


class AtsVideoMAEModelTest(_AtsVideoMAECommonTests, unittest.TestCase):
    ats_layers = [0, 1]
    ats_max_tokens = 24


skip_tests(AtsVideoMAEModelTest, SHRINKING_SEQUENCE_TESTS, "not applicable to token dropping: ")
for test_class in (AtsVideoMAENoSamplingModelTest, AtsVideoMAEModelTest):
    skip_tests(test_class, WEIGHT_NAME_TESTS, "")
