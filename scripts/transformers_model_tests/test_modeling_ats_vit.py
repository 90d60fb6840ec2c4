"""transformers' own ModelTesterMixin run against ATS-ViT (a development check, not part of the README's test run).

`scripts/run_transformers_model_tests.sh` places this file inside the `tests/` tree of the transformers source
release that matches the installed version and runs it there. Two classes:
- `AtsViTNoSamplingModelTest`: `ats_layers=[]`, where ATS-ViT must behave exactly like ViT: every applicable test
  must pass.
- `AtsViTModelTest`: ATS in layers 0 and 1 keeping at most 24 of 65 tokens. Tests that assume every layer keeps
  the input's sequence length are listed in `SHRINKING_SEQUENCE_TESTS` with the reason; everything else must pass.
"""

import re
import unittest

import torch
from torch import nn
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

import ats_hf  # noqa: F401  (registers ats_vit with the Auto classes)
from ats_hf import AtsViTConfig, AtsViTForImageClassification, AtsViTModel

from ...test_configuration_common import ConfigTester
from ...test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

# transformers' tests treat a class by the mappings it is listed in (base models are not trained, classifiers get
# labels); an upstream model is listed there, ours is registered at run time: list it the same way.
MODEL_MAPPING_NAMES.setdefault("ats_vit", "AtsViTModel")
MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.setdefault("ats_vit", "AtsViTForImageClassification")

# Tests that compare hidden-state or attention shapes with one fixed sequence length for every layer: an ATS layer
# outputs fewer rows (real kept tokens packed to the front, padding masked), so those shapes differ by design.
SHRINKING_SEQUENCE_TESTS = {
    "test_attention_outputs": "attention maps of layers after an ATS layer have fewer query rows and keys",
    "test_hidden_states_output": "hidden states after an ATS layer have fewer rows",
}
# The eager-vs-sdpa tests written for text pad the last sequence on the left: positions 0 and 1 masked. Position 0 is
# CLS, which ATS-ViT refuses to mask (ValueError: every image needs its CLS token); those variants cannot apply.
CLS_MASKING_TESTS = [
    name for name in dir(ModelTesterMixin)
    if name.startswith("test_eager_matches_sdpa_inference_") and re.search(r"_pad_left(_sdpa_kernels)?$", name)
]


class AtsViTModelTester:
    """Tiny ATS-ViT configs and inputs: 16 px images, 2 px patches (65 tokens), 2 layers."""

    def __init__(self, parent, ats_layers, ats_max_tokens=None, batch_size=5):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = 16
        self.patch_size = 2
        self.num_channels = 3
        self.is_training = True
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.intermediate_size = 37
        self.num_labels = 3
        self.seq_length = (self.image_size // self.patch_size) ** 2 + 1
        self.mask_length = self.seq_length - 1  # bool_masked_pos covers the patches
        self.num_masks = self.mask_length // 2
        self.ats_layers = ats_layers
        self.ats_max_tokens = ats_max_tokens

    def get_config(self) -> AtsViTConfig:
        return AtsViTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            num_labels=self.num_labels,
            ats_layers=self.ats_layers,
            ats_max_tokens=self.ats_max_tokens,
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size], self.num_labels)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class _AtsViTCommonTests(ModelTesterMixin):
    all_model_classes = (AtsViTModel, AtsViTForImageClassification)
    test_resize_embeddings = False
    ats_layers: list[int] = []
    ats_max_tokens = None

    def setUp(self):
        self.model_tester = AtsViTModelTester(self, self.ats_layers, self.ats_max_tokens)
        self.config_tester = ConfigTester(self, config_class=AtsViTConfig, has_text_modality=False, hidden_size=37)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # transformers adds labels for the classes in its own mappings; ours is registered at run time.
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels)
        if return_labels and model_class is AtsViTForImageClassification:
            inputs_dict["labels"] = torch.zeros(self.model_tester.batch_size, dtype=torch.long,
                                                device=inputs_dict["pixel_values"].device)
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model_get_set_embeddings(self):
        # A ViT's input embedding is a patch convolution, not an nn.Embedding (as upstream ViT's own test says).
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Module)
            output_embeddings = model.get_output_embeddings()
            self.assertTrue(output_embeddings is None or isinstance(output_embeddings, nn.Linear))


class AtsViTNoSamplingModelTest(_AtsViTCommonTests, unittest.TestCase):
    ats_layers = []


class AtsViTModelTest(_AtsViTCommonTests, unittest.TestCase):
    ats_layers = [0, 1]
    ats_max_tokens = 24


for _name, _reason in SHRINKING_SEQUENCE_TESTS.items():
    setattr(AtsViTModelTest, _name, unittest.skip(f"not applicable to token dropping: {_reason}")(
        getattr(ModelTesterMixin, _name)))
for _test_class in (AtsViTNoSamplingModelTest, AtsViTModelTest):
    for _name in CLS_MASKING_TESTS:
        setattr(_test_class, _name, unittest.skip("not applicable: the test masks position 0, the CLS token")(
            getattr(ModelTesterMixin, _name)))
    _test_class.test_reverse_loading_mapping = unittest.skip(
        "by design: save_pretrained writes current weight names (Trainer's resume and load_best_model_at_end do not "
        "restore checkpoints saved with the old names, an upstream bug); old names load (tests/test_loading.py)"
    )(ModelTesterMixin.test_reverse_loading_mapping)
del _test_class, _name, _reason
