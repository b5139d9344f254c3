"""CocoEvaluator (mona_peft/metrics/coco.py) against APs computed by hand from COCO's definition.

COCO's AP, for one class at one IoU threshold: sort the detections by score, mark each a true positive (matches a
still-unmatched ground truth at IoU >= threshold) or a false positive; precision/recall after each detection; make
precision non-increasing from the right (the envelope); read it at the 101 recall points 0, .01, ..., 1 (at the
first detection whose recall reaches the point, 0 past the last recall) and average. ``map`` averages that over the
IoU thresholds .50, .55, ..., .95 and over the classes that have ground truth; at most 100 detections per image.
"""

import pickle

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from mona_peft.tasks.object_detection.coco import STAT_NAMES, CocoEvaluator

BOX_KEYS = list(STAT_NAMES)
MASK_KEYS = [f"mask_{name}" for name in STAT_NAMES]


def target(boxes, labels, **extra):
    """Ground truth: x, y, w, h boxes."""
    return {"boxes": np.array(boxes, dtype=float).reshape(-1, 4), "labels": np.array(labels, dtype=int), **extra}


def prediction(boxes, scores, labels, **extra):
    """Predictions: x1, y1, x2, y2 boxes."""
    return {
        "boxes": np.array(boxes, dtype=float).reshape(-1, 4),
        "scores": np.array(scores, dtype=float),
        "labels": np.array(labels, dtype=int),
        **extra,
    }


def box_masks(boxes_xywh, height, width):
    """One filled rectangle mask per x, y, w, h box."""
    masks = np.zeros((len(boxes_xywh), height, width), dtype=bool)
    for mask, (x, y, w, h) in zip(masks, boxes_xywh, strict=True):
        mask[y : y + h, x : x + w] = True
    return masks


def xyxy(x, y, w, h):
    return [x, y, x + w, y + h]


def test_perfect_predictions_give_one_everywhere_and_print_nothing(capsys):
    evaluator = CocoEvaluator(["a", "b"], iou_types=("bbox", "segm"))
    images = {  # image id -> (x, y, w, h, label) objects: small (10x10) and medium (40x40) ones, no large one
        3: [(5, 5, 10, 10, 0), (50, 50, 40, 40, 1)],
        -8: [(20, 30, 40, 40, 0), (70, 10, 12, 9, 1), (70, 70, 40, 40, 0)],
    }
    for image_id, objects in images.items():
        boxes = [o[:4] for o in objects]
        labels = [o[4] for o in objects]
        masks = box_masks(boxes, 128, 128)
        evaluator.add(
            image_id,
            128,
            128,
            target(boxes, labels, masks=masks),
            prediction([xyxy(*b) for b in boxes], np.linspace(0.9, 0.5, len(boxes)), labels, masks=masks),
        )
    results = evaluator.compute()
    assert capsys.readouterr().out == ""  # COCOeval's progress lines and summary table are swallowed
    for key in BOX_KEYS + MASK_KEYS:
        expected = -1.0 if key.endswith("_large") else 1.0  # no large object: undefined, -1 as in COCO
        if key.endswith("mar_1"):  # one detection per image and class: class a finds 2 of 3 (image -8 has two)
            expected = (2 / 3 + 1) / 2
        assert results[key] == pytest.approx(expected, abs=1e-6), key
    assert results["map_per_class"] == pytest.approx([1.0, 1.0], abs=1e-6)
    assert results["mask_map_per_class"] == pytest.approx([1.0, 1.0], abs=1e-6)
    assert set(results) == set(BOX_KEYS + MASK_KEYS) | {"map_per_class", "mask_map_per_class"}
    assert evaluator.compute() == results  # computing leaves the records as they were


def test_a_false_positive_ranked_above_the_match_halves_the_precision():
    gt_boxes = [[10, 10, 40, 40], [100, 100, 40, 40]]  # two medium objects of class 0
    match, false_positive = xyxy(10, 10, 40, 40), [10, 120, 50, 160]  # the second overlaps nothing

    evaluator = CocoEvaluator(["a"])
    evaluator.add(1, 200, 200, target(gt_boxes, [0, 0]), prediction([match, false_positive], [0.9, 0.95], [0, 0]))
    results = evaluator.compute()
    # Ranked: FP (.95) then TP (.9): precision 0, 1/2 at recall 0, 1/2; envelope 1/2 up to recall 1/2. The 51 recall
    # points 0, .01, ..., .50 read 1/2, the 50 above read 0; the match is exact, so every IoU threshold agrees.
    ap = 51 * 0.5 / 101
    for key in ("map", "map_50", "map_75", "map_medium"):
        assert results[key] == pytest.approx(ap, abs=1e-6), key
    assert results["map_per_class"] == pytest.approx([ap], abs=1e-6)
    assert results["mar_100"] == pytest.approx(0.5) and results["mar_10"] == pytest.approx(0.5)
    assert results["mar_1"] == 0.0  # one detection per image (and class): only the false positive
    assert results["map_small"] == results["map_large"] == results["mar_small"] == results["mar_large"] == -1.0

    swapped = CocoEvaluator(["a"])  # the match first: precision 1 up to recall 1/2
    swapped.add(1, 200, 200, target(gt_boxes, [0, 0]), prediction([match, false_positive], [0.95, 0.9], [0, 0]))
    swapped_results = swapped.compute()
    assert swapped_results["map"] == pytest.approx(51 / 101, abs=1e-6)
    assert swapped_results["mar_1"] == pytest.approx(0.5)


