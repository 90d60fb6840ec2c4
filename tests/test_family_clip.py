"""The CLIP family: ATS in CLIP's vision tower, checked against transformers' CLIP models built from the same weights
and against hand-computed token selection; loading, Auto classes, pipelines, remote code, convert and GMACs."""

import json
import textwrap

import pytest
import torch
from conftest import image_folder, peaky_weights_
from hf_fixtures import random_image, run_without_ats_hf
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
    CLIPConfig,
    CLIPForImageClassification,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    pipeline,
)

from ats_hf import (
    AtsCLIPConfig,
    AtsCLIPForImageClassification,
    AtsCLIPModel,
    AtsCLIPVisionConfig,
    AtsCLIPVisionModel,
    AtsCLIPVisionModelWithProjection,
    AtsSettings,
    inverse_transform_sampling,
)
from ats_hf.benchmark.engine import speed_model
from ats_hf.evaluation import evaluate_methods, tensor_images
from ats_hf.evaluation.zero_shot import zero_shot_objective
from ats_hf.hub.checkpoint import ats_model_class, load_ats_classifier
from ats_hf.hub.convert import convert_to_ats
from ats_hf.methods import AtsMethod, dense_method
from ats_hf_cli import main

# 32 px images, 4 px patches: 64 patches + CLS = 65 tokens; default ATS layers 1..3.
VISION = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=32,
              patch_size=4, projection_dim=16)
# A character-level BPE vocabulary (no merges): enough for "this is a photo of a cat." without unknown tokens.
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CHARACTERS = "abcdefghijklmnopqrstuvwxyz."
VOCAB = {BOS: 0, EOS: 1, **{token: 2 + i for i, token in enumerate([*CHARACTERS, *(c + "</w>" for c in CHARACTERS)])}}
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=len(VOCAB),
            max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=16)
LABELS = ["cat", "dog", "fox"]
CLASSIFIER_LABELS = dict(id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)})


def clip_config(**overrides) -> CLIPConfig:
    return CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=16, **overrides)


def processor() -> CLIPProcessor:
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPProcessor(image_processor=image_processor, tokenizer=CLIPTokenizer(vocab=VOCAB, merges=[]))


def eval_ats(model, attn_implementation: str = "sdpa"):
    model.set_attn_implementation(attn_implementation)
    return model.eval()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """Tiny upstream CLIP checkpoints sharing one (peaky) vision tower: CLIPModel, CLIPVisionModel (current and
    legacy `vision_model.` weight names) and CLIPForImageClassification, each with a processor."""
    root = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    clip = CLIPModel(clip_config()).eval()
    peaky_weights_(clip.vision_model)
    vision = CLIPVisionModel(clip.config.vision_config).eval()
    vision.load_state_dict(clip.vision_model.state_dict())
    classifier = CLIPForImageClassification(clip_config(**CLASSIFIER_LABELS)).eval()
    classifier.vision_model.load_state_dict(clip.vision_model.state_dict())
    for name, model in (("clip", clip), ("vision", vision), ("classifier", classifier)):
        model.save_pretrained(root / name)
        processor().save_pretrained(root / name)
    # transformers 4.x CLIPVisionModel checkpoints (most on the Hub) name every weight `vision_model.<name>`.
    (root / "legacy").mkdir()
    weights = load_file(root / "vision" / "model.safetensors")
    legacy = {f"vision_model.{name}": weight for name, weight in weights.items()}
    save_file(legacy, root / "legacy" / "model.safetensors", {"format": "pt"})
    (root / "legacy" / "config.json").write_text((root / "vision" / "config.json").read_text())
    return dict(root=root, clip=clip, vision=vision, classifier=classifier)


@pytest.fixture(scope="module")
def ats_clip(upstream):
    """The ATS CLIPModel of the upstream CLIPModel (ATS in layers 1..3, K = all tokens), saved with its processor."""
    directory = upstream["root"] / "ats-clip"
    model = eval_ats(AtsCLIPModel.from_pretrained(upstream["root"] / "clip"))
    model.save_pretrained(directory)
    processor().save_pretrained(directory)
    return directory


