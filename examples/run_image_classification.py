#!/usr/bin/env python
"""Fine-tune and evaluate an ATS image classifier with Trainer (one process, or several with accelerate).

The start can be a plain or ATS checkpoint of any family - ViT, DeiT, DINOv2, CLIP; a classifier, or a backbone
that gets a new head (Hub id or directory); --ats_layers,
--ats_max_tokens and --ats_sampler set or change its ATS settings, in the same forms as `ats-hf` takes
(`--ats_layers 3-11`, `--ats_layers 3 4 5`, `--ats_layers 1,3,5-7`, `--ats_max_tokens all`, ...). Data comes from a
Hub dataset (--dataset_name), from image folders (--train_dir / --validation_dir: one subfolder per class, read by
datasets' imagefolder loader), or offline from ats_hf's synthetic digits (--dataset_name synthetic-digits: renders
--max_train_samples training images, default 20000, and validates on the fixed 2000-image test split).
With --distill_from, the loss is logit distillation from a frozen teacher (`ats_hf.distillation`):
(1 - alpha) * CE + alpha * T^2 * KL(teacher || student); `--distill_from dense` is the starting checkpoint itself with
ATS switched off, the usual way to recover the accuracy that token sampling costs.
Evaluation reports top-1 accuracy (eval_accuracy), the mean GMACs per image of the evaluated model (eval_gmacs) and
the same geometry's dense GMACs (eval_dense_gmacs). The output directory is a ready-to-share ATS checkpoint: weights,
config, image processor, modeling code and a model card.

    python examples/run_image_classification.py \\
        --model_name_or_path facebook/deit-small-patch16-224 --ats_layers 3-11 --ats_max_tokens all \\
        --train_dir data/train --validation_dir data/val --output_dir deit-s-ats \\
        --do_train --do_eval --learning_rate 1e-5 --num_train_epochs 3 --per_device_train_batch_size 64 \\
        --eval_strategy epoch --save_strategy epoch --load_best_model_at_end --metric_for_best_model accuracy

    accelerate launch --num_processes 2 examples/run_image_classification.py ...  # same arguments

    # ATS in the loop with the dense model as teacher, on the embedded model and data (offline; see
    # docs/fine-tuning.md, "Recovering accuracy with distillation", and scripts/finetune_recovery.py):
    python examples/run_image_classification.py \\
        --model_name_or_path src/ats_hf/data/default_model --ats_layers 2-3 --ats_max_tokens all \\
        --dataset_name synthetic-digits --max_train_samples 32000 \\
        --distill_from dense --distillation_alpha 0.5 --distillation_temperature 2 \\
        --output_dir digits-ats-kd --do_train --do_eval --max_steps 1000 --per_device_train_batch_size 64 \\
        --learning_rate 1e-4 --warmup_steps 50 --lr_scheduler_type cosine --weight_decay 0.05 --max_grad_norm 1 \\
        --per_device_eval_batch_size 250 --save_strategy no --report_to none --use_cpu true --seed 0
"""

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import evaluate
import torch
import transformers
from datasets import ClassLabel, DatasetDict, load_dataset
from PIL import Image, UnidentifiedImageError
from transformers import AutoImageProcessor, HfArgumentParser, Trainer, TrainingArguments, set_seed

from ats_hf import ATS_SAMPLERS
from ats_hf.distillation import DistillationTrainer, check_distillation_settings
from ats_hf.families import classifier_for, family_of, is_classifier, takes_videos
from ats_hf.flops import dense_gmacs, gmacs_per_image
from ats_hf.hub.checkpoint import ats_model_class, load_ats_classifier, push_checkpoint
from ats_hf.hub.model_card import write_model_card
from ats_hf.metrics import ATS_ACCURACY
from ats_hf_common.grammar import LAYERS_HELP, MAX_TOKENS_HELP, parse_layers, parse_max_tokens, parse_sampler
from ats_hf_common.paths import check_source, check_target

logger = logging.getLogger(__name__)

SYNTHETIC_DIGITS = "synthetic-digits"  # --dataset_name value: ats_hf's own offline data, not a Hub dataset
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class ScriptError(Exception):
    """A mistake in what the user asked for (a missing folder, settings the model cannot take, a teacher with other
    classes): reported as one line, exit status 2, before anything slow runs where it can be checked up front."""
