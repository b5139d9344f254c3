"""The shipped ``evaluate`` mean-IoU module against hand computations (ignore index, label reduction, absent
classes, several images)."""

import math

import evaluate
import numpy as np
import pytest

from mona_peft.tasks.semantic_segmentation import METRIC_PATH


@pytest.fixture(scope="module")
def mean_iou():
    return evaluate.load(METRIC_PATH)


def test_ignore_index_and_a_class_that_occurs_nowhere(mean_iou):
    reference = [[0, 0, 1], [2, 255, 1]]
    prediction = [[0, 1, 1], [2, 2, 0]]  # the 2 predicted on the ignored pixel counts nowhere
    # By hand over the 5 scored pixels: class 0 1/3, class 1 1/3, class 2 1/1; class 3 occurs nowhere (NaN).
    results = mean_iou.compute(predictions=[prediction], references=[reference], num_labels=4, ignore_index=255)
    assert results["mean_iou"] == pytest.approx(5 / 9)
    assert results["mean_accuracy"] == pytest.approx(2 / 3)
    assert results["overall_accuracy"] == pytest.approx(3 / 5)
    np.testing.assert_allclose(results["per_category_iou"][:3], [1 / 3, 1 / 3, 1.0])
    assert math.isnan(results["per_category_iou"][3])
    filled = mean_iou.compute(
        predictions=[prediction], references=[reference], num_labels=4, ignore_index=255, nan_to_num=0
    )
    assert filled["per_category_iou"][3] == 0 and filled["mean_iou"] == pytest.approx(5 / 9)


def test_reduce_labels_drops_background_and_shifts_the_ids(mean_iou):
    # 0 is "background, not scored"; 1, 2, 3 become classes 0, 1, 2.
    results = mean_iou.compute(
        predictions=[[[2, 0, 0, 2]]], references=[[[0, 1, 2, 3]]], num_labels=3, ignore_index=255, reduce_labels=True
    )
    np.testing.assert_allclose(results["per_category_iou"], [0.5, 0.0, 1.0])
    np.testing.assert_allclose(results["per_category_accuracy"], [1.0, 0.0, 1.0])
    assert results["mean_iou"] == pytest.approx(0.5) and results["overall_accuracy"] == pytest.approx(2 / 3)


def test_areas_add_up_over_images_before_dividing(mean_iou):
    rng = np.random.default_rng(0)
    references = [rng.integers(0, 3, (5, 7)) for _ in range(3)]
    predictions = [rng.integers(0, 3, (5, 7)) for _ in range(3)]
    results = mean_iou.compute(predictions=predictions, references=references, num_labels=3, ignore_index=255)
    reference, prediction = (
        np.concatenate([r.ravel() for r in references]),
        np.concatenate([p.ravel() for p in predictions]),
    )
    expected = [
        ((prediction == c) & (reference == c)).sum() / ((prediction == c) | (reference == c)).sum() for c in range(3)
    ]
    np.testing.assert_allclose(results["per_category_iou"], expected)
    assert results["overall_accuracy"] == pytest.approx((prediction == reference).mean())


def test_a_reference_id_outside_the_classes_is_named(mean_iou):
    with pytest.raises(ValueError, match=r"Reference class id\(s\) \[7\] outside 0..2"):
        mean_iou.compute(predictions=[[[0, 1]]], references=[[[0, 7]]], num_labels=3, ignore_index=255)
