"""COCO box AP and mask AP for the detection and instance-segmentation scripts, computed by pycocotools' COCOeval.

Feed the evaluator one image at a time, then ``compute()``::

    >>> import numpy as np
    >>> evaluator = CocoEvaluator(["cat", "dog"])
    >>> evaluator.add(
    ...     image_id=7, height=100, width=100,
    ...     target={"boxes": np.array([[10.0, 10.0, 40.0, 40.0]]), "labels": np.array([1])},  # x, y, w, h
    ...     prediction={"boxes": np.array([[10.0, 10.0, 50.0, 50.0]]), "scores": np.array([0.9]),  # x1, y1, x2, y2
    ...                 "labels": np.array([1])},
    ... )
    >>> results = evaluator.compute()
    >>> round(results["map"], 6), results["map_per_class"][0], results["map_large"]
    (1.0, -1.0, -1.0)

Conventions, all COCO's own:

* **-1.0 means undefined**: a value that no ground truth defines (no large objects, a class that never occurs) is
  -1.0, exactly as COCOeval reports it, never NaN or None, so results stay JSON-safe. Means (``map``, ...) skip the
  undefined classes; a result that is -1.0 must not be averaged with others as if it were a score.
* Area buckets use the ground truth's ``area`` (its mask's pixel count when masks are given, else box w*h) and
  include both ends: small [0, 32²], medium [32², 96²], large [96², 1e10]; an area of exactly 32² or 96² counts in
  both neighbouring buckets.
* ``maxDets`` (1, 10, 100) limits detections per image *and per class*, not per image: give at most 100
  predictions per image to get COCO's usual per-image limit.
* Precision is tp / (tp + fp + 2.2e-16), so a perfect result is 1.0 minus a few ulps, not exactly 1.0.

With several processes, gather the records and merge them on one evaluator::

    records = accelerate.utils.gather_object(evaluator.state())  # one flat list from all processes
    if accelerator.is_main_process:
        merged = CocoEvaluator(class_names, iou_types)
        merged.merge(records)
        results = merged.compute()
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)  # the order of COCOeval.stats


def _to_numpy(value: Any) -> np.ndarray:
    """A numpy copy of a numpy array, torch tensor (any device or dtype) or nested list."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        value = value.double() if value.is_floating_point() else value  # bfloat16 has no numpy dtype
        value = value.numpy()
    return np.asarray(value)


def _encode(masks: np.ndarray) -> list[dict]:
    """Compressed RLE of each (H, W) mask in ``masks`` (N, H, W); values above 0.5 are foreground."""
    return [mask_utils.encode(np.asfortranarray((mask > 0.5).astype(np.uint8))) for mask in masks]