DEFAULT_SYNTHETIC_TRAIN_IMAGES = 20000
DENSE_TEACHER = "dense"  # --distill_from value: the starting checkpoint with ATS switched off


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        metadata={"help": "A plain or ATS checkpoint of any family (ViT, DeiT, DINOv2, CLIP), a classifier or a "
                          "backbone that gets a new head: Hub id or directory."}
    )
    ats_layers: list[str] | None = field(
        default=None,
        metadata={
            "help": f"{LAYERS_HELP}. Default: the checkpoint's (ATS) or the paper's recipe num_layers//4 .. "
            "num_layers-1 (plain ViT)."
        },
    )
    ats_max_tokens: list[str] | None = field(
        default=None, metadata={"help": f"{MAX_TOKENS_HELP}. Default: the checkpoint's."}
    )
    ats_sampler: str | None = field(default=None, metadata={"help": "Token sampler.", "choices": list(ATS_SAMPLERS)})
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Where to load the image processor from (default: model_name_or_path)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache Hub downloads and datasets."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: the one from `hf auth login`)."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Replace a classifier head whose size differs from the dataset's labels."}
    )
    distill_from: str | None = field(
        default=None,
        metadata={
            "help": f"Teacher for logit distillation: a checkpoint (Hub id or directory) with the dataset's classes, "
            f"or '{DENSE_TEACHER}' for model_name_or_path itself with ATS switched off. Default: no distillation."
        },
    )
    distillation_alpha: float = field(
        default=0.5, metadata={"help": "Weight of the distillation term in [0, 1] (0: plain cross-entropy)."}
    )
    distillation_temperature: float = field(default=2.0, metadata={"help": "Distillation temperature T > 0."})

    def ats_config_overrides(self) -> dict:
        """The ATS config fields given (`ats_layers`, `ats_max_tokens`, `ats_sampler`), parsed with ats_hf's one
        grammar; fields not given keep the checkpoint's. Raises `ValueError` naming a malformed value."""
        overrides = {}
        if self.ats_layers is not None:
            overrides["ats_layers"] = parse_layers(self.ats_layers)
        if self.ats_max_tokens is not None:
            overrides["ats_max_tokens"] = parse_max_tokens(self.ats_max_tokens)
        if self.ats_sampler is not None:
            overrides["ats_sampler"] = parse_sampler(self.ats_sampler)
        return overrides


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": f"A dataset on the Hub (needs a network), or '{SYNTHETIC_DIGITS}': ats_hf's synthetic digits, "
            f"offline (max_train_samples renderings of the training digits, default {DEFAULT_SYNTHETIC_TRAIN_IMAGES}; "
            "validation: the fixed 2000-image test split)."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration."})
    train_dir: str | None = field(default=None, metadata={"help": "Image folder of the training data."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder of the validation data."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out for validation when there is no validation set."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many train images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval images."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the class labels."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Write into a non-empty --output_dir (what is there may be replaced); without it, or "
                          "--resume_from_checkpoint, such a folder is refused before anything is loaded."},
    )

    def __post_init__(self):
        if self.dataset_name is None and self.train_dir is None and self.validation_dir is None:
            raise ValueError("Give --dataset_name, or --train_dir and/or --validation_dir (image folders).")
        if not 0.0 <= self.train_val_split < 1.0:
            raise ValueError(f"train_val_split={self.train_val_split} is outside [0, 1).")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1.")


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataTrainingArguments, TrainingArguments]:
    """Command-line arguments, or a single .json file holding them. A value that makes no sense is a usage error
    (one line, exit status 2)."""
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
        else:
            model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
        model_args.ats_config_overrides()
        check_distillation_settings(model_args.distillation_alpha, model_args.distillation_temperature)
        check_sources(model_args, data_args)
        check_output_dir(training_args, data_args.overwrite_output_dir)
    except (ValueError, ScriptError) as error:  # one line, as ats-hf reports a bad option value
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    return model_args, data_args, training_args


