"""Model cards for ATS checkpoints of every family, in the Hub's format: a YAML metadata header, then Markdown.

`write_model_card(save_directory, config, ...)` writes README.md next to a saved model; `build_model_card` returns the
`huggingface_hub.ModelCard` without writing it.
"""

import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from transformers import PretrainedConfig

from ..configuration_ats_core import num_input_tokens, num_special_tokens
from ..families import ZERO_SHOT, family_of, is_classifier, model_class_for, takes_videos
from ..flops import dense_gmacs

TAGS = ["vision", "adaptive-token-sampling", "ats_hf"]

_CITATION = """\
@inproceedings{fayyaz2022adaptive,
  title     = {Adaptive Token Sampling for Efficient Vision Transformers},
  author    = {Fayyaz, Mohsen and Koohpayegani, Soroush Abbasi and Jafari, Farnoush Rezaei and Sengupta, Sunando and
               Joze, Hamid Reza Vaezi and Sommerlade, Eric and Pirsiavash, Hamed and Gall, J{\\"u}rgen},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2022}
}"""


def build_model_card(
    config: PretrainedConfig,
    *,
    model_id: str,
    base_model: str | None = None,
    license: str | None = None,
    ats_gmacs: float | None = None,
    gmacs_measured_on: str | None = None,
    metrics: dict[str, float] | None = None,
    datasets: list[str] | None = None,
) -> ModelCard:
    """The model card of an ATS checkpoint (any family).

    Args:
        config: the checkpoint's config (ATS settings, geometry for the dense GMACs; its `architectures` say what the
            checkpoint does: classify, extract features, or zero-shot classify).
        model_id: what users pass to `from_pretrained` (the Hub repo id, or a local path) in the usage snippets.
        base_model: Hub id of the upstream model the weights come from; `None` if not on the Hub or unknown.
        license: the license of the weights (normally the base model's); `None` writes `unknown`.
        ats_gmacs: mean measured GMACs per image with ATS, if known.
        gmacs_measured_on: what `ats_gmacs` was measured on (e.g. "the 50000 ImageNet-1k validation images").
        metrics: evaluation results to list, e.g. `{"accuracy": 0.79}`.
        datasets: Hub ids of the datasets the model was fine-tuned or evaluated on.
    """
    if ats_gmacs is not None and not gmacs_measured_on:
        raise ValueError(f"ats_gmacs={ats_gmacs} needs gmacs_measured_on: say what images it is the mean over.")
    task = _task(config)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=task,
        license=license or "unknown",
        base_model=base_model,
        datasets=datasets or None,
        tags=[TAGS[0], *([task] if task else []), *TAGS[1:]],
    )
    sections = [
        _title(config, model_id, base_model),
        _settings_section(config),
        _compute_section(config, base_model, ats_gmacs, gmacs_measured_on),
        _metrics_section(metrics),
        _usage_section(model_id, config, task),
        "## Citation\n\n```bibtex\n" + _CITATION + "\n```\n",
    ]
    body = "\n".join(section for section in sections if section)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


def _task(config: PretrainedConfig) -> str | None:
    """The pipeline task of the checkpoint: what the class its `architectures` names does (None for a video backbone:
    transformers has no pipeline for video features)."""
    model_class = model_class_for(config.to_dict())
    if ZERO_SHOT in family_of(model_class).capabilities:
        return "zero-shot-image-classification"
    if takes_videos(model_class):
        return "video-classification" if is_classifier(model_class) else None
    return "image-classification" if is_classifier(model_class) else "image-feature-extraction"


def _input_kind(config: PretrainedConfig) -> str:
    """What one input of the model is: "video" for a video family, else "image"."""
    return "video" if takes_videos(config) else "image"


def write_model_card(save_directory: str | os.PathLike, config: PretrainedConfig, **kwargs) -> Path:
    """Write README.md into `save_directory`; keyword arguments as in `build_model_card` (`model_id` defaults to
    the directory). Returns the path written."""
    kwargs.setdefault("model_id", str(save_directory))
    path = Path(save_directory) / "README.md"
    build_model_card(config, **kwargs).save(path)
    return path