def test_an_iou_of_exactly_0_6_matches_at_thresholds_050_055_060_only():
    gt_box, predicted = [0, 0, 100, 100], [25, 0, 125, 100]  # same rows, 75 of 100 columns shared
    # IoU = 75*100 / (2*100*100 - 75*100) = 7500 / 12500 = 0.6, and pycocotools computes exactly that double.
    assert mask_utils.iou([[25, 0, 100, 100]], [gt_box], [0])[0, 0] == 0.6
    evaluator = CocoEvaluator(["a"])
    evaluator.add(0, 200, 200, target([gt_box], [0]), prediction([predicted], [0.7], [0]))
    results = evaluator.compute()
    # A match (AP 1) at .50, .55, .60 (COCO matches at IoU >= threshold), a false positive (AP 0) at .65 ... .95.
    assert results["map"] == pytest.approx(3 / 10, abs=1e-6)
    assert results["map_large"] == pytest.approx(3 / 10, abs=1e-6)  # 100x100 = 10000 > 96²
    assert results["map_50"] == pytest.approx(1.0, abs=1e-6)
    assert results["map_75"] == 0.0
    assert results["mar_100"] == pytest.approx(3 / 10)


def test_mask_ap_scores_the_mask_while_box_ap_scores_the_box():
    gt_mask = np.zeros((1, 64, 64), dtype=bool)
    gt_mask[0, 10:50, 10:50] = True  # a 40x40 square: box x, y, w, h = 10, 10, 40, 40
    predicted_mask = gt_mask.copy()
    predicted_mask[0, 10:30, 28:50] = False  # an L: the square without its top-right 20x22 corner, same bounding box
    assert mask_utils.toBbox(mask_utils.encode(np.asfortranarray(predicted_mask[0].astype(np.uint8)))).tolist() == [
        10,
        10,
        40,
        40,
    ]
    evaluator = CocoEvaluator(["a"], iou_types=("bbox", "segm"))
    evaluator.add(
        0,
        64,
        64,
        target([[10, 10, 40, 40]], [0], masks=gt_mask),
        prediction([xyxy(10, 10, 40, 40)], [0.8], [0], masks=predicted_mask),
    )
    results = evaluator.compute()
    assert results["map"] == pytest.approx(1.0, abs=1e-6)  # box IoU 1
    # Mask IoU = (1600 - 20*22) / 1600 = 0.725: a match at .50, .55, .60, .65, .70 (5 of 10 thresholds), not at .75.
    assert results["mask_map"] == pytest.approx(5 / 10, abs=1e-6)
    assert results["mask_map_50"] == pytest.approx(1.0, abs=1e-6)
    assert results["mask_map_75"] == 0.0
    assert results["mask_mar_100"] == pytest.approx(5 / 10)
    assert results["mask_map_per_class"] == pytest.approx([5 / 10], abs=1e-6)
    assert results["mask_map_medium"] == pytest.approx(5 / 10, abs=1e-6)  # the square's 1600 pixels: medium

    # Torch tensors (float32 boxes, bool masks) give the same numbers.
    as_torch = CocoEvaluator(["a"], iou_types=("bbox", "segm"))
    as_torch.add(
        torch.tensor(0),
        64,
        64,
        {"boxes": torch.tensor([[10.0, 10, 40, 40]]), "labels": torch.tensor([0]), "masks": torch.from_numpy(gt_mask)},
        {
            "boxes": torch.tensor([xyxy(10.0, 10, 40, 40)]),
            "scores": torch.tensor([0.8]),
            "labels": torch.tensor([0]),
            "masks": torch.from_numpy(predicted_mask),
        },
    )
    assert as_torch.compute() == results


