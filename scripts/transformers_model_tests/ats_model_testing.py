"""Shared parts of the ModelTesterMixin runs against the ATS families (ViT, DeiT, DINOv2, CLIP, ViViT); see
`scripts/run_transformers_model_tests.sh`, which copies this module beside the family test files.

The source release of transformers ships no `tests/models/*` files, so the upstream testers (`Dinov2ModelTester`,
...) cannot be subclassed: `AtsVisionModelTester` is a tiny tester in their style, for any ATS vision config.
`AtsModelTestMixin` is `ModelTesterMixin` with what every ATS vision family needs, and `skip_tests` marks the
tests that cannot apply, each with its reason.
"""

import re
import unittest

import torch
from parameterized import parameterized
from torch import nn

from ...test_configuration_common import ConfigTester
from ...test_modeling_common import (
    TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION,
    ModelTesterMixin,
    _test_eager_matches_sdpa_inference,
    floats_tensor,
    ids_tensor,
)

# Tests that compare hidden-state or attention shapes with one fixed sequence length for every layer: an ATS layer
# outputs fewer rows (real kept tokens packed to the front, padding masked), so those shapes differ by design.
SHRINKING_SEQUENCE_TESTS = {
    "test_attention_outputs": "attention maps of layers after an ATS layer have fewer query rows and keys",
    "test_hidden_states_output": "hidden states after an ATS layer have fewer rows",
}
# The eager-vs-sdpa tests written for text pad the last sequence on the left: positions 0 and 1 masked. Position 0 is
# CLS, which every ATS model refuses to mask (ValueError: every image needs its CLS token); those variants cannot
# apply.
CLS_MASKING_TESTS = {
    name: "the test masks position 0, the CLS token"
    for name in dir(ModelTesterMixin)
    if name.startswith("test_eager_matches_sdpa_inference_") and re.search(r"_pad_left(_sdpa_kernels)?$", name)
}
# The ATS models' save_pretrained defaults to save_original_format=False (modeling_ats_core.py).
WEIGHT_NAME_TESTS = {
    "test_reverse_loading_mapping": (
        "by design: save_pretrained writes current weight names (Trainer's resume and load_best_model_at_end do not "
        "restore checkpoints saved with the old names, an upstream bug); old names load (tests/test_loading.py, "
        "tests/test_family_*.py)"
    ),
}


class AtsVisionModelTester:
    """Tiny configs and inputs: 16 px images, 2 px patches (64 patches after the special tokens), 2 layers, 5 images.

    `config_kwargs` carries the family's own field names (dropouts, registers, ...)."""

    def __init__(
        self, parent, config_class, ats_layers, ats_max_tokens=None, num_special_tokens=1, batch_size=5,
        **config_kwargs,
    ):
        self.parent = parent
        self.config_class = config_class
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
        num_patches = (self.image_size // self.patch_size) ** 2
        self.seq_length = num_patches + num_special_tokens
        self.mask_length = num_patches  # bool_masked_pos covers the patches
        self.num_masks = num_patches // 2
        self.ats_layers = ats_layers
        self.ats_max_tokens = ats_max_tokens
        self.config_kwargs = config_kwargs

    def geometry(self) -> dict:
        """The config fields that cut an input into tokens."""
        return {"patch_size": self.patch_size}

    def input_shape(self) -> list[int]:
        return [self.batch_size, self.num_channels, self.image_size, self.image_size]

    def get_config(self):
        return self.config_class(
            image_size=self.image_size,
            **self.geometry(),
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            num_labels=self.num_labels,
            ats_layers=self.ats_layers,
            ats_max_tokens=self.ats_max_tokens,
            **self.config_kwargs,
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor(self.input_shape())
        labels = ids_tensor([self.batch_size], self.num_labels)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class AtsModelTestMixin(ModelTesterMixin):
    """ModelTesterMixin for an ATS vision family: set `config_class`, `all_model_classes`, `ats_layers`,
    `ats_max_tokens`, `num_special_tokens` and the family's `config_kwargs` (and `model_tester_class` for inputs that
    are not images)."""

    model_tester_class = AtsVisionModelTester
    config_class = None
    config_kwargs: dict = {}
    config_tester_kwargs: dict = {"hidden_size": 37}
    num_special_tokens = 1
    test_resize_embeddings = False
    ats_layers: list[int] = []
    ats_max_tokens = None

    def setUp(self):
        self.model_tester = self.model_tester_class(
            self, self.config_class, self.ats_layers, self.ats_max_tokens, self.num_special_tokens,
            **self.config_kwargs,
        )
        self.config_tester = ConfigTester(
            self, config_class=self.config_class, has_text_modality=False,
            **{**self.config_kwargs, **self.config_tester_kwargs},
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_ats_sequence_length(self):
        """The variant does what it says: every token without ATS layers, at most ats_max_tokens rows with them."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = self.all_model_classes[0](config).eval()
        with torch.no_grad():
            rows = model(**inputs).last_hidden_state.shape[1]
        if self.ats_layers:
            self.assertLessEqual(rows, self.ats_max_tokens)
        else:
            self.assertEqual(rows, self.model_tester.seq_length)

    @parameterized.expand(TEST_EAGER_MATCHES_SDPA_INFERENCE_PARAMETERIZATION)
    def test_eager_matches_sdpa_inference(
        self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
    ):
        """transformers' eager-vs-sdpa comparison; in half precision with ATS in the first sampling layer only.

        The first ATS layer scores tokens from the projections of identical inputs, so both kernels keep the same
        tokens. A later ATS layer scores the earlier layers' outputs, which the two kernels round differently in
        half precision (differently again on CPUs with and without bf16 instructions); inverse transform sampling is
        discontinuous, so a near-tie can flip one kept token and every later row moves (measured: 3 of 40 random
        tiny models in bf16 with ATS in layers 0 and 1, none with ATS in layer 0). float32 keeps every ATS layer."""
        half_precision = dtype in ("fp16", "bf16")
        ats_layers = self.model_tester.ats_layers
        if half_precision:
            self.model_tester.ats_layers = ats_layers[:1]
        try:
            _test_eager_matches_sdpa_inference(
                self, name, dtype, padding_side, use_attention_mask, output_attentions, enable_kernels
            )
        finally:
            self.model_tester.ats_layers = ats_layers

    def test_model_get_set_embeddings(self):
        # A ViT's input embedding is a patch convolution, not an nn.Embedding (as upstream's own tests say).
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Module)
            output_embeddings = model.get_output_embeddings()
            self.assertTrue(output_embeddings is None or isinstance(output_embeddings, nn.Linear))


def skip_tests(test_class, reasons: dict[str, str], prefix: str = "not applicable: ") -> None:
    """Replace each named ModelTesterMixin test of `test_class` by a skip with its reason."""
    for name, reason in reasons.items():
        test = getattr(test_class, name)
        setattr(test_class, name, unittest.skip(prefix + reason)(test))


def skip_common_tests(no_sampling_class, sampling_class) -> None:
    """The skips every ATS family shares: CLS masking and weight-name reversal in both variants, fixed sequence
    lengths in the sampling one."""
    skip_tests(sampling_class, SHRINKING_SEQUENCE_TESTS, "not applicable to token dropping: ")
    for test_class in (no_sampling_class, sampling_class):
        skip_tests(test_class, CLS_MASKING_TESTS)
        skip_tests(test_class, WEIGHT_NAME_TESTS, "")