def check_sources(model_args: ModelArguments, data_args: DataTrainingArguments) -> None:
    """Before anything slow: the folders exist and hold images in class sub-folders, and the model can take the ATS
    settings (its config alone is read). Raises `ScriptError` naming the problem."""
    for option, folder in (("--train_dir", data_args.train_dir), ("--validation_dir", data_args.validation_dir)):
        if folder is not None:
            check_image_folder(option, Path(folder))
    sources = [("--model_name_or_path", model_args.model_name_or_path)]
    if model_args.distill_from not in (None, DENSE_TEACHER):
        sources.append(("--distill_from", model_args.distill_from))
    for option, source in sources:
        try:
            check_source(source, option)
        except FileNotFoundError as error:
            raise ScriptError(str(error)) from None
    source = model_args.model_name_or_path
    hub = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token}
    try:  # the class the model loads as (a backbone: its family's classifier, as load_ats_classifier does)
        model_class = ats_model_class(source, **hub)
    except (OSError, ValueError) as error:
        raise ScriptError(f"--model_name_or_path {source!r}: {str(error).splitlines()[0]}") from None
    if not is_classifier(model_class):
        model_class = classifier_for(model_class) or model_class
    if takes_videos(model_class):
        raise ScriptError(
            f"--model_name_or_path {source!r} is a {family_of(model_class).title} model, which takes videos; this "
            "script fine-tunes image classifiers on image folders."
        )
    try:  # the config alone: the layers and K given must fit this model
        config = model_class.config_class.from_pretrained(source, **hub, **model_args.ats_config_overrides())
        config.check_ats_settings()
    except (OSError, ValueError) as error:
        raise ScriptError(f"--model_name_or_path {source!r}: {str(error).splitlines()[0]}") from None


def check_output_dir(training_args: TrainingArguments, overwrite: bool) -> None:
    """ats_hf's output policy (`check_target`): a non-empty --output_dir is refused unless --overwrite_output_dir is
    given or the run resumes from a checkpoint. Raises `ScriptError`."""
    try:
        resuming = training_args.resume_from_checkpoint is not None
        check_target(training_args.output_dir, "--output_dir", overwrite or resuming,
                     overwrite_option="--overwrite_output_dir")
    except FileExistsError as error:
        raise ScriptError(str(error)) from None