def text_inputs():
    return processor().tokenizer([f"this is a photo of a {label}." for label in LABELS], padding=True,
                                 return_tensors="pt")


def test_configs_read_upstream_ones(upstream):
    root = upstream["root"]
    config = AtsCLIPConfig.from_pretrained(root / "clip")
    assert config.model_type == "ats_clip" and isinstance(config.vision_config, AtsCLIPVisionConfig)
    assert config.vision_config.ats_layers == [1, 2, 3] and config.text_config.vocab_size == len(VOCAB)
    for source in ("clip", "vision", "legacy"):
        vision = AtsCLIPVisionConfig.from_pretrained(root / source)
        assert (vision.model_type, vision.hidden_size, vision.patch_size) == ("ats_clip_vision_model", 32, 4)
    labelled = AtsCLIPVisionConfig.from_pretrained(root / "classifier")  # the labels are on the top level
    assert labelled.id2label == dict(enumerate(LABELS)) and labelled.num_labels == 3
    assert AtsCLIPVisionConfig.from_pretrained(root / "clip", ats_layers=[2]).ats_layers == [2]
    with pytest.raises(ValueError, match=r"ats_layers=\[4\].*outside 0..3"):
        AtsCLIPVisionConfig(**VISION, ats_layers=[4])


@pytest.mark.parametrize(
    ("ats_class", "upstream_class", "source"),
    [
        (AtsCLIPVisionModel, CLIPVisionModel, "vision"),
        (AtsCLIPVisionModel, CLIPVisionModel, "legacy"),
        (AtsCLIPVisionModel, CLIPVisionModel, "clip"),
        (AtsCLIPVisionModelWithProjection, CLIPVisionModelWithProjection, "clip"),
        (AtsCLIPForImageClassification, CLIPForImageClassification, "classifier"),
    ],
)
def test_vision_classes_load_upstream_checkpoints_and_match_without_ats(upstream, images, ats_class, upstream_class,
                                                                        source):
    directory = upstream["root"] / source
    model, info = ats_class.from_pretrained(directory, ats_layers=[], output_loading_info=True)
    assert info["missing_keys"] == set() or info["missing_keys"] == []
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    ats_class.from_pretrained(directory)  # strict loading: raises on any missing or unexpected weight
    reference = upstream_class.from_pretrained(directory).eval()
    with torch.no_grad():
        ours, theirs = eval_ats(model)(images), reference(images)
    for field in ("last_hidden_state", "pooler_output", "image_embeds", "logits"):
        if getattr(theirs, field, None) is not None:
            assert (getattr(ours, field) - getattr(theirs, field)).abs().max() <= 1e-5, field


def test_clip_model_matches_upstream_without_ats_and_loads_original_format(upstream, images, tmp_path):
    upstream["clip"].save_pretrained(tmp_path / "original", save_original_format=True)
    inputs = text_inputs()
    with torch.no_grad():
        expected = upstream["clip"](pixel_values=images, **inputs).logits_per_image
        for directory in (upstream["root"] / "clip", tmp_path / "original"):
            model = AtsCLIPModel.from_pretrained(directory)
            model.set_ats(layers=[])
            got = eval_ats(model)(pixel_values=images, **inputs).logits_per_image
            assert (got - expected).abs().max() <= 1e-5
    assert model.config.vision_config.ats_layers == [] and model.vision_model.config is model.config.vision_config