class CocoEvaluator:
    """Accumulates ground truth and predictions image by image, then computes COCO AP with pycocotools' COCOeval.

    ``class_names``: one name per class; labels are 0-based indices into it. ``iou_types``: any of ``"bbox"`` (box
    AP) and ``"segm"`` (mask AP, needs masks in every target and prediction). See the module docstring for an
    example and COCO's conventions (-1.0 for undefined values, area buckets, maxDets).
    """

    def __init__(self, class_names: Sequence[str], iou_types: Sequence[str] = ("bbox",)) -> None:
        if not class_names:
            raise ValueError("CocoEvaluator needs at least one class name.")
        unknown = sorted(set(iou_types) - set(IOU_TYPES))
        if unknown or not iou_types:
            raise ValueError(f"iou_types must be a non-empty subset of {IOU_TYPES}, got {tuple(iou_types)}.")
        self.class_names = list(class_names)
        self.iou_types = tuple(t for t in IOU_TYPES if t in iou_types)
        self._records: dict[int, dict] = {}

    def add(self, image_id: int, height: int, width: int, target: dict, prediction: dict) -> None:
        """Record one image's ground truth and predictions.

        ``target``: ``boxes`` (N, 4) x, y, w, h in pixels; ``labels`` (N,) class indices; ``masks`` (N, H, W) bool
        (required for "segm"; when given, the ground-truth areas are their pixel counts); optional ``iscrowd`` (N,).
        ``prediction``: ``boxes`` (M, 4) x1, y1, x2, y2 in pixels (as ``post_process_object_detection`` returns);
        ``scores`` (M,); ``labels`` (M,); ``masks`` (M, H, W) bool or 0..1 (required for "segm", > 0.5 is
        foreground). Numpy arrays, torch tensors or lists; empty arrays for an image without objects or predictions.
        """
        image_id = int(image_id)
        if image_id in self._records:
            raise ValueError(f"image_id {image_id} was already added to this CocoEvaluator; image ids must be unique.")
        height, width = int(height), int(width)
        segm = "segm" in self.iou_types

        boxes = _to_numpy(target["boxes"]).astype(np.float64).reshape(-1, 4)
        labels = self._labels(target["labels"], len(boxes), "target")
        iscrowd = _to_numpy(target.get("iscrowd", np.zeros(len(boxes)))).astype(np.int64).reshape(-1)
        if len(iscrowd) != len(boxes):
            raise ValueError(f"target: {len(iscrowd)} iscrowd flags for {len(boxes)} boxes (image_id {image_id}).")
        masks = self._masks(target, len(boxes), height, width, "target", image_id, required=segm)
        rles = _encode(masks) if segm else None
        areas = (masks > 0.5).sum(axis=(1, 2)) if masks is not None else boxes[:, 2] * boxes[:, 3]
        gt = []
        for i in range(len(boxes)):
            ann = {"bbox": boxes[i].tolist(), "category_id": int(labels[i]), "area": float(areas[i])}
            ann["iscrowd"] = int(iscrowd[i])
            if segm:
                ann["segmentation"] = rles[i]
            gt.append(ann)

        xyxy = _to_numpy(prediction["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _to_numpy(prediction["scores"]).astype(np.float64).reshape(-1)
        if len(scores) != len(xyxy):
            raise ValueError(f"prediction: {len(scores)} scores for {len(xyxy)} boxes (image_id {image_id}).")
        pred_labels = self._labels(prediction["labels"], len(xyxy), "prediction")
        pred_masks = self._masks(prediction, len(xyxy), height, width, "prediction", image_id, required=segm)
        pred_rles = _encode(pred_masks) if segm else None
        xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        dt = []
        for i in range(len(xyxy)):
            ann = {"bbox": xywh[i].tolist(), "score": float(scores[i]), "category_id": int(pred_labels[i])}
            if segm:
                ann["segmentation"] = pred_rles[i]
            dt.append(ann)

        self._records[image_id] = {"image_id": image_id, "height": height, "width": width, "gt": gt, "dt": dt}

    def state(self) -> list[dict]:
        """Picklable records of everything added, one dict per image (for ``gather_object`` and ``merge``)."""
        return list(self._records.values())

    def merge(self, states: list) -> None:
        """Add the records of other evaluators: a ``state()`` list, a concatenation of several (what
        ``accelerate.utils.gather_object`` returns) or a list of ``state()`` lists. Image ids must not repeat."""
        records = [r for item in states for r in (item if isinstance(item, list) else [item])]
        counts = Counter([*self._records, *(r["image_id"] for r in records)])
        repeated = sorted(i for i, n in counts.items() if n > 1)
        if repeated:
            raise ValueError(
                f"image_id(s) {repeated} occur more than once among the merged records; image ids must be unique "
                "(a multi-process dataloader may pad its last batch with repeated samples: add each image once)."
            )
        self._records.update((r["image_id"], r) for r in records)

    def compute(self) -> dict[str, Any]:
        """COCO AP/AR for each IoU type: the 12 COCOeval summary numbers under ``map``, ``map_50``, ... ``mar_large``
        (``mask_map``, ... for "segm") and ``map_per_class`` / ``mask_map_per_class``: AP over IoU .50:.95 per class,
        in ``class_names`` order. Undefined values are -1.0, as in COCO."""
        if not self._records:
            raise ValueError("CocoEvaluator.compute(): no image was added.")
        records = [self._records[i] for i in sorted(self._records)]
        images = [{"id": r["image_id"], "height": r["height"], "width": r["width"]} for r in records]
        categories = [{"id": k, "name": name} for k, name in enumerate(self.class_names)]
        results: dict[str, Any] = {}
        for iou_type in self.iou_types:
            # Annotation ids start at 1: COCOeval marks "unmatched" with id 0, so an object with id 0 could never count
            # as matched. Fresh dicts every time, because COCOeval writes into the annotations it is given.
            gts = [{**ann, "image_id": r["image_id"]} for r in records for ann in r["gt"]]
            dts = [{**ann, "image_id": r["image_id"], "iscrowd": 0} for r in records for ann in r["dt"]]
            for i, ann in enumerate(gts, start=1):
                ann["id"] = i
            for i, ann in enumerate(dts, start=1):
                ann["id"] = i
                if iou_type == "segm":  # COCO takes a segmentation's area and box from its mask
                    ann["area"] = float(mask_utils.area(ann["segmentation"]))
                    ann["bbox"] = mask_utils.toBbox(ann["segmentation"]).tolist()
                else:
                    ann["area"] = ann["bbox"][2] * ann["bbox"][3]
            with contextlib.redirect_stdout(io.StringIO()):  # COCO prints progress and a summary table
                # Built directly rather than with COCO.loadRes, which fails on an empty list of predictions and
                # takes the box's area even for "segm" when a result carries both.
                coco_gt, coco_dt = COCO(), COCO()
                coco_gt.dataset = {"images": images, "categories": categories, "annotations": gts}
                coco_dt.dataset = {"images": images, "categories": categories, "annotations": dts}
                coco_gt.createIndex()
                coco_dt.createIndex()
                coco_eval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()
            prefix = "mask_" if iou_type == "segm" else ""
            results.update({prefix + name: float(v) for name, v in zip(STAT_NAMES, coco_eval.stats, strict=True)})
            # precision: (IoU thresholds, recall points, classes, area ranges, maxDets); area "all", maxDets 100.
            precision = coco_eval.eval["precision"][:, :, :, 0, -1]
            per_class = []
            for k in range(len(self.class_names)):
                defined = precision[:, :, k][precision[:, :, k] > -1]
                per_class.append(float(defined.mean()) if defined.size else -1.0)
            results[prefix + "map_per_class"] = per_class
        return results

    def _labels(self, labels: Any, n: int, what: str) -> np.ndarray:
        labels = _to_numpy(labels).astype(np.int64).reshape(-1)
        if len(labels) != n:
            raise ValueError(f"{what}: {len(labels)} labels for {n} boxes.")
        outside = labels[(labels < 0) | (labels >= len(self.class_names))]
        if len(outside):
            bad = sorted(set(outside.tolist()))
            raise ValueError(f"{what}: label(s) {bad} outside 0..{len(self.class_names) - 1} (class indices).")
        return labels

    @staticmethod
    def _masks(
        source: dict, n: int, height: int, width: int, what: str, image_id: int, required: bool
    ) -> np.ndarray | None:
        if source.get("masks") is None:
            if required:
                raise ValueError(f'{what}: "masks" are required for the "segm" IoU type (image_id {image_id}).')
            return None
        masks = _to_numpy(source["masks"])
        masks = masks.reshape(0, height, width) if masks.size == 0 else masks
        if masks.shape != (n, height, width):
            expected = (n, height, width)
            raise ValueError(f"{what}: masks of shape {masks.shape}, expected {expected} (image_id {image_id}).")
        return masks