def check_image_folder(option: str, folder: Path) -> None:
    """`folder` holds readable images in one sub-folder per class; a missing folder, a flat one, or a file that is
    no image is named."""
    if not folder.is_dir():
        raise ScriptError(f"{option} {str(folder)!r} is not a folder")
    classes = sorted(child for child in folder.iterdir() if child.is_dir())
    if not classes:
        raise ScriptError(f"{option} {str(folder)!r} has no class sub-folders: put each class's images in a folder "
                          "named after the class")
    images = [path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise ScriptError(f"{option} {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    for path in images:
        try:
            Image.open(path).close()  # reads the header: cheap
        except (OSError, UnidentifiedImageError) as error:
            raise ScriptError(f"{option} {str(folder)!r}: {path} cannot be read as an image ({error})") from None


def synthetic_digits(num_train_images: int, seed: int, num_validation_images: int | None = None) -> DatasetDict:
    """ats_hf's synthetic digits: `num_train_images` new renderings of the training digits (a pure function of
    `seed`) and the fixed test split (its first `num_validation_images`, default all 2000) as validation; `image`
    (PIL) and `label` (ClassLabel "0".."9") columns. Test images never show a training digit."""
    from ats_hf.data.synthetic_digits import TEST_SIZE, as_dataset, generate, test_split

    chunk = 1000  # rendering holds a few float copies of every canvas: render in chunks
    train = [
        generate("train", min(chunk, num_train_images - start), seed=seed * 1_000_003 + start // chunk)
        for start in range(0, num_train_images, chunk)
    ]
    train_images, train_labels = (torch.cat(parts) for parts in zip(*train, strict=True))
    validation = test_split(min(num_validation_images or TEST_SIZE, TEST_SIZE))
    return DatasetDict(train=as_dataset(train_images, train_labels), validation=as_dataset(*validation))


def load_data(data_args: DataTrainingArguments, model_args: ModelArguments, seed: int = 42) -> DatasetDict:
    """The dataset with a 'train' and/or 'validation' split, capped to max_*_samples."""
    if data_args.dataset_name == SYNTHETIC_DIGITS:
        num_train_images = data_args.max_train_samples or DEFAULT_SYNTHETIC_TRAIN_IMAGES
        dataset = synthetic_digits(num_train_images, seed, data_args.max_eval_samples)
    elif data_args.dataset_name is not None:
        dataset = load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    else:
        data_files = {}
        if data_args.train_dir is not None:
            data_files["train"] = os.path.join(data_args.train_dir, "**")
        if data_args.validation_dir is not None:
            data_files["validation"] = os.path.join(data_args.validation_dir, "**")
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=model_args.cache_dir)

    some_split = next(iter(dataset.values()))
    for name in (data_args.image_column_name, data_args.label_column_name):
        if name not in some_split.column_names:
            raise ValueError(f"Column {name!r} is not in the dataset; its columns are {some_split.column_names}.")
    if "validation" not in dataset and "train" in dataset and data_args.train_val_split > 0:
        split = dataset["train"].train_test_split(data_args.train_val_split, seed=42)
        dataset = DatasetDict(train=split["train"], validation=split["test"])
    for name, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if name in dataset and limit is not None:
            dataset[name] = dataset[name].select(range(min(limit, len(dataset[name]))))
    return dataset


def main(argv: list[str] | None = None) -> Trainer:
    """Run the script; returns the Trainer (its model is the final or, with load_best_model_at_end, best one)."""
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.WARNING)
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    # The images become pixel_values in a transform, so Trainer must not drop the image column beforehand.
    training_args.remove_unused_columns = False
    set_seed(training_args.seed)

    dataset = load_data(data_args, model_args, seed=training_args.seed)
    labels_feature = next(iter(dataset.values())).features[data_args.label_column_name]
    if not isinstance(labels_feature, ClassLabel):
        raise ValueError(f"Column {data_args.label_column_name!r} is {labels_feature}; expected a ClassLabel.")
    labels = labels_feature.names

    model = load_ats_classifier(
        model_args.model_name_or_path,
        allow_new_head=True,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.token,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        **model_args.ats_config_overrides(),
    )
    image_processor = AutoImageProcessor.from_pretrained(
        model_args.image_processor_name or model_args.model_name_or_path,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.token,
    )

    image_column, label_column = data_args.image_column_name, data_args.label_column_name

    def to_model_inputs(batch):
        images = [image.convert("RGB") for image in batch[image_column]]
        pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": batch[label_column]}

    def collate(examples):
        return {
            "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
            "labels": torch.tensor([example["labels"] for example in examples]),
        }

    def to_predictions_and_gmacs(outputs, labels):
        """(logits (B, C), num_tokens (B, layers)) -> predicted class (B,), GMACs per image (B,); keeps eval small."""
        logits, num_tokens = outputs
        return logits.argmax(dim=-1), gmacs_per_image(model.config, num_tokens.cpu()).float().to(logits.device)

    metric = evaluate.load(ATS_ACCURACY, keep_in_memory=True)
    dense = dense_gmacs(model.config)

    def compute_metrics(eval_prediction):
        predictions, gmacs = eval_prediction.predictions
        scores = metric.compute(predictions=predictions, references=eval_prediction.label_ids, gmacs=gmacs)
        return {**scores, "dense_gmacs": dense}

    if training_args.do_train and "train" not in dataset:
        raise ValueError("--do_train needs training data: --dataset_name with a train split, or --train_dir.")
    if training_args.do_eval and "validation" not in dataset:
        raise ValueError("--do_eval needs validation data: a validation split, --validation_dir or train_val_split.")
    distillation = {}
    if model_args.distill_from is not None:
        check_teacher_labels(model_args, labels)
    if model_args.distill_from is not None:
        distillation = {
            "teacher": load_teacher(model_args, labels),
            "alpha": model_args.distillation_alpha,
            "temperature": model_args.distillation_temperature,
        }
    trainer = (DistillationTrainer if distillation else Trainer)(
        model=model,
        args=training_args,
        train_dataset=dataset["train"].with_transform(to_model_inputs) if training_args.do_train else None,
        eval_dataset=dataset["validation"].with_transform(to_model_inputs) if "validation" in dataset else None,
        data_collator=collate,
        processing_class=image_processor,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=to_predictions_and_gmacs,
        **distillation,
    )

    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()

    eval_metrics = {}
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)

    if training_args.do_train or training_args.do_eval:
        trainer.save_model()
        if training_args.should_save:
            repo_id = None
            if training_args.push_to_hub:
                repo_id = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
            card_kwargs = card_arguments(model_args, data_args, eval_metrics, len(dataset.get("validation", [])))
            card_kwargs["model_id"] = repo_id or training_args.output_dir
            write_model_card(training_args.output_dir, model.config, **card_kwargs)
            if repo_id is not None:
                push_checkpoint(
                    training_args.output_dir,
                    repo_id,
                    private=training_args.hub_private_repo,
                    token=training_args.hub_token,
                    card_kwargs=card_kwargs,
                    commit_message="End of training",
                )
    return trainer