def test_kept_tokens_match_a_hand_computed_reference(upstream, images):
    """ATS in the last layer: the kept tokens are the official sampler's on the hand-computed scores, and every kept
    row (and the pooled CLS) equals upstream CLIP's output row for that token."""
    plain = upstream["vision"]
    model = eval_ats(AtsCLIPVisionModel.from_pretrained(upstream["root"] / "vision", ats_layers=[3],
                                                        ats_max_tokens=40), "eager")
    with torch.no_grad():
        output = model(images)
        reference = plain(images, output_hidden_states=True)
        layer = plain.encoder.layers[3]
        normed = layer.layer_norm1(reference.hidden_states[3])  # the input of layer 3
        attention = layer.self_attn
        heads, head_dim = attention.num_heads, attention.head_dim
        query = attention.q_proj(normed[:, :1]).view(-1, heads, 1, head_dim)
        keys = attention.k_proj(normed).view(len(images), -1, heads, head_dim).transpose(1, 2)
        cls_row = (query @ keys.transpose(2, 3) * head_dim**-0.5).softmax(dim=-1)[:, :, 0]  # (B, H, 65)
        scores = cls_row[:, :, 1:].sum(dim=1) * attention.v_proj(normed)[:, 1:].norm(dim=-1)
        scores = scores / scores.sum(dim=1, keepdim=True)
        kept = inverse_transform_sampling(scores, None, 40 - 1 + 1)  # K - S + 1 with S = 1
    for image in range(len(images)):
        expected = kept[image].nonzero().flatten()
        sampled = output.sampled_token_indices[image, 0]
        assert torch.equal(sampled[sampled >= 0], expected)
        rows = torch.cat([torch.zeros(1, dtype=torch.long), expected + 1])  # CLS always first
        real = output.token_mask[image].bool()
        assert real.sum() == len(rows) == output.num_tokens[image, -1]
        got = output.last_hidden_state[image, real]
        assert (got - reference.last_hidden_state[image, rows]).abs().max() <= 1e-5
    assert (output.pooler_output - reference.pooler_output).abs().max() <= 1e-5
    assert len(set(output.num_tokens[:, -1].tolist())) > 1 and output.num_tokens[:, -1].max() < 40


def test_top_k_keeps_the_highest_scores_and_special_token_is_always_kept(upstream, images):
    model = eval_ats(AtsCLIPVisionModel.from_pretrained(upstream["root"] / "vision", ats_layers=[1, 3],
                                                        ats_max_tokens=[33, 9], ats_sampler="top_k"))
    with torch.no_grad():
        output = model(images)
    assert output.num_tokens.tolist() == [[65, 33, 33, 9]] * len(images)
    assert output.token_mask.all()  # fixed count: no padding, CLS in row 0
    with torch.no_grad():
        again = model(images[:1])
    assert torch.equal(again.sampled_token_indices, output.sampled_token_indices[:1])


def test_dense_output_gives_the_full_grid_and_the_same_predictions(upstream, images):
    root = upstream["root"] / "classifier"
    packed = eval_ats(AtsCLIPForImageClassification.from_pretrained(root))
    dense = eval_ats(AtsCLIPForImageClassification.from_pretrained(root, ats_dense_output=True))
    with torch.no_grad():
        expected, got = packed(images), dense(images, output_hidden_states=True)
        base = dense.vision_model(images)
    assert base.last_hidden_state.shape == (len(images), 65, 32) and base.token_mask.shape == (len(images), 65)
    assert (got.logits - expected.logits).abs().max() <= 1e-5  # the head still averages the kept patches only
    with torch.no_grad():  # the hand-computed head: mean of the kept patch rows of the packed output
        vision = packed.vision_model(images)
        mask = vision.token_mask[:, 1:, None].float()
        mean = (vision.last_hidden_state[:, 1:] * mask).sum(dim=1) / mask.sum(dim=1)
    assert (packed.classifier(mean) - expected.logits).abs().max() <= 1e-5


