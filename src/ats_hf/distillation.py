"""Logit distillation for fine-tuning with `Trainer`: a frozen teacher (typically the same model without token
sampling) guides the student (the model with ATS in the loop), so that the student recovers the accuracy token
sampling cost it.

    loss = (1 - alpha) * CE(student logits, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

`distillation_loss` is the formula; `DistillationTrainer` is `Trainer` with that loss. This is tooling: `import ats_hf`
does not import it (it imports `transformers.Trainer`).
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, Trainer


def check_distillation_settings(alpha: float, temperature: float) -> None:
    """Raise `ValueError` naming the value and its range unless 0 <= alpha <= 1 and temperature > 0."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distillation alpha={alpha} is outside [0, 1].")
    if not temperature > 0.0:  # also rejects NaN
        raise ValueError(f"distillation temperature={temperature} must be > 0.")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """The mean over the batch of (1 - alpha) * CE + alpha * T^2 * KL(teacher || student), softened by T.

    Args:
        student_logits: (B, C).
        teacher_logits: (B, C); no gradient flows into them.
        labels: (B,) class indices.
        alpha: weight of the distillation term, in [0, 1]; 0 is plain cross-entropy.
        temperature: T > 0; the T^2 factor keeps the term's gradients at the scale of the CE term's as T changes.
        label_smoothing: of the cross-entropy term, as in `torch.nn.functional.cross_entropy`.
    Returns:
        () scalar loss.
    """
    check_distillation_settings(alpha, temperature)
    cross_entropy = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    if alpha == 0.0:
        return cross_entropy
    log_student = torch.log_softmax(student_logits / temperature, dim=-1)  # (B, C)
    log_teacher = torch.log_softmax(teacher_logits.detach() / temperature, dim=-1)  # (B, C)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(dim=-1).mean()
    return (1.0 - alpha) * cross_entropy + alpha * temperature**2 * kl


class DistillationTrainer(Trainer):
    """`Trainer` whose loss is `distillation_loss` against a frozen teacher's logits.

    The teacher is put in eval mode, frozen (no gradients) and moved to the student's device; it is not part of the
    trained model, so checkpoints and `save_model` hold the student only. The same loss is reported as `eval_loss`.
    `args.label_smoothing_factor` smooths the cross-entropy term.

    Args:
        teacher: a classifier whose `forward(pixel_values=...)` returns `.logits` (B, C) over the student's classes.
        alpha: weight of the distillation term, in [0, 1].
        temperature: softening temperature T > 0.
        *args, **kwargs: `Trainer`'s.
    """

    # compute_loss returns a per-batch mean: Trainer divides it by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, teacher: PreTrainedModel | nn.Module, alpha: float = 0.5, temperature: float = 2.0,
                 **kwargs):
        check_distillation_settings(alpha, temperature)
        super().__init__(*args, **kwargs)
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.teacher = teacher.eval().requires_grad_(False).to(self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """inputs: `pixel_values` (B, 3, H, W) and `labels` (B,). Returns the loss, and the student's outputs
        (without a loss field) when `return_outputs`."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        with torch.no_grad():
            self.teacher.eval()  # Trainer may have switched every module it can reach to train mode
            teacher_logits = self.teacher(pixel_values=inputs["pixel_values"]).logits
        loss = distillation_loss(
            outputs.logits, teacher_logits, labels, self.alpha, self.temperature, self.args.label_smoothing_factor
        )
        return (loss, outputs) if return_outputs else loss


__all__ = ["DistillationTrainer", "check_distillation_settings", "distillation_loss"]
