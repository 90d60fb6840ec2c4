"""Fine-tuning with Trainer and accelerate, through examples/run_image_classification.py on tiny image folders."""

import json
import socket
import subprocess
import sys

import evaluate
import numpy as np
import pytest
import torch
from datasets import Dataset
from hf_fixtures import (
    EXAMPLE,
    load_example,
    save_plain_vit,
    subprocess_env,
    tiny_ats_classifier,
    tiny_image_processor,
    write_image_folder,
)
from PIL import Image
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from ats_hf import AtsViTForImageClassification
from ats_hf.flops import dense_gmacs, gmacs_per_image
from ats_hf.metrics import ATS_ACCURACY

NUM_VALIDATION_IMAGES = 9


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A plain ViT checkpoint, train (3 x 8) and validation (3 x 3) image folders, a shared datasets cache."""
    root = tmp_path_factory.mktemp("trainer")
    save_plain_vit(root / "vit")
    write_image_folder(root / "train", per_class=8)
    write_image_folder(root / "validation", per_class=NUM_VALIDATION_IMAGES // 3, seed=500)
    return root


@pytest.fixture(scope="module")
def example():
    return load_example()


def example_args(workspace, output_dir, *extra) -> list[str]:
    return [
        "--model_name_or_path", str(workspace / "vit"),
        "--train_dir", str(workspace / "train"),
        "--validation_dir", str(workspace / "validation"),
        "--cache_dir", str(workspace / "cache"),
        "--output_dir", str(output_dir),
        "--ats_layers", "1-3",
        "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "4",
        "--learning_rate", "3e-3",
        "--seed", "0",
        "--report_to", "none",
        "--disable_tqdm", "true",
        *extra,
    ]


def source_args(workspace) -> list[str]:
    return ["--model_name_or_path", str(workspace / "vit"), "--train_dir", str(workspace / "train"),
            "--report_to", "none"]


@pytest.mark.parametrize("layers", [["1-3"], ["1", "2", "3"], ["1,2", "3"]])
def test_example_takes_every_form_of_the_settings_grammar(example, workspace, layers):
    model_args, _, _ = example.parse_args(
        [*source_args(workspace), "--ats_layers", *layers, "--ats_max_tokens", "0.5", "all", "12", "--ats_sampler",
         "top_k"]
    )
    assert model_args.ats_config_overrides() == {
        "ats_layers": [1, 2, 3], "ats_max_tokens": [0.5, None, 12], "ats_sampler": "top_k"
    }
    assert example.parse_args(source_args(workspace))[0].ats_config_overrides() == {}, "left out: keep the model's"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ats_layers", "5-3"], "the range '5-3' is reversed"),
        (["--ats_max_tokens", "0"], "'0' is not 'all'"),
        (["--max_eval_samples", "0"], "max_eval_samples=0 must be >= 1"),
    ],
)
def test_example_rejects_bad_values_in_one_line(example, workspace, capsys, argv, message):
    with pytest.raises(SystemExit) as exited:
        example.parse_args([*source_args(workspace), *argv])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and ": error: " in error and message in error


def test_example_takes_a_clip_model_and_refuses_a_video_model_before_loading(example, workspace, tmp_path, capsys):
    """A CLIPModel checkpoint fine-tunes as its vision tower's classifier (its settings checked on the vision
    config); a video classifier is refused in one line, not at the first training step."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, VivitConfig, VivitForVideoClassification

    tower = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                 patch_size=8)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=64)
    CLIPModel(CLIPConfig(vision_config=tower, text_config=text)).save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(tmp_path / "clip")
    VivitForVideoClassification(VivitConfig(**{**tower, "num_frames": 4, "tubelet_size": [2, 8, 8]})).save_pretrained(
        tmp_path / "vivit")

    capsys.readouterr()  # the saving's progress lines

    def parse(model, *extra):  # parse_args checks the sources (exit status 2 and one line on a bad one)
        argv = ["--model_name_or_path", str(tmp_path / model), "--train_dir", str(workspace / "train"), *extra]
        return example.parse_args([*argv, "--output_dir", str(tmp_path / "out")])

    assert parse("clip", "--ats_layers", "1")[0].ats_config_overrides() == {"ats_layers": [1]}
    for model, extra, message in (("clip", ["--ats_layers", "2"], "ats_layers=[2] has indices [2] outside 0..1"),
                                  ("vivit", [], "is a ViViT model, which takes videos; this script fine-tunes")):
        with pytest.raises(SystemExit) as exited:
            parse(model, *extra)
        error = capsys.readouterr().err
        assert exited.value.code == 2 and error.count("\n") == 1 and message in error