def test_auto_classes_build_the_ats_models(upstream, ats_clip, tmp_path):
    assert type(AutoModelForZeroShotImageClassification.from_pretrained(ats_clip)) is AtsCLIPModel
    assert type(AutoModel.from_pretrained(ats_clip)) is AtsCLIPModel
    assert type(AutoConfig.from_pretrained(ats_clip).vision_config) is AtsCLIPVisionConfig
    classifier = AtsCLIPForImageClassification.from_pretrained(upstream["root"] / "classifier")
    classifier.save_pretrained(tmp_path / "classifier")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "classifier")
    assert type(loaded) is AtsCLIPForImageClassification
    assert type(AutoModel.from_pretrained(tmp_path / "classifier")) is AtsCLIPVisionModel
    auto_map = json.loads((ats_clip / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForZeroShotImageClassification"] == "modeling_ats_clip.AtsCLIPModel"
    assert auto_map["AutoConfig"] == "configuration_ats_clip.AtsCLIPConfig"


def test_zero_shot_pipeline_batches_like_one_image_at_a_time(ats_clip):
    classify = pipeline("zero-shot-image-classification", model=str(ats_clip))
    assert type(classify.model) is AtsCLIPModel
    pictures = [random_image(seed, size=(36, 30)) for seed in range(3)]
    pixel_values = processor().image_processor(pictures, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        output = classify.model(pixel_values=pixel_values, **text_inputs())
    assert len(set(output.vision_model_output.num_tokens[:, -1].tolist())) > 1
    batched = classify(pictures, candidate_labels=LABELS, hypothesis_template="this is a photo of a {}.",
                       batch_size=2)
    for index, picture in enumerate(pictures):
        alone = classify(picture, candidate_labels=LABELS, hypothesis_template="this is a photo of a {}.")
        assert [entry["label"] for entry in batched[index]] == [entry["label"] for entry in alone]
        assert [entry["score"] for entry in batched[index]] == pytest.approx([entry["score"] for entry in alone],
                                                                             abs=1e-6)
        expected = output.logits_per_image[index].softmax(dim=-1)
        expected = dict(zip(LABELS, expected.tolist(), strict=True))
        assert {e["label"]: e["score"] for e in alone} == pytest.approx(expected, abs=1e-6)


def test_the_zero_shot_objective_is_clips_own_zero_shot_accuracy(ats_clip):
    """Scored through the vision tower, the zero-shot objective equals the top-1 of CLIPModel's logits_per_image
    with the same prompts, dense and with ATS (settings applied to the tower are the CLIPModel's)."""
    clip = eval_ats(AtsCLIPModel.from_pretrained(ats_clip))
    pictures = [random_image(seed, size=(36, 30)) for seed in range(9)]
    pixel_values = processor().image_processor(pictures, return_tensors="pt")["pixel_values"]
    labels = torch.tensor([0, 1, 2] * 3)
    vision, objective = zero_shot_objective(clip, processor().tokenizer, LABELS, "this is a photo of a {}.")
    ats = AtsSettings((1, 2, 3), 30)
    evaluations, _ = evaluate_methods(vision, [dense_method(), AtsMethod("ats", ats)],
                                      tensor_images(pixel_values, labels), objective, batch_size=4)
    for evaluation, settings in zip(evaluations, (AtsSettings(), ats), strict=True):
        with torch.no_grad(), clip.vision_model.ats_settings_applied(settings):
            logits = clip(pixel_values=pixel_values, **text_inputs()).logits_per_image
        assert evaluation.scores.tolist() == (logits.argmax(-1) == labels).double().tolist()
    assert vision.vision_model is clip.vision_model and vision.config is clip.config.vision_config
    vision.set_ats(ats)
    assert clip.ats_settings == ats
    with pytest.raises(ValueError, match="exactly one"):
        zero_shot_objective(clip, processor().tokenizer, LABELS, "a photo")


def test_tune_chooses_settings_for_a_clip_model_by_zero_shot_accuracy(ats_clip, tmp_path, capsys):
    data = image_folder(tmp_path / "data", LABELS, per_class=4, size=36)
    output = tmp_path / "tuned"
    assert main(["tune", "--model", str(ats_clip), "--dataset", str(data), "--gmacs-budget", "0.8", "--no-speed",
                 "--tome-r", "4", "--prompt-template", "this is a photo of a {}.", "--output", str(output)]) == 0
    report = capsys.readouterr().out
    assert "objective: zero-shot" in report and "ToMe r=4" in report
    config = json.loads((output / "config.json").read_text())
    assert config["architectures"] == ["AtsCLIPModel"] and config["vision_config"]["ats_layers"]
    saved = json.loads((output / "tune.json").read_text())
    assert saved["objective"] == "zero-shot" and saved["chosen"]["calibration"]["gmacs_fraction"] <= 0.8
    classify = pipeline("zero-shot-image-classification", model=str(output))  # the tokenizer was saved too
    assert type(classify.model) is AtsCLIPModel and classify.model.ats_settings.layers


@pytest.mark.parametrize("argv, message", [
    (["--prompt-template", "a photo"], "'a photo' must hold exactly one {} for the class name"),
    (["--objective", "accuracy"], "has no classifier head"),
])
def test_zero_shot_mistakes_are_one_line(ats_clip, tmp_path, capsys, argv, message):
    data = image_folder(tmp_path / "data", LABELS, per_class=1, size=36)
    assert main(["benchmark", "--model", str(ats_clip), "--dataset", str(data), "--batch-sizes", *argv,
                 "--output-dir", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_zero_shot_is_refused_without_labels_and_for_other_models(ats_clip, upstream, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    random_image(0, size=(36, 30)).save(flat / "a.png")
    assert main(["benchmark", "--model", str(ats_clip), "--dataset", str(flat), "--batch-sizes", "--objective",
                 "zero-shot", "--output-dir", str(tmp_path / "out")]) == 2
    assert "objective 'zero-shot' needs labelled data" in capsys.readouterr().err
    data = image_folder(tmp_path / "data", LABELS, per_class=1, size=36)
    assert main(["benchmark", "--model", str(upstream["root"] / "vision"), "--dataset", str(data), "--batch-sizes",
                 "--objective", "zero-shot", "--output-dir", str(tmp_path / "out")]) == 2
    assert "is not a CLIP vision tower with projection" in capsys.readouterr().err


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from transformers import AutoModelForImageClassification, AutoModelForZeroShotImageClassification

    clip_dir, classifier_dir, inputs_file, outputs_file = sys.argv[1:]
    inputs = torch.load(inputs_file)
    clip = AutoModelForZeroShotImageClassification.from_pretrained(clip_dir, trust_remote_code=True).eval()
    classifier = AutoModelForImageClassification.from_pretrained(classifier_dir, trust_remote_code=True).eval()
    assert type(clip).__module__.startswith("transformers_modules."), type(clip).__module__
    assert not any(name.startswith("ats_hf") for name in sys.modules)
    with torch.no_grad():
        zero_shot = clip(**inputs)
        classified = classifier(pixel_values=inputs["pixel_values"])
    torch.save({"logits_per_image": zero_shot.logits_per_image,
                "num_tokens": zero_shot.vision_model_output.num_tokens,
                "logits": classified.logits}, outputs_file)
    """
)


def test_loads_with_trust_remote_code_where_ats_hf_cannot_be_imported(upstream, ats_clip, images, tmp_path):
    classifier = eval_ats(AtsCLIPForImageClassification.from_pretrained(upstream["root"] / "classifier",
                                                                        ats_max_tokens=0.5))
    classifier.save_pretrained(tmp_path / "classifier")
    assert {"modeling_ats_clip.py", "configuration_ats_clip.py", "modeling_ats_core.py"} <= {
        path.name for path in (tmp_path / "classifier").iterdir()
    }
    inputs = {"pixel_values": images, **text_inputs()}
    torch.save(inputs, tmp_path / "inputs.pt")
    run = run_without_ats_hf(
        REMOTE_SCRIPT, ats_clip, tmp_path / "classifier", tmp_path / "inputs.pt", tmp_path / "outputs.pt", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-4000:]
    remote = torch.load(tmp_path / "outputs.pt")
    local = eval_ats(AtsCLIPModel.from_pretrained(ats_clip))
    with torch.no_grad():
        expected = local(**inputs)
        expected_logits = classifier(images).logits
    assert torch.equal(remote["logits_per_image"], expected.logits_per_image)
    assert torch.equal(remote["num_tokens"], expected.vision_model_output.num_tokens)
    assert torch.equal(remote["logits"], expected_logits)


def test_load_ats_classifier_and_convert_detect_clip(upstream, images, tmp_path):
    # Each checkpoint keeps what it is: no classifier head is invented for the image-text or the vision-only model.
    expected = {"clip": AtsCLIPModel, "vision": AtsCLIPVisionModel, "classifier": AtsCLIPForImageClassification}
    for source, model_class in expected.items():
        assert ats_model_class(upstream["root"] / source) is model_class
    for source in ("clip", "vision"):
        with pytest.raises(ValueError, match="without an image-classification head"):
            load_ats_classifier(upstream["root"] / source)
    # Fine-tuning starts from the image-text model's vision tower, with a new head.
    new_head = load_ats_classifier(upstream["root"] / "clip", allow_new_head=True, num_labels=3)
    assert type(new_head) is AtsCLIPForImageClassification
    vision = upstream["clip"].vision_model.state_dict()
    assert all(torch.equal(new_head.vision_model.state_dict()[name], weight) for name, weight in vision.items()
               if name in new_head.vision_model.state_dict())
    model = load_ats_classifier(upstream["root"] / "classifier", ats_layers=[2, 3], ats_max_tokens=0.5)
    assert type(model) is AtsCLIPForImageClassification and model.config.ats_layers == [2, 3]
    output = convert_to_ats(upstream["root"] / "classifier", tmp_path / "out", ats_layers=[2, 3], ats_max_tokens=0.5)
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "ats_clip_vision_model" and config["id2label"]["0"] == "cat"
    converted = eval_ats(AtsCLIPForImageClassification.from_pretrained(output))
    with torch.no_grad():
        assert torch.equal(converted(images).logits, eval_ats(model)(images).logits)


def test_speed_mode_geometries_build_clip_models():
    model = speed_model(dict(family="clip", image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64), num_labels=10)
    assert type(model) is AtsCLIPForImageClassification and model.config.ats_layers == [0, 1]


def test_new_heads_get_clips_initialisation():
    """A head missing from a checkpoint starts as upstream CLIP's would: normal with std hidden_size ** -0.5."""
    torch.manual_seed(0)
    classifier = AtsCLIPForImageClassification(AtsCLIPVisionConfig(**VISION, num_labels=50))
    projection = AtsCLIPVisionModelWithProjection(AtsCLIPVisionConfig(**VISION))
    for weight in (classifier.classifier.weight, projection.visual_projection.weight):
        assert weight.std().item() == pytest.approx(32**-0.5, rel=0.1)


def test_interpolated_positions_match_upstream_and_set_the_default_k(upstream):
    larger = torch.randn(2, 3, 48, 48)  # 144 patches + CLS
    model = eval_ats(AtsCLIPVisionModel.from_pretrained(upstream["root"] / "vision"))
    with torch.no_grad():
        sampled = model(larger, interpolate_pos_encoding=True)
        model.set_ats(layers=[])
        dense = model(larger, interpolate_pos_encoding=True)
        reference = upstream["vision"](larger, interpolate_pos_encoding=True)
    assert (dense.last_hidden_state - reference.last_hidden_state).abs().max() <= 1e-5
    assert sampled.num_tokens[:, 0].tolist() == [145, 145] and (sampled.num_tokens[:, -1] < 145).all()


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(upstream, images):
    model = AtsCLIPForImageClassification.from_pretrained(upstream["root"] / "classifier", ats_max_tokens=0.5).train()
    labels = torch.arange(len(images)) % 3
    gradients = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        model.zero_grad()
        loss = model(images, labels=labels).loss
        loss.backward()
        gradients.append((loss.detach(), model.vision_model.encoder.layers[1].self_attn.q_proj.weight.grad.clone()))
    assert torch.equal(gradients[0][0], gradients[1][0]) and torch.allclose(gradients[0][1], gradients[1][1])
    assert gradients[0][1].abs().sum() > 0
