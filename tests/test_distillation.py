"""Logit distillation (`ats_hf.distillation`): the loss, the frozen teacher inside `Trainer`, and the example script's
--distill_from / --distillation_* options and its offline synthetic-digits data source."""

import copy
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from datasets import Dataset
from hf_fixtures import load_example, tiny_ats_classifier, tiny_image_processor, write_image_folder
from safetensors.torch import load_file
from transformers import TrainingArguments

from ats_hf import AtsViTForImageClassification
from ats_hf.distillation import DistillationTrainer, distillation_loss


@pytest.fixture(scope="module")
def example():
    return load_example()


def test_loss_equals_the_hand_computed_value():
    # One image, two classes: student uniform, teacher logits (ln 3, 0), label 0, alpha 0.25, T 2.
    student, teacher, labels = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]), torch.tensor([0])
    # teacher / T = (ln 3 / 2, 0): softmax = (sqrt 3, 1) / (sqrt 3 + 1); student / T stays uniform.
    p = (math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1))
    kl = sum(q * math.log(q / 0.5) for q in p)
    expected = 0.75 * math.log(2.0) + 0.25 * 4 * kl
    assert distillation_loss(student, teacher, labels, alpha=0.25, temperature=2.0).item() == pytest.approx(
        expected, rel=1e-6
    )
    # T = 1, alpha = 1: the distillation term alone, KL((3/4, 1/4) || (1/2, 1/2)).
    kl_t1 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert distillation_loss(student, teacher, labels, alpha=1.0, temperature=1.0).item() == pytest.approx(kl_t1)


def test_loss_is_a_batch_mean_and_zero_kl_when_student_equals_teacher():
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    ce = F.cross_entropy(logits, labels)
    assert distillation_loss(logits, logits, labels, alpha=0.5, temperature=3.0).item() == pytest.approx(
        0.5 * ce.item(), rel=1e-5
    )
    per_image = [distillation_loss(logits[i : i + 1], -logits[i : i + 1], labels[i : i + 1], 0.7, 2.0)
                 for i in range(5)]
    batch = distillation_loss(logits, -logits, labels, alpha=0.7, temperature=2.0)
    assert batch.item() == pytest.approx(torch.stack(per_image).mean().item(), rel=1e-5)


def test_alpha_zero_is_the_models_own_cross_entropy(images):
    model = tiny_model()
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():
        output = model(pixel_values=images, labels=labels)
    teacher_logits = torch.randn_like(output.logits)
    loss = distillation_loss(output.logits, teacher_logits, labels, alpha=0.0, temperature=2.0)
    assert loss.item() == pytest.approx(output.loss.item(), rel=1e-6)
    smoothed = distillation_loss(output.logits, teacher_logits, labels, 0.0, 2.0, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(F.cross_entropy(output.logits, labels, label_smoothing=0.1).item())


@pytest.mark.parametrize(
    "alpha, temperature, message",
    [(1.5, 2.0, "alpha=1.5 is outside [0, 1]"), (-0.1, 2.0, "alpha=-0.1 is outside [0, 1]"),
     (0.5, 0.0, "temperature=0.0 must be > 0"), (0.5, float("nan"), "temperature=nan must be > 0")],
)
def test_bad_settings_raise_naming_value_and_range(tmp_path, alpha, temperature, message):
    logits = torch.zeros(1, 3)
    with pytest.raises(ValueError, match=re.escape(message)):
        distillation_loss(logits, logits, torch.tensor([0]), alpha=alpha, temperature=temperature)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=re.escape(message)):
        DistillationTrainer(model=tiny_model(), args=args, teacher=tiny_model(), alpha=alpha, temperature=temperature)


def tensor_dataset(num_images: int = 8, num_labels: int = 5) -> Dataset:
    pixel_values = torch.randn(num_images, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(num_images) % num_labels
    return Dataset.from_dict({"pixel_values": pixel_values.numpy(), "labels": labels.numpy()}).with_format("torch")


def test_the_teacher_stays_frozen_and_out_of_the_checkpoints(tmp_path):
    student, teacher = tiny_model(), tiny_model(ats_layers=[])
    with torch.no_grad():  # a teacher that differs from the student, so that the KL term has a gradient
        teacher.classifier.weight.mul_(-2.0)
    teacher_before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(student.state_dict())
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, save_steps=2,
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
    )
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=tensor_dataset(), teacher=teacher, alpha=0.9, temperature=2.0
    )
    trainer.train()

    assert trainer.teacher is teacher and not teacher.training
    for name, parameter in teacher.named_parameters():
        assert not parameter.requires_grad and parameter.grad is None, name
        assert torch.equal(parameter, teacher_before[name]), name
    assert not all(torch.equal(value, student_before[name]) for name, value in student.state_dict().items())

    trainer.save_model(tmp_path / "final")
    for saved in (load_file(tmp_path / "final" / "model.safetensors"),
                  load_file(tmp_path / "checkpoint-2" / "model.safetensors")):
        assert set(saved) == set(student.state_dict()), "only the student's tensors"
        assert torch.equal(saved["classifier.weight"], student.classifier.weight.detach())