def _title(config: PretrainedConfig, model_id: str, base_model: str | None) -> str:
    name = model_id.rstrip("/").split("/")[-1]
    family = family_of(config).title
    config = _ats_config(config)
    source = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else f"A {family} model"
    adaptive = "" if config.ats_layers else f" (`ats_layers` is empty: this checkpoint runs as a plain {family})"
    kind = _input_kind(config)
    return (
        f"# {name}\n\n"
        f"{source} with **Adaptive Token Sampling** (ATS; Fayyaz et al., ECCV 2022){adaptive}, packaged with "
        "ats_hf for HuggingFace transformers.\n\n"
        "ATS is parameter-free. In each ATS layer, every patch token gets a significance score (the CLS token's "
        "attention to it, summed over heads, times the norm of its value vector); inverse-transform sampling of the "
        "scores' cumulative distribution picks the tokens to keep, and the others leave the sequence. The number "
        f"of kept tokens therefore differs per {kind}: easy {kind}s cost less. Outputs carry `num_tokens` (tokens "
        f"per layer per {kind}) and `sampled_token_indices` (the patch positions each ATS layer kept).\n"
    )


def _ats_config(config: PretrainedConfig) -> PretrainedConfig:
    """The config that holds the ATS settings: the vision config of a composite (CLIP) one."""
    return getattr(config, "vision_config", None) or config


