"""transformers' own ModelTesterMixin run against ATS-CLIP (a development check; see
`scripts/run_transformers_model_tests.sh` and `ats_model_testing.py`).

The vision classes (`AtsCLIPVisionModel`, `AtsCLIPVisionModelWithProjection`, `AtsCLIPForImageClassification`, all
on `AtsCLIPVisionConfig`), with `ats_layers=[]` (must behave exactly like upstream: every applicable test passes) and
with ATS in layers 0 and 1 keeping at most 24 of 65 tokens; and the dual encoder `AtsCLIPModel` (`AtsCLIPConfig`:
CLIP's text tower, the ATS vision tower) in the same two variants, with the contrastive loss.
"""

import contextlib
import unittest

import torch
from transformers import CLIPTextConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

import ats_hf  # noqa: F401  (registers the families with the Auto classes)
from ats_hf import (
    AtsCLIPConfig,
    AtsCLIPForImageClassification,
    AtsCLIPModel,
    AtsCLIPVisionConfig,
    AtsCLIPVisionModel,
    AtsCLIPVisionModelWithProjection,
)

from ...test_modeling_common import ModelTesterMixin, ids_tensor
from .ats_model_testing import AtsModelTestMixin, AtsVisionModelTester, skip_common_tests, skip_tests

# transformers' tests treat a class by the mappings it is listed in (base models are not trained, classifiers get
# labels); an upstream model is listed there, ours is registered at run time: list it the same way.
MODEL_MAPPING_NAMES.setdefault("ats_clip_vision_model", "AtsCLIPVisionModel")
MODEL_MAPPING_NAMES.setdefault("ats_clip", "AtsCLIPModel")
MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.setdefault("ats_clip_vision_model", "AtsCLIPForImageClassification")


VISION_KWARGS = {"dropout": 0.1, "attention_dropout": 0.1, "projection_dim": 32}


class _AtsCLIPVisionCommonTests(AtsModelTestMixin):
    config_class = AtsCLIPVisionConfig
    all_model_classes = (AtsCLIPVisionModel, AtsCLIPVisionModelWithProjection, AtsCLIPForImageClassification)
    config_kwargs = VISION_KWARGS
    # CLIP's config checks that hidden_size is a multiple of num_attention_heads (12 by default; 37 is not).
    config_tester_kwargs = {"hidden_size": 36}
    # AtsCLIPForImageClassification pools the patch rows before post_layernorm, as upstream's CLIPForImageClassification
    # does; post_layernorm only feeds the pooled CLS output, so it gets no gradient there: check every other one.
    test_all_params_have_gradient = False

    def test_training(self):
        with _without_projection_model(self):
            super().test_training()

    def check_training_gradient_checkpointing(self, gradient_checkpointing_kwargs=None):
        with _without_projection_model(self):
            super().check_training_gradient_checkpointing(gradient_checkpointing_kwargs)


@contextlib.contextmanager
def _without_projection_model(test):
    """Leave AtsCLIPVisionModelWithProjection out of the training tests: it outputs image embeddings and no loss, as
    upstream's CLIPVisionModelWithProjection (whose tests skip training)."""
    classes = test.all_model_classes
    test.all_model_classes = tuple(cls for cls in classes if cls is not AtsCLIPVisionModelWithProjection)
    try:
        yield
    finally:
        test.all_model_classes = classes


class AtsCLIPVisionNoSamplingModelTest(_AtsCLIPVisionCommonTests, unittest.TestCase):
    ats_layers = []


class AtsCLIPVisionModelTest(_AtsCLIPVisionCommonTests, unittest.TestCase):
    ats_layers = [0, 1]
    ats_max_tokens = 24


skip_common_tests(AtsCLIPVisionNoSamplingModelTest, AtsCLIPVisionModelTest)


class CLIPTextTester:
    """CLIP's own text tower, tiny: 5 texts of 7 tokens, right padding (at least one real token), 2 layers."""

    def __init__(self, batch_size):
        self.batch_size = batch_size
        self.seq_length = 7
        self.vocab_size = 99
        self.num_hidden_layers = 2

    def get_config(self) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=self.vocab_size, hidden_size=32, projection_dim=32, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=4, intermediate_size=37, dropout=0.1, attention_dropout=0.1,
            max_position_embeddings=512,
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        lengths = torch.randint(1, self.seq_length + 1, (self.batch_size,))
        attention_mask = (torch.arange(self.seq_length)[None] < lengths[:, None]).long()
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


class AtsCLIPModelTester:
    """Tiny AtsCLIPConfigs (CLIP's text tower, the ATS vision tower) and inputs (texts and images), with the loss."""

    def __init__(self, parent, ats_layers, ats_max_tokens=None):
        self.parent = parent
        self.vision_model_tester = AtsVisionModelTester(
            parent, AtsCLIPVisionConfig, ats_layers, ats_max_tokens, **VISION_KWARGS
        )
        self.batch_size = self.vision_model_tester.batch_size
        self.text_model_tester = CLIPTextTester(self.batch_size)
        self.is_training = True

    def get_config(self) -> AtsCLIPConfig:
        return AtsCLIPConfig(
            text_config=self.text_model_tester.get_config(), vision_config=self.vision_model_tester.get_config(),
            projection_dim=64,
        )

    def prepare_config_and_inputs_for_common(self):
        _, inputs = self.text_model_tester.prepare_config_and_inputs_for_common()
        _, image_inputs = self.vision_model_tester.prepare_config_and_inputs_for_common()
        return self.get_config(), {**inputs, **image_inputs, "return_loss": True}


class _AtsCLIPDualEncoderCommonTests(ModelTesterMixin):
    all_model_classes = (AtsCLIPModel,)
    test_resize_embeddings = False
    _is_composite = True
    ats_layers: list[int] = []
    ats_max_tokens = None

    def setUp(self):
        self.model_tester = AtsCLIPModelTester(self, self.ats_layers, self.ats_max_tokens)


class AtsCLIPNoSamplingModelTest(_AtsCLIPDualEncoderCommonTests, unittest.TestCase):
    ats_layers = []


class AtsCLIPModelTest(_AtsCLIPDualEncoderCommonTests, unittest.TestCase):
    ats_layers = [0, 1]
    ats_max_tokens = 24


# Tests that cannot apply to a dual encoder; upstream's CLIPModel fails them the same way (its own tests skip them).
# The ATS tower's hidden states, attentions and eager-vs-sdpa are tested in the vision classes above.
DUAL_ENCODER_TESTS = {
    "test_attention_outputs": "CLIPOutput has no attentions (they are in text_model_output, vision_model_output)",
    "test_hidden_states_output": "CLIPOutput has no hidden_states (they are in text_model_output, vision_model_output)",
    "test_retain_grad_hidden_states_attentions": "CLIPOutput has no hidden_states nor attentions",
    "test_model_get_set_embeddings": "CLIPModel has no single input embedding (get_input_embeddings raises)",
    **{
        name: "the test feeds the main input (input_ids) alone; a dual encoder also needs pixel_values"
        for name in dir(ModelTesterMixin) if name.startswith("test_eager_matches_sdpa_inference_")
    },
}
for _test_class in (AtsCLIPNoSamplingModelTest, AtsCLIPModelTest):
    skip_tests(_test_class, DUAL_ENCODER_TESTS)
del _test_class
