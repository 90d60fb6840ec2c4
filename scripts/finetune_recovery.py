"""Fine-tuning recovery on the embedded model: plug-and-play vs fine-tuned ATS and top-K at equal mean GMACs.

One command (CPU, offline; 12.5 minutes with one thread on a shared 2-core VM, of which 10.1 were training):

    python scripts/finetune_recovery.py            # writes finetune-recovery/

Figures, schedule and caveats: docs/fine-tuning.md, "Recovering accuracy with distillation".

It fine-tunes the embedded model (`ats_hf.data.DEFAULT_MODEL_DIR`) twice through
examples/run_image_classification.py (`Trainer`, logit distillation from the dense model as teacher, on new renderings
of the training digits; by default 1000 steps of batch 64, AdamW at 1e-4 with 50 warm-up steps and cosine decay):
  (a) with ATS in the loop at the tuned setting (`ats-hf tune --gmacs-budget 0.5`: layers 2-3, K all, inverse
      transform sampling);
  (b) with top-K in the same layers, keeping in each layer about ATS's mean kept count after (a), adjusted so that
      the mean test GMACs match (a)'s.
Then it evaluates dense, plug-and-play ATS, plug-and-play top-K (at plug-and-play ATS's GMACs and at (b)'s setting),
and both fine-tuned models on the 2000-image test split (never seen in training: its digits are not training
digits): top-1 with its binomial standard error, mean GMACs per image (from `output.num_tokens`) and the fraction of
dense. It prints a table and writes `results.json`; the two fine-tuned checkpoints stay in `--output`.
"""

import argparse
import importlib.util
import itertools
import json
import math
import time
from pathlib import Path

import torch

from ats_hf import AtsSettings, AtsViTForImageClassification
from ats_hf.benchmark.engine import evaluate_method
from ats_hf.configuration_ats_core import num_input_tokens
from ats_hf.data import DEFAULT_MODEL_DIR
from ats_hf.data.synthetic_digits import test_split, to_pixel_values
from ats_hf.flops import dense_gmacs, gmacs_per_image
from ats_hf.methods import AtsMethod
from ats_hf_cli.options import non_negative_int, positive_int
from ats_hf_common.grammar import format_layers, parse_layers, parse_max_tokens

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "run_image_classification.py"
TRAINING_BUDGET_S = 15 * 60
EVAL_BATCH = 250


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("finetune-recovery"), help="folder for checkpoints/JSON")
    parser.add_argument("--ats-layers", nargs="+", default=["2-3"], help="ATS layers (default: the tuned 2-3)")
    parser.add_argument("--ats-max-tokens", nargs="+", default=["all"], help="ATS K (default: all)")
    parser.add_argument("--steps", type=positive_int, default=1000, help="optimizer steps per fine-tuning run")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--train-images", type=positive_int, default=32000, help="training images rendered")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (AdamW, cosine decay)")
    parser.add_argument("--warmup-steps", type=non_negative_int, default=50)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation term, in [0, 1]")
    parser.add_argument("--temperature", type=float, default=2.0, help="distillation temperature T > 0")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="of the cross-entropy term")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    try:
        args.layers = parse_layers(args.ats_layers)
        args.max_tokens = parse_max_tokens(args.ats_max_tokens)
    except ValueError as error:
        parser.error(str(error))
    return args


