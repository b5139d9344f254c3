"""Mean intersection-over-union for ``evaluate``: semantic segmentation scores over a whole evaluation set."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Mean IoU: per class, the pixels predicted as that class AND labelled as it (intersection) over the
pixels predicted OR labelled as it (union), summed over the whole evaluation set before dividing; the mean is over
the classes that occur (in the labels or the predictions). Also: per-class accuracy (intersection over labelled
pixels), their mean, and the overall pixel accuracy. Pixels labelled ``ignore_index`` count nowhere."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids, one (height, width) array per image.
    references: ground-truth class ids, same shapes.
    num_labels: number of classes (ids 0 .. num_labels - 1).
    ignore_index: label id that is not scored (255 by convention).
    reduce_labels: the references use 0 for "background, not scored" and 1..num_labels for the classes (ADE20K's
        convention): 0 becomes ignore_index and every other id moves down by one.
    nan_to_num: replace the NaN of classes that occur nowhere by this value (default: leave NaN; the means skip them).
Returns:
    mean_iou, mean_accuracy, overall_accuracy: floats in [0, 1];
    per_category_iou, per_category_accuracy: arrays of length num_labels (NaN for classes that occur nowhere).
Example:
    >>> metric = evaluate.load("mona_peft/tasks/semantic_segmentation/mean_iou")
    >>> metric.compute(predictions=[[[0, 1]]], references=[[[0, 0]]], num_labels=2, ignore_index=255)["mean_iou"]
    0.25
"""


def confusion_counts(prediction, reference, num_labels, ignore_index, reduce_labels=False):
    """(intersection, predicted area, labelled area) per class for one image, ignoring ``ignore_index`` pixels."""
    prediction = np.asarray(prediction, dtype=np.int64)
    reference = np.asarray(reference, dtype=np.int64)
    if prediction.shape != reference.shape:
        raise ValueError(f"A prediction of shape {prediction.shape} was given for a reference of {reference.shape}.")
    if reduce_labels:
        reference = np.where(reference == 0, ignore_index, reference - 1)
        reference = np.where(reference == ignore_index - 1, ignore_index, reference)
    scored = reference != ignore_index
    prediction, reference = prediction[scored], reference[scored]
    outside = np.setdiff1d(np.unique(reference), np.arange(num_labels))
    if len(outside):
        raise ValueError(f"Reference class id(s) {outside.tolist()} outside 0..{num_labels - 1} (num_labels).")
    hits = reference[prediction == reference]
    intersection = np.bincount(hits, minlength=num_labels)[:num_labels]
    predicted = np.bincount(prediction[(prediction >= 0) & (prediction < num_labels)], minlength=num_labels)
    labelled = np.bincount(reference, minlength=num_labels)
    return intersection, predicted[:num_labels], labelled


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                }
            ),
        )

    def _compute(self, predictions, references, num_labels, ignore_index=255, reduce_labels=False, nan_to_num=None):
        totals = np.zeros((3, num_labels), dtype=np.int64)
        for prediction, reference in zip(predictions, references, strict=True):
            totals += np.stack(confusion_counts(prediction, reference, num_labels, ignore_index, reduce_labels))
        intersection, predicted, labelled = totals.astype(np.float64)
        union = predicted + labelled - intersection
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = intersection / union
            accuracy = intersection / labelled
        results = {
            "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "mean_accuracy": float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else float("nan"),
            "overall_accuracy": float(intersection.sum() / labelled.sum()) if labelled.sum() else float("nan"),
            "per_category_iou": iou,
            "per_category_accuracy": accuracy,
        }
        if nan_to_num is not None:
            results = {key: np.nan_to_num(value, nan=nan_to_num) for key, value in results.items()}
        return results
