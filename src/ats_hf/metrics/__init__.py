"""`evaluate` metric modules that ship with ats_hf, loadable offline by path:

    import evaluate
    from ats_hf.metrics import ATS_ACCURACY
    metric = evaluate.load(ATS_ACCURACY)
    metric.compute(predictions=[0, 1], references=[0, 0], gmacs=[2.9, 3.1])  # {"accuracy": 0.5, "gmacs": 3.0}
"""

from pathlib import Path

ATS_ACCURACY = str(Path(__file__).with_name("ats_accuracy.py"))

__all__ = ["ATS_ACCURACY"]
