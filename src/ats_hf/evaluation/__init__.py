"""The evaluation engine the tools share: data sources streamed in batches (`sources`), objectives (`objectives`),
the loop (`loop`) and several processes (`processes`)."""

from .loop import Evaluation, LoopStats, evaluate_methods
from .objectives import OBJECTIVES, Objective, default_objective, image_embedding
from .processes import ONE_PROCESS, Processes, join_processes
from .sources import ImageSource, UnreadableImageError, as_source, open_images, tensor_images, to_model_labels

__all__ = [
    "OBJECTIVES",
    "ONE_PROCESS",
    "Evaluation",
    "ImageSource",
    "LoopStats",
    "Objective",
    "Processes",
    "UnreadableImageError",
    "as_source",
    "default_objective",
    "evaluate_methods",
    "image_embedding",
    "join_processes",
    "open_images",
    "tensor_images",
    "to_model_labels",
]