def test_example_refuses_a_non_empty_output_dir_before_loading_anything(example, workspace, tmp_path, capsys):
    work = tmp_path / "earlier-run"
    work.mkdir()
    (work / "model.safetensors").write_text("a user's weights")
    with pytest.raises(SystemExit) as exited:
        example.parse_args(example_args(workspace, work, "--do_train"))
    error = capsys.readouterr().err
    assert exited.value.code == 2 and error.count("\n") == 1
    assert f"--output_dir '{work}' is not empty; pass --overwrite_output_dir" in error
    # With --overwrite_output_dir, or resuming a run there, the folder is taken.
    example.parse_args(example_args(workspace, work, "--do_train", "--overwrite_output_dir"))
    example.parse_args(example_args(workspace, work, "--do_train", "--resume_from_checkpoint", str(work)))
    assert (work / "model.safetensors").read_text() == "a user's weights"


def direct_predictions(model, workspace):
    """Labels, predicted classes and GMACs per image of the validation folder, one image at a time."""
    processor = tiny_image_processor()
    labels, predicted, gmacs = [], [], []
    for index, class_dir in enumerate(sorted((workspace / "validation").iterdir())):
        for path in sorted(class_dir.iterdir()):
            pixel_values = processor(Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                outputs = model.eval()(pixel_values=pixel_values.to(model.device))
            labels.append(index)
            predicted.append(int(outputs.logits.argmax()))
            gmacs.append(float(gmacs_per_image(model.config, outputs.num_tokens.cpu())[0]))
    return np.array(labels), np.array(predicted), np.array(gmacs)


def test_a_few_steps_lower_the_loss_and_evaluation_reports_accuracy_and_gmacs(workspace, example, tmp_path):
    before = example.main(example_args(workspace, tmp_path / "before", "--do_eval"))
    before_loss = json.loads((tmp_path / "before" / "eval_results.json").read_text())["eval_loss"]

    trainer = example.main(
        example_args(
            workspace, tmp_path / "after", "--do_train", "--do_eval", "--max_steps", "6", "--logging_steps", "1"
        )
    )
    results = json.loads((tmp_path / "after" / "all_results.json").read_text())
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert results["eval_loss"] < 0.8 * before_loss

    # The reported figures are those of the evaluated model, image by image.
    labels, predicted, gmacs = direct_predictions(trainer.model, workspace)
    assert results["eval_accuracy"] == pytest.approx((predicted == labels).mean())
    assert results["eval_gmacs"] == pytest.approx(gmacs.mean(), rel=1e-6)
    assert results["eval_dense_gmacs"] == pytest.approx(dense_gmacs(trainer.model.config))
    assert results["eval_gmacs"] < results["eval_dense_gmacs"]
    assert isinstance(before.model, AtsViTForImageClassification)

    # The output directory is a ready-to-share ATS checkpoint with the measured GMACs on its card.
    saved = json.loads((tmp_path / "after" / "config.json").read_text())
    assert saved["ats_layers"] == [1, 2, 3] and saved["id2label"] == {"0": "cat", "1": "dog", "2": "fox"}
    assert set(saved["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    card = (tmp_path / "after" / "README.md").read_text()
    assert f"{results['eval_gmacs']:.4g}" in card and f"{NUM_VALIDATION_IMAGES} evaluation images" in card

    # An ATS checkpoint as the start keeps its settings and evaluates to the same figures.
    args = example_args(workspace, tmp_path / "again", "--do_eval")
    args[args.index("--model_name_or_path") + 1] = str(tmp_path / "after")
    del args[args.index("--ats_layers") : args.index("--ats_layers") + 2]
    again = example.main(args)
    assert again.model.config.ats_layers == [1, 2, 3]
    reevaluated = json.loads((tmp_path / "again" / "eval_results.json").read_text())
    assert reevaluated["eval_gmacs"] == results["eval_gmacs"]
    assert reevaluated["eval_accuracy"] == results["eval_accuracy"]


def test_without_a_validation_folder_part_of_train_is_held_out(workspace, example, tmp_path):
    args = example_args(workspace, tmp_path, "--do_eval", "--train_val_split", "0.25")
    del args[args.index("--validation_dir") : args.index("--validation_dir") + 2]
    trainer = example.main(args)
    assert len(trainer.eval_dataset) == 6  # a quarter of the 24 training images
    assert set(json.loads((tmp_path / "eval_results.json").read_text())) >= {"eval_accuracy", "eval_gmacs"}


def test_shipped_metric_module_loads_offline_and_computes():
    metric = evaluate.load(ATS_ACCURACY, keep_in_memory=True)
    assert metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2], gmacs=[1.0, 2.0, 3.0, 6.0]) == {
        "accuracy": 0.75,
        "gmacs": 3.0,
    }
    assert metric.compute(predictions=[1], references=[0]) == {"accuracy": 0.0}
    with pytest.raises(ValueError, match="one value per prediction"):
        metric.compute(predictions=[0, 1], references=[0, 1], gmacs=[1.0])


def test_resume_from_checkpoint_restores_the_exact_weights(workspace, example, tmp_path):
    common = ("--do_train", "--max_steps", "4", "--save_steps", "2")
    straight = example.main(example_args(workspace, tmp_path / "straight", *common)).model.state_dict()
    checkpoint = tmp_path / "straight" / "checkpoint-2"
    # A fresh run from the same start that only continues from step 2: equal weights prove the checkpoint's weights,
    # optimizer, scheduler and data position were all restored.
    resumed = example.main(
        example_args(workspace, tmp_path / "resumed", *common, "--resume_from_checkpoint", str(checkpoint))
    ).model.state_dict()
    assert resumed.keys() == straight.keys()
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name
    at_step_2 = load_file(checkpoint / "model.safetensors")
    assert not all(torch.equal(at_step_2[name], straight[name]) for name in at_step_2)


def test_load_best_model_at_end_restores_the_best_checkpoint(workspace, example, tmp_path):
    # "Best" = highest eval loss, i.e. an early checkpoint, so that restoring it is observable.
    trainer = example.main(
        example_args(
            workspace, tmp_path, "--do_train", "--max_steps", "3", "--eval_strategy", "steps", "--eval_steps", "1",
            "--save_steps", "1", "--load_best_model_at_end", "--metric_for_best_model", "loss",
            "--greater_is_better", "true",
        )
    )
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-3")
    best_weights = load_file(f"{best}/model.safetensors")
    last_weights = load_file(tmp_path / "checkpoint-3" / "model.safetensors")
    state = trainer.model.state_dict()
    assert best_weights.keys() == state.keys()
    for name, value in best_weights.items():
        assert torch.equal(state[name], value), name
    assert not all(torch.equal(last_weights[name], state[name]) for name in state)
    # The final save in output_dir is the restored best model.
    final = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(final[name], value) for name, value in best_weights.items())