def load_example():
    spec = importlib.util.spec_from_file_location("run_image_classification", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate(model, settings: dict, pixel_values: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 (%), its binomial standard error, mean GMACs per image, fraction of dense and the mean tokens each
    layer outputs, with `settings` (`set_ats` keyword arguments) applied (the benchmark's `evaluate_method`)."""
    result = evaluate_method(model.eval(), AtsMethod("eval", AtsSettings(**settings)), pixel_values, labels, EVAL_BATCH)
    accuracy = result.score / 100
    return {
        "accuracy": result.score,
        "std_error": 100 * math.sqrt(accuracy * (1 - accuracy) / len(labels)),
        "gmacs": result.gmacs_mean,
        "fraction_of_dense": result.gmacs_mean / dense_gmacs(model.config),
        "mean_tokens": [round(value, 2) for value in result.tokens_per_layer],
    }


def matching_top_k(config, layers: list[int], mean_tokens: list[float], target_gmacs: float) -> list[int]:
    """Per-layer top-K counts for `layers` (non-increasing, CLS included) near ATS's mean kept counts `mean_tokens`
    (one per model layer): of the counts whose GMACs are within 0.5% of `target_gmacs`, those closest to ATS's;
    when none is, those with the closest GMACs."""
    num_input = num_input_tokens(config)
    start = [max(2, round(mean_tokens[layer])) for layer in layers]
    best = None
    for offsets in itertools.product(range(-6, 7), repeat=len(layers)):
        counts = [count + offset for count, offset in zip(start, offsets, strict=True)]
        if min(counts) < 2 or counts[0] > num_input or any(b > a for a, b in itertools.pairwise(counts)):
            continue
        row, current = [], num_input
        for layer in range(config.num_hidden_layers):
            if layer in layers:
                current = counts[layers.index(layer)]
            row.append(current)
        gmacs = gmacs_per_image(config, torch.tensor([row])).item()
        # Within 0.5% of the target GMACs, the counts closest to ATS's; otherwise the closest GMACs.
        off = abs(gmacs - target_gmacs)
        key = (off > 0.005 * target_gmacs, sum(abs(o) for o in offsets) if off <= 0.005 * target_gmacs else 0, off)
        if best is None or key < best[0]:
            best = (key, counts)
    return best[1]


def fine_tune(example, args, name: str, settings: dict) -> tuple[Path, dict]:
    """Fine-tune the embedded model with `settings` in the loop (distillation from the dense model); returns the
    checkpoint folder and Trainer's train metrics."""
    output_dir = args.output / name
    max_tokens = settings["max_tokens"]
    argv = [
        "--model_name_or_path", str(DEFAULT_MODEL_DIR),
        "--ats_layers", *[str(layer) for layer in settings["layers"]],
        "--ats_max_tokens", *(["all"] if max_tokens is None else [str(k) for k in _as_list(max_tokens)]),
        "--ats_sampler", settings["sampler"],
        "--dataset_name", "synthetic-digits", "--max_train_samples", str(args.train_images),
        "--distill_from", "dense",
        "--distillation_alpha", str(args.alpha), "--distillation_temperature", str(args.temperature),
        "--label_smoothing_factor", str(args.label_smoothing),
        "--output_dir", str(output_dir),
        "--do_train", "--max_steps", str(args.steps), "--per_device_train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.lr), "--warmup_steps", str(args.warmup_steps), "--lr_scheduler_type", "cosine",
        "--weight_decay", str(args.weight_decay), "--max_grad_norm", "1.0",
        "--save_strategy", "no", "--logging_steps", "100", "--report_to", "none", "--disable_tqdm", "true",
        "--seed", str(args.seed), "--use_cpu", "true", "--dataloader_num_workers", "0",
    ]
    trainer = example.main(argv)
    metrics = trainer.state.log_history[-1]
    return output_dir, {"train_runtime_s": metrics["train_runtime"], "train_loss": metrics["train_loss"]}


def _as_list(max_tokens):
    return max_tokens if isinstance(max_tokens, list) else [max_tokens]


def format_table(rows: list[dict]) -> str:
    lines = [
        "| model | setting | top-1 (%) | GMACs | of dense |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['setting']} | {row['accuracy']:.2f} +- {row['std_error']:.2f} | "
            f"{row['gmacs']:.5f} | {100 * row['fraction_of_dense']:.1f}% |"
        )
    return "\n".join(lines)


def describe(settings: dict) -> str:
    if not settings["layers"]:
        return "no token sampling"
    max_tokens = settings["max_tokens"]
    k = "all" if max_tokens is None else ",".join("all" if v is None else f"{v:g}" for v in _as_list(max_tokens))
    return f"{settings['sampler']}, layers {format_layers(settings['layers'])}, K {k}"


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    args.output.mkdir(parents=True, exist_ok=True)
    example = load_example()

    images, labels = test_split()
    pixel_values = to_pixel_values(images)
    base = AtsViTForImageClassification.from_pretrained(DEFAULT_MODEL_DIR)
    dense_settings = {"layers": [], "max_tokens": None, "sampler": "inverse_transform"}
    ats_settings = {"layers": args.layers, "max_tokens": args.max_tokens, "sampler": "inverse_transform"}
    rows = []

    def add(name, model, settings, **extra):
        row = {"name": name, "setting": describe(settings), "settings": settings,
               **evaluate(model, settings, pixel_values, labels), **extra}
        rows.append(row)
        print(f"{name}: {row['accuracy']:.2f} +- {row['std_error']:.2f} at {100 * row['fraction_of_dense']:.1f}% of "
              f"dense GMACs (mean tokens per layer {row['mean_tokens']})", flush=True)
        return row

    add("dense", base, dense_settings)
    plug_ats = add("ATS, plug and play", base, ats_settings)
    plug_k = matching_top_k(base.config, args.layers, plug_ats["mean_tokens"], plug_ats["gmacs"])
    add("top-K, plug and play", base, {"layers": args.layers, "max_tokens": plug_k, "sampler": "top_k"})

    ats_dir, ats_training = fine_tune(example, args, "ats-kd", ats_settings)
    tuned_ats = AtsViTForImageClassification.from_pretrained(ats_dir)
    fine_ats = add("ATS, fine-tuned (KD)", tuned_ats, ats_settings, training=ats_training)

    top_k = matching_top_k(base.config, args.layers, fine_ats["mean_tokens"], fine_ats["gmacs"])
    top_k_settings = {"layers": args.layers, "max_tokens": top_k, "sampler": "top_k"}
    add("top-K, plug and play, at fine-tuned ATS's GMACs", base, top_k_settings)
    top_k_dir, top_k_training = fine_tune(example, args, "top-k-kd", top_k_settings)
    tuned_top_k = AtsViTForImageClassification.from_pretrained(top_k_dir)
    add("top-K, fine-tuned (KD)", tuned_top_k, top_k_settings, training=top_k_training)
    add("ATS-fine-tuned weights, dense", tuned_ats, dense_settings)

    training_s = ats_training["train_runtime_s"] + top_k_training["train_runtime_s"]
    table = format_table(rows)
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "threads": args.threads,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "test_images": len(labels),
        "dense_gmacs": dense_gmacs(base.config),
        "training_seconds": training_s,
        "training_budget_seconds": TRAINING_BUDGET_S,
        "total_seconds": time.perf_counter() - started,
        "rows": rows,
    }
    (args.output / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{table}\n")
    budget = "within" if training_s <= TRAINING_BUDGET_S else "OVER"
    print(f"training {training_s / 60:.1f} min in all ({budget} the {TRAINING_BUDGET_S // 60}-minute budget), "
          f"{args.threads} thread(s); total {summary['total_seconds'] / 60:.1f} min; "
          f"wrote {args.output / 'results.json'}")


if __name__ == "__main__":
    main()