def _settings_section(config: PretrainedConfig) -> str:
    special_tokens = family_of(config).special_tokens
    config = _ats_config(config)
    num_reference_tokens = num_input_tokens(config)
    special = num_special_tokens(config)
    if config.ats_layers:
        resolved = config.resolve_ats_max_tokens(num_reference_tokens)
        budget = ", ".join(f"layer {index}: {tokens}" for index, tokens in resolved.items())
    else:
        budget = "none (no ATS layers)"
    rows = [
        ("`ats_layers`", f"{config.ats_layers} of {config.num_hidden_layers} layers (0-based)"),
        ("`ats_max_tokens`", f"{config.ats_max_tokens!r} -> most tokens kept, special tokens included: {budget}"),
        ("`ats_sampler`", f"`{config.ats_sampler}`"),
        ("`ats_capacity`", "adaptive mode (None)" if config.ats_capacity is None else
         f"{config.ats_capacity!r} -> static mode, rows per ATS layer: "
         + ", ".join(f"layer {i}: {rows}" for i, rows in config.resolve_ats_capacity(num_reference_tokens).items())),
        ("`ats_merge`", "dropped tokens leave (None)" if config.ats_merge is None else
         f"dropped tokens merge into kept ones at cosine similarity >= {config.ats_merge:g}"),
        ("input tokens",
         f"{num_reference_tokens}: {special} special ({special_tokens}), {num_reference_tokens - special} patches"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return (
        "## ATS settings\n\n| setting | value |\n|---|---|\n"
        f"{table}\n\n"
        "Change them at load time, e.g. `from_pretrained(..., ats_max_tokens=0.5)` keeps at most half the tokens.\n"
    )


def _compute_section(
    config: PretrainedConfig, base_model: str | None, ats_gmacs: float | None, measured_on: str | None
) -> str:
    dense = dense_gmacs(_ats_config(config), with_head=is_classifier(model_class_for(config.to_dict())))
    kind = _input_kind(config)
    dense_name = f"dense ({base_model})" if base_model else "dense (same weights, no token sampling)"
    rows = [f"| {dense_name} | {dense:.4g} | |"]
    if ats_gmacs is None:
        note = (
            f"The ATS cost depends on the {kind} and was not measured for this card. Measure it on your data: "
            f"`ats_hf.flops.gmacs_per_image(model.config, outputs.num_tokens)` gives GMACs per {kind}.\n"
        )
    else:
        rows.append(f"| ATS (mean over {measured_on}) | {ats_gmacs:.4g} | {100 * (ats_gmacs / dense - 1):+.1f}% |")
        note = ""
    return (
        f'## Compute per {kind}\n\nMultiply-adds per {kind} in GMACs (the papers\' "GFLOPs").\n\n'
        f"| model | GMACs per {kind} | vs dense |\n|---|---|---|\n" + "\n".join(rows) + "\n\n" + note
    )


def _metrics_section(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return ""
    rows = "\n".join(f"| {name} | {value:.4g} |" for name, value in metrics.items())
    return f"## Evaluation\n\n| metric | value |\n|---|---|\n{rows}\n"


_PIPELINES = {  # task -> (the variable the snippet names, its call)
    "image-classification": ("classifier", 'classifier("image.jpg", top_k=5)'),
    "image-feature-extraction": ("extractor", 'extractor("image.jpg")  # (1, tokens, hidden_size) per image'),
    "zero-shot-image-classification": ("classifier", 'classifier("image.jpg", candidate_labels=["a cat", "a dog"])'),
    "video-classification": ("classifier", 'classifier("video.mp4", top_k=5)  # decoding a file needs PyAV (av)'),
}
_AUTO_CLASSES = {
    "image-classification": "AutoModelForImageClassification",
    "image-feature-extraction": "AutoModel",
    "zero-shot-image-classification": "AutoModel",
    "video-classification": "AutoModelForVideoClassification",
    None: "AutoModel",  # a video backbone
}


def _usage_section(model_id: str, config, task: str | None) -> str:
    configuration_file = type(config).__module__.rsplit(".", 1)[-1] + ".py"
    modeling_file = configuration_file.replace("configuration_", "modeling_", 1)
    auto_class = _AUTO_CLASSES[task]
    kind = _input_kind(config)
    if task == "zero-shot-image-classification":
        inputs = 'processor(text=["a cat", "a dog"], images=Image.open("image.jpg"), return_tensors="pt", padding=True)'
        ats_outputs = "outputs.vision_model_output"
        processor_class = "AutoProcessor"
    else:
        inputs, ats_outputs, processor_class = 'processor(Image.open("image.jpg"), return_tensors="pt")', "outputs", (
            "AutoImageProcessor")
    source, frames = "from PIL import Image\n", ""
    if kind == "video":
        inputs, source = 'processor(frames, return_tensors="pt")', ""
        frames = "frames = ...  # the video's model.config.num_frames RGB frames: (height, width, 3) uint8 arrays\n"
    pipelines = "" if task is None else _pipeline_usage(model_id, config, task)
    return f"## Usage\n\n{pipelines}" + f"""\
`trust_remote_code=True` executes this repository's `{configuration_file}` and `{modeling_file}` (and the ATS core
they import: `configuration_ats_core.py`, `modeling_ats_core.py` and `ats_sampling.py`) on your machine. Read them
before you run them, and pin the revision you read (`revision="<commit sha>"`) so that a later push cannot change the
code you execute.

Tokens kept and compute per {kind}:

```python
import torch
{source}from transformers import {processor_class}, {auto_class}

processor = {processor_class}.from_pretrained("{model_id}")
model = {auto_class}.from_pretrained("{model_id}", trust_remote_code=True).eval()
{frames}with torch.no_grad():
    outputs = model(**{inputs})
{ats_outputs}.num_tokens             # (batch, num_layers): tokens each layer outputs, special tokens included
{ats_outputs}.sampled_token_indices  # (batch, ATS layers, max_kept): kept patch positions, -1 padded
```
"""


def _pipeline_usage(model_id: str, config, task: str) -> str:
    variable, call = _PIPELINES[task]
    return f"""With ats_hf installed, the model runs from ats_hf's own code:

```python
import ats_hf  # registers the {config.model_type} model type with transformers' Auto classes
from transformers import pipeline

{variable} = pipeline("{task}", model="{model_id}")
{call}
```

Without ats_hf, transformers runs the modeling code stored in this repository:

```python
from transformers import pipeline

{variable} = pipeline("{task}", model="{model_id}", trust_remote_code=True)
{call}
```

"""


__all__ = ["build_model_card", "write_model_card"]