def check_teacher_labels(model_args: ModelArguments, labels: list[str]) -> None:
    """The `--distill_from` teacher must be a classifier predicting the dataset's classes, in the dataset's order (its
    config alone is read): otherwise its logits would teach the wrong classes. `dense` is the starting checkpoint
    itself, which must then already be such a classifier."""
    dense = model_args.distill_from == DENSE_TEACHER
    source = model_args.model_name_or_path if dense else model_args.distill_from
    hub = {"cache_dir": model_args.cache_dir, "token": model_args.token}
    if dense:
        hub["revision"] = model_args.model_revision
    option = f"--distill_from {model_args.distill_from!r}" + (f" (the starting checkpoint {source!r})" if dense else "")
    model_class = ats_model_class(source, **hub)
    if not is_classifier(model_class):
        raise ScriptError(f"{option} has no image-classification head to teach with: give a classifier of the "
                          "dataset's classes")
    config = model_class.config_class.from_pretrained(source, **hub)
    teacher = [str(config.id2label[index]) for index in range(len(config.id2label))]
    if teacher != list(labels):
        hint = "fine-tune it first, then distil from that" if dense else f"or use --distill_from {DENSE_TEACHER}"
        raise ScriptError(
            f"{option} predicts {len(teacher)} classes {teacher[:10]}, the dataset has {len(labels)} "
            f"{list(labels)[:10]}: a teacher must predict the dataset's classes, in its order ({hint})"
        )


def load_teacher(model_args: ModelArguments, labels: list[str]):
    """The distillation teacher of `--distill_from`, with the dataset's labels. Its classifier head must already have
    one output per label (loading fails otherwise, never leaving a random head); `dense` is model_name_or_path with
    `set_ats(layers=[])`, other checkpoints keep their own ATS settings."""
    dense = model_args.distill_from == DENSE_TEACHER
    teacher = load_ats_classifier(
        model_args.model_name_or_path if dense else model_args.distill_from,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision if dense else "main",
        token=model_args.token,
    )
    if dense:
        teacher.set_ats(layers=[])
    return teacher


def card_arguments(model_args, data_args, eval_metrics: dict, num_eval_images: int) -> dict:
    """Model-card fields (see `ats_hf.hub.model_card.build_model_card`): base model, dataset, measured GMACs,
    accuracy."""
    source = model_args.model_name_or_path
    card_kwargs = {
        "base_model": None if os.path.isdir(source) else source,
        "datasets": [data_args.dataset_name] if data_args.dataset_name not in (None, SYNTHETIC_DIGITS) else None,
    }
    if eval_metrics:
        data_dir = data_args.validation_dir or data_args.train_dir
        data_name = data_args.dataset_name or os.path.basename(os.path.abspath(data_dir))
        card_kwargs["ats_gmacs"] = eval_metrics["eval_gmacs"]
        card_kwargs["gmacs_measured_on"] = f"{num_eval_images} evaluation images of `{data_name}`"
        card_kwargs["metrics"] = {"accuracy": eval_metrics["eval_accuracy"]}
    return card_kwargs


def run_from_command_line() -> int:
    """`main()`, with the mistakes found after the options were read (e.g. a teacher with other classes) reported as
    one line, exit status 2."""
    try:
        main()
    except ScriptError as error:
        print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_from_command_line())