def test_area_buckets_include_both_ends():
    evaluator = CocoEvaluator(["a"])
    gt_boxes = [[0, 0, 31, 31], [50, 0, 33, 33], [100, 100, 97, 97]]  # 961: small, 1089: medium, 9409: large
    found = [xyxy(*gt_boxes[0]), xyxy(*gt_boxes[2])]  # the medium one is missed
    evaluator.add(0, 256, 256, target(gt_boxes, [0, 0, 0]), prediction(found, [0.9, 0.8], [0, 0]))
    results = evaluator.compute()
    assert results["map_small"] == pytest.approx(1.0, abs=1e-6) and results["mar_small"] == pytest.approx(1.0)
    assert results["map_medium"] == 0.0 and results["mar_medium"] == 0.0
    assert results["map_large"] == pytest.approx(1.0, abs=1e-6) and results["mar_large"] == pytest.approx(1.0)
    # All areas: recall 1/3, 2/3 at precision 1; recall points 0 ... .66 read 1 (67 of 101).
    assert results["map"] == pytest.approx(67 / 101, abs=1e-6)

    # Exactly 32² and 96²: small is [0, 32²], medium [32², 96²], large [96², 1e10], both ends included.
    boundary = CocoEvaluator(["a"])
    gt_boxes = [[0, 0, 32, 32], [100, 100, 96, 96]]
    boundary.add(0, 256, 256, target(gt_boxes, [0, 0]), prediction([xyxy(*gt_boxes[0])], [0.9], [0]))
    results = boundary.compute()
    assert results["map_small"] == pytest.approx(1.0, abs=1e-6)  # the 32x32 one alone
    assert results["map_medium"] == pytest.approx(51 / 101, abs=1e-6)  # both: recall 1/2 at precision 1
    assert results["mar_medium"] == pytest.approx(0.5)
    assert results["map_large"] == 0.0  # the missed 96x96 one alone


def test_ground_truth_area_is_the_mask_pixel_count_when_masks_are_given():
    mask = np.zeros((1, 64, 64), dtype=bool)
    mask[0, 10:50, 10:20] = True  # an L with a 40x40 box (1600, medium) but 40*10 + 10*30 = 700 pixels (small)
    mask[0, 40:50, 20:50] = True
    evaluator = CocoEvaluator(["a"])  # box AP only; the masks still set the areas
    evaluator.add(0, 64, 64, target([[10, 10, 40, 40]], [0], masks=mask), prediction([[10, 10, 50, 50]], [0.9], [0]))
    results = evaluator.compute()
    assert results["map_small"] == pytest.approx(1.0, abs=1e-6)
    assert results["map_medium"] == -1.0


def test_images_without_ground_truth_or_without_predictions():
    evaluator = CocoEvaluator(["a"])
    evaluator.add(1, 100, 100, target([[10, 10, 40, 40]], [0]), prediction([xyxy(10, 10, 40, 40)], [0.8], [0]))
    evaluator.add(2, 100, 100, target([], []), prediction([[0, 0, 30, 30]], [0.9], [0]))  # nothing to find there
    evaluator.add(3, 100, 100, target([[50, 50, 40, 40]], [0]), {"boxes": [], "scores": [], "labels": []})
    results = evaluator.compute()
    # Ranked: FP (.9, image 2), TP (.8, image 1); 2 objects: precision 1/2 up to recall 1/2.
    assert results["map"] == pytest.approx(51 * 0.5 / 101, abs=1e-6)
    assert results["mar_100"] == pytest.approx(0.5)


def test_no_predictions_at_all_give_zero_not_a_crash():
    evaluator = CocoEvaluator(["a", "b"], iou_types=("bbox", "segm"))
    empty = prediction([], [], [], masks=np.zeros((0, 32, 32), dtype=bool))
    boxes = [[2, 2, 10, 10]]
    evaluator.add(0, 32, 32, target(boxes, [0], masks=box_masks(boxes, 32, 32)), empty)
    evaluator.add(1, 32, 32, target([], [], masks=np.zeros((0, 32, 32), dtype=bool)), empty)
    results = evaluator.compute()
    for key in ("map", "map_50", "map_small", "mar_1", "mar_100", "mask_map", "mask_map_50", "mask_mar_100"):
        assert results[key] == 0.0, key
    assert results["map_medium"] == -1.0
    assert results["map_per_class"] == [0.0, -1.0]  # class b has no ground truth: undefined
    assert results["mask_map_per_class"] == [0.0, -1.0]


def test_per_class_ap_and_a_class_without_ground_truth():
    evaluator = CocoEvaluator(["a", "b", "c"])
    gt_boxes = [[0, 0, 40, 40], [100, 0, 40, 40], [0, 100, 40, 40]]  # one of class a, two of class b
    predictions = prediction(
        [xyxy(*gt_boxes[0]), xyxy(*gt_boxes[1]), [150, 150, 190, 190], [60, 60, 90, 90]],
        [0.5, 0.6, 0.7, 0.8],
        [0, 1, 1, 2],  # a: exact; b: a false positive above its one match; c: only a false positive
    )
    evaluator.add(0, 200, 200, target(gt_boxes, [0, 1, 1]), predictions)
    results = evaluator.compute()
    ap_b = 51 * 0.5 / 101
    # Class c has no ground truth: its AP is undefined (-1) and its false positive costs the mean nothing.
    assert results["map_per_class"] == pytest.approx([1.0, ap_b, -1.0], abs=1e-6)
    assert results["map"] == pytest.approx((1.0 + ap_b) / 2, abs=1e-6)


