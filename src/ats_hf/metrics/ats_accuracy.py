"""Top-1 accuracy, plus the mean compute per image (GMACs) of an adaptive model when it is given.

An `evaluate` metric module: `evaluate.load(path_to_this_file)` works offline.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-1 accuracy: the fraction of images whose predicted class index equals the reference.
With `gmacs` (one value per image, e.g. `ats_hf.flops.gmacs_per_image(config, outputs.num_tokens)`), also the mean
GMACs per image, the papers' cost figure for an adaptive model whose compute differs per image.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class index per image.
    references (`list[int]`): true class index per image.
    gmacs (`list[float]`, *optional*): GMACs the model spent on each image, in the same order.
Returns:
    accuracy (`float`): in [0, 1].
    gmacs (`float`): mean GMACs per image; only when `gmacs` was given.
Example:
    >>> metric = evaluate.load("src/ats_hf/metrics/ats_accuracy.py")
    >>> metric.compute(predictions=[0, 1], references=[0, 0], gmacs=[2.9, 3.1])
    {'accuracy': 0.5, 'gmacs': 3.0}
"""

_CITATION = """
@inproceedings{fayyaz2022adaptive,
  title={Adaptive Token Sampling for Efficient Vision Transformers},
  author={Fayyaz, Mohsen and Koohpayegani, Soroush Abbasi and Jafari, Farnoush Rezaei and Sengupta, Sunando and
          Joze, Hamid Reza Vaezi and Sommerlade, Eric and Pirsiavash, Hamed and Gall, J{\\"u}rgen},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2022}
}
"""


class AtsAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, gmacs=None):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if len(predictions) == 0:
            raise ValueError("ats_accuracy got no predictions; an accuracy over zero images is undefined.")
        result = {"accuracy": float((predictions == references).mean())}
        if gmacs is not None:
            gmacs = np.asarray(gmacs, dtype=np.float64)
            if gmacs.shape != predictions.shape:
                raise ValueError(
                    f"gmacs has shape {gmacs.shape}; expected one value per prediction, shape {predictions.shape}."
                )
            result["gmacs"] = float(gmacs.mean())
        return result
