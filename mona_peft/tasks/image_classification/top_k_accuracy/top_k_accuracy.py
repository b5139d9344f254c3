"""Top-k accuracy for ``evaluate``: the fraction of samples whose label is among the k highest scores."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Top-k accuracy: a sample counts as correct when its reference label is among the k classes with the
highest scores. k=1 is ordinary accuracy."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per-sample class scores (logits or probabilities), shape (n, num_classes).
    references: integer labels, shape (n,).
    k: how many of the highest-scoring classes count (default 1).
Returns:
    top_k_accuracy: float in [0, 1].
Example:
    >>> metric = evaluate.load("mona_peft/tasks/image_classification/top_k_accuracy")
    >>> metric.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 1], k=1)
    {'top_k_accuracy': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=1):
        scores = np.asarray(predictions, dtype=np.float64)
        labels = np.asarray(references, dtype=np.int64)
        if scores.ndim != 2 or len(scores) != len(labels):
            raise ValueError(
                f"predictions must be (n, num_classes) scores for n={len(labels)} labels, got {scores.shape}."
            )
        if not 1 <= k <= scores.shape[1]:
            raise ValueError(f"k must be between 1 and the number of classes ({scores.shape[1]}), got {k}.")
        top_k = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return {"top_k_accuracy": float((top_k == labels[:, None]).any(axis=1).mean())}