def test_crowd_regions_neither_count_as_objects_nor_make_false_positives():
    evaluator = CocoEvaluator(["a"])
    gt_boxes = [[10, 10, 40, 40], [100, 100, 90, 90]]  # the second is a crowd region
    predictions = prediction([xyxy(10, 10, 40, 40), [110, 110, 140, 140]], [0.9, 0.95], [0, 0])
    evaluator.add(0, 200, 200, target(gt_boxes, [0, 0], iscrowd=np.array([0, 1])), predictions)
    results = evaluator.compute()
    # The detection inside the crowd is ignored (IoU with a crowd = intersection / detection area = 1).
    assert results["map"] == pytest.approx(1.0, abs=1e-6) and results["mar_100"] == pytest.approx(1.0)


def test_state_and_merge_of_two_halves_equal_one_evaluator_fed_everything():
    rng = np.random.default_rng(0)
    images = []
    for image_id in (-3, 0, 7, 10**12, 42, 5):
        n = int(rng.integers(0, 4))
        xy = rng.integers(0, 40, size=(n, 2))
        wh = rng.integers(4, 24, size=(n, 2))
        boxes = np.concatenate([xy, wh], axis=1)
        labels = rng.integers(0, 3, size=n)
        shifted = np.clip(boxes + rng.integers(-3, 4, size=(n, 4)) * [1, 1, 0, 0], 0, None)
        shifted = np.concatenate([shifted, [[30, 30, 10, 10]]])  # and one false positive per image
        gt = target(boxes, labels, masks=box_masks(boxes, 64, 64))
        pred_boxes = [xyxy(*b) for b in shifted]
        pred = prediction(pred_boxes, rng.random(n + 1), [*labels, 1], masks=box_masks(shifted, 64, 64))
        images.append((image_id, gt, pred))

    def fed(subset):
        evaluator = CocoEvaluator(["a", "b", "c"], iou_types=("bbox", "segm"))
        for image_id, gt, pred in subset:
            evaluator.add(image_id, 64, 64, gt, pred)
        return evaluator

    expected = fed(images).compute()
    assert 0.1 < expected["map"] < 0.9 and 0.1 < expected["mask_map"] < 0.9  # neither trivial case
    first, second = fed(images[:3]), fed(images[3:])
    gathered = pickle.loads(pickle.dumps(first.state() + second.state()))  # as gather_object returns them
    merged = CocoEvaluator(["a", "b", "c"], iou_types=("bbox", "segm"))
    merged.merge(gathered)
    assert merged.compute() == expected
    nested = CocoEvaluator(["a", "b", "c"], iou_types=("bbox", "segm"))
    nested.merge([second.state(), first.state()])  # a list of states, in either order
    assert nested.compute() == expected
    first.merge(second.state())
    assert first.compute() == expected


def test_a_repeated_image_id_is_a_clear_error():
    evaluator = CocoEvaluator(["a"])
    args = (100, 100, target([[0, 0, 10, 10]], [0]), prediction([], [], []))
    evaluator.add(5, *args)
    with pytest.raises(ValueError, match="image_id 5 was already added"):
        evaluator.add(np.int64(5), *args)
    other = CocoEvaluator(["a"])
    other.add(5, *args)
    other.add(6, *args)
    with pytest.raises(ValueError, match=r"image_id\(s\) \[5\] occur more than once"):
        evaluator.merge(other.state())
    assert [r["image_id"] for r in evaluator.state()] == [5]  # a refused merge adds nothing


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="iou_types"):
        CocoEvaluator(["a"], iou_types=("keypoints",))
    segm = CocoEvaluator(["a"], iou_types=("segm",))
    with pytest.raises(ValueError, match='"masks" are required'):
        segm.add(0, 8, 8, target([[0, 0, 2, 2]], [0]), prediction([], [], []))
    with pytest.raises(ValueError, match=r"masks of shape \(1, 4, 4\), expected \(1, 8, 8\)"):
        segm.add(0, 8, 8, target([[0, 0, 2, 2]], [0], masks=np.ones((1, 4, 4), bool)), prediction([], [], []))
    with pytest.raises(ValueError, match=r"label\(s\) \[1\] outside 0..0"):
        CocoEvaluator(["a"]).add(0, 8, 8, target([[0, 0, 2, 2]], [1]), prediction([], [], []))
    with pytest.raises(ValueError, match="no image was added"):
        CocoEvaluator(["a"]).compute()