@pytest.mark.parametrize("collect_extras", [False, True], ids=["plain", "hidden_states_and_attentions"])
def test_evaluation_copes_with_batches_of_different_kept_counts(tmp_path, collect_extras):
    model = tiny_ats_classifier(output_hidden_states=collect_extras, output_attentions=collect_extras)
    if collect_extras:
        model.set_attn_implementation("eager")
    images = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(7) % 3
    dataset = Dataset.from_dict({"pixel_values": images.numpy(), "labels": labels.numpy()}).with_format("torch")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to="none", use_cpu=True)
    predictions = Trainer(model=model, args=args).predict(dataset)

    logits, num_tokens = predictions.predictions  # sampled_token_indices, token_mask etc. are not gathered
    with torch.no_grad():
        one_by_one = [model(pixel_values=image[None]) for image in images]
    expected_tokens = torch.cat([output.num_tokens for output in one_by_one])
    kept_per_batch = {int(expected_tokens[start : start + 2, -1].max()) for start in range(0, 7, 2)}
    assert len(kept_per_batch) > 1, "the batches should pad to different lengths"
    assert np.array_equal(num_tokens, expected_tokens.numpy())
    np.testing.assert_allclose(logits, torch.cat([output.logits for output in one_by_one]).numpy(), atol=1e-5)
    assert np.array_equal(predictions.label_ids, labels.numpy())
    assert np.isfinite(predictions.metrics["test_loss"])


def test_accelerate_two_processes_give_the_same_metrics_layout(workspace, example, tmp_path):
    common = ("--do_train", "--do_eval", "--max_steps", "2", "--save_steps", "2")
    example.main(example_args(workspace, tmp_path / "one", *common))
    with socket.socket() as probe:  # a free port, so parallel test runs do not collide
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    # Two processes x 4 images = the single process's batch of 8. On CPU-only machines accelerate needs --multi_gpu
    # to start several processes (with --cpu it starts one); --use_cpu makes them DDP over gloo.
    args = example_args(workspace, tmp_path / "two", *common, "--use_cpu", "true")
    args[args.index("--per_device_train_batch_size") + 1] = "4"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port, str(EXAMPLE), *args,
    ]
    run = subprocess.run(
        command, cwd=tmp_path, env=subprocess_env(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-4000:]

    assert (tmp_path / "two" / "checkpoint-2" / "rng_state_1.pth").exists(), "expected two processes"
    top_level = {name: sorted(p.name for p in (tmp_path / name).iterdir() if not p.name.startswith("checkpoint-"))
                 for name in ("one", "two")}
    assert top_level["one"] == top_level["two"]
    for results_file in ("all_results.json", "train_results.json", "eval_results.json"):
        one = json.loads((tmp_path / "one" / results_file).read_text())
        two = json.loads((tmp_path / "two" / results_file).read_text())
        assert sorted(one) == sorted(two), results_file
    one = json.loads((tmp_path / "one" / "all_results.json").read_text())
    two = json.loads((tmp_path / "two" / "all_results.json").read_text())
    # Every validation image counted once: the GMACs and accuracy are those of the saved model, image by image.
    # (eval_loss is not compared: Trainer averages a padded last batch's loss over the padding too.)
    saved = AtsViTForImageClassification.from_pretrained(tmp_path / "two")
    labels, predicted, gmacs = direct_predictions(saved, workspace)
    assert two["eval_gmacs"] == pytest.approx(gmacs.mean(), rel=1e-6)
    assert two["eval_accuracy"] == pytest.approx((predicted == labels).mean())
    assert two["epoch"] == one["epoch"]  # the same global batch size
