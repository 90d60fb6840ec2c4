"""transformers' own ModelTesterMixin run against ATS-ViViT (a development check; see
`scripts/run_transformers_model_tests.sh` and `ats_model_testing.py`).

Videos of 2 frames of 16 px in tubelets of 2 x 2 x 2: 64 tubelets, as the image families' 64 patches. Two classes:
`ats_layers=[]` (must behave exactly like ViViT) and ATS in layers 0 and 1 keeping at most 24 of 65 tokens.
"""

import unittest

from transformers.models.auto.modeling_auto import (
    MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

import ats_hf  # noqa: F401  (registers the families with the Auto classes)
from ats_hf import AtsVivitConfig, AtsVivitForVideoClassification, AtsVivitModel

from .ats_model_testing import AtsModelTestMixin, AtsVisionModelTester, skip_common_tests

MODEL_MAPPING_NAMES.setdefault("ats_vivit", "AtsVivitModel")
MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES.setdefault("ats_vivit", "AtsVivitForVideoClassification")


class AtsVideoModelTester(AtsVisionModelTester):
    """The image tester's sizes, with videos of `num_frames` frames cut into 2 x 2 x 2 tubelets."""

    num_frames = 2
    tubelet_size = [2, 2, 2]

    def geometry(self) -> dict:
        return {"num_frames": self.num_frames, "tubelet_size": self.tubelet_size}

    def input_shape(self) -> list[int]:
        return [self.batch_size, self.num_frames, self.num_channels, self.image_size, self.image_size]


class _AtsVivitCommonTests(AtsModelTestMixin):
    model_tester_class = AtsVideoModelTester
    config_class = AtsVivitConfig
    all_model_classes = (AtsVivitModel, AtsVivitForVideoClassification)
    config_kwargs = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}


class AtsVivitNoSamplingModelTest(_AtsVivitCommonTests, unittest.TestCase):
    ats_layers = []


class AtsVivitModelTest(_AtsVivitCommonTests, unittest.TestCase):
    ats_layers = [0, 1]
    ats_max_tokens = 24


skip_common_tests(AtsVivitNoSamplingModelTest, AtsVivitModelTest)