def test_a_gradient_accumulation_step_equals_one_large_batch(tmp_path):
    """The loss is a per-batch mean: with 2 x 4 accumulated, the update equals one step on the batch of 8."""

    def one_step(batch_size: int, accumulation: int, name: str):
        student = tiny_model()
        args = TrainingArguments(
            output_dir=str(tmp_path / name), per_device_train_batch_size=batch_size, max_steps=1,
            gradient_accumulation_steps=accumulation, learning_rate=1e-2, report_to="none", use_cpu=True,
            disable_tqdm=True, save_strategy="no", seed=0, optim="sgd", max_grad_norm=0.0,
        )
        teacher = tiny_model(ats_layers=[])
        DistillationTrainer(
            model=student, args=args, train_dataset=tensor_dataset(), teacher=teacher, alpha=0.5, temperature=2.0
        ).train()
        return student.classifier.weight.detach()

    torch.testing.assert_close(one_step(4, 2, "accumulated"), one_step(8, 1, "large"), atol=1e-6, rtol=1e-5)


def test_example_distills_from_dense_offline_and_writes_a_loadable_checkpoint(example, tmp_path):
    start = tmp_path / "start"
    tiny_ats_classifier(ats_layers=[1, 2, 3]).save_pretrained(start)
    tiny_image_processor().save_pretrained(start)
    write_image_folder(tmp_path / "train", per_class=4)
    write_image_folder(tmp_path / "validation", per_class=2, seed=500)
    trainer = example.main([
        "--model_name_or_path", str(start), "--train_dir", str(tmp_path / "train"),
        "--validation_dir", str(tmp_path / "validation"), "--cache_dir", str(tmp_path / "cache"),
        "--output_dir", str(tmp_path / "out"), "--distill_from", "dense", "--distillation_alpha", "0.7",
        "--distillation_temperature", "3", "--do_train", "--do_eval", "--max_steps", "3",
        "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--logging_steps", "1",
        "--report_to", "none", "--disable_tqdm", "true", "--seed", "0",
    ])
    assert isinstance(trainer, DistillationTrainer)
    assert (trainer.alpha, trainer.temperature) == (0.7, 3.0)
    assert trainer.teacher.config.ats_layers == [] and trainer.model.config.ats_layers == [1, 2, 3]
    start_weights = load_file(start / "model.safetensors")
    assert all(torch.equal(value, start_weights[name]) for name, value in trainer.teacher.state_dict().items())
    assert len([entry for entry in trainer.state.log_history if "loss" in entry]) == 3

    saved = AtsViTForImageClassification.from_pretrained(tmp_path / "out")
    assert saved.config.ats_layers == [1, 2, 3]
    for name, value in saved.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[name]), name
    assert not torch.equal(saved.classifier.weight, start_weights["classifier.weight"])


def test_example_checks_the_dense_teacher_predicts_the_dataset_classes(example, tmp_path):
    """`--distill_from dense` teaches with the starting checkpoint's own head: refused, before training, when that
    head predicts the classes in another order or there is no head at all."""
    write_image_folder(tmp_path / "train", per_class=2)
    reordered = tiny_ats_classifier()
    labels = list(reversed(reordered.config.id2label.values()))
    reordered.config.id2label, reordered.config.label2id = dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}
    reordered.save_pretrained(tmp_path / "reordered")
    tiny_image_processor().save_pretrained(tmp_path / "reordered")
    backbone = tiny_ats_classifier().vit
    backbone.save_pretrained(tmp_path / "backbone")
    tiny_image_processor().save_pretrained(tmp_path / "backbone")
    for start, message in (("reordered", r"predicts 3 classes .*fine-tune it first"),
                           ("backbone", "has no image-classification head to teach with")):
        with pytest.raises(example.ScriptError, match=rf"--distill_from 'dense' \(the starting checkpoint .*{message}"):
            example.main([
                "--model_name_or_path", str(tmp_path / start), "--train_dir", str(tmp_path / "train"),
                "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / f"out-{start}"),
                "--distill_from", "dense", "--do_train", "--max_steps", "1", "--report_to", "none",
            ])
        assert not (tmp_path / f"out-{start}").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--distillation_alpha", "1.5"], "distillation alpha=1.5 is outside [0, 1]"),
        (["--distillation_temperature", "0"], "distillation temperature=0.0 must be > 0"),
    ],
)
def test_example_rejects_bad_distillation_values_in_one_line(example, capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        example.parse_args(["--model_name_or_path", "m", "--train_dir", "t", "--distill_from", "dense", *argv])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and ": error: " in error and message in error


def test_example_synthetic_digits_source_is_offline_and_uses_the_test_split(example):
    from ats_hf.data import DEFAULT_MODEL_DIR
    from ats_hf.data.synthetic_digits import generate, test_split

    model_args, data_args, _ = example.parse_args([
        "--model_name_or_path", str(DEFAULT_MODEL_DIR), "--dataset_name", "synthetic-digits",
        "--max_train_samples", "5", "--max_eval_samples", "3", "--output_dir", "unused", "--report_to", "none",
    ])
    dataset = example.load_data(data_args, model_args, seed=7)
    assert (len(dataset["train"]), len(dataset["validation"])) == (5, 3)
    assert dataset["train"].features["label"].names == [str(i) for i in range(10)]
    test_images, test_labels = test_split(3)
    validation = dataset["validation"]
    assert validation["label"] == test_labels.tolist()
    assert all(torch.equal(torch.from_numpy(image_array(image).copy()), expected)
               for image, expected in zip(validation["image"], test_images, strict=True))
    # Training images: renderings of the training digits, a pure function of the seed.
    rendered, rendered_labels = generate("train", 5, seed=7 * 1_000_003)
    assert dataset["train"]["label"] == rendered_labels.tolist()
    assert all(torch.equal(torch.from_numpy(image_array(image).copy()), expected)
               for image, expected in zip(dataset["train"]["image"], rendered, strict=True))
    assert not torch.equal(generate("train", 5, seed=8 * 1_000_003)[0], rendered)


def image_array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))
