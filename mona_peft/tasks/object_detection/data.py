"""Object-detection and instance-segmentation data: local COCO folders and offline scenes of digit instances.

Every loader returns a ``DatasetDict`` of splits and the class names (no background class: detectors model "no
object" themselves). A row has ``image`` (PIL RGB), ``image_id``, ``width`` and ``height`` (ints) and ``objects``, a
dict of equally long lists, one entry per annotated instance: ``id`` (annotation id, from 1), ``category`` (index into
the class names), ``bbox`` (COCO ``[x, y, w, h]`` in pixels, floats), ``area`` (the mask's pixel count when there is
a mask, else ``w * h``), ``iscrowd`` and ``segmentation`` (the compressed COCO RLE ``counts`` string of the mask, whose
size is the image's; ``""`` when the annotation has no mask). :func:`decode_mask` turns ``segmentation`` back into a
boolean array, :func:`encode_mask` the other way.

**Offline scenes** (``digit-instances``, ``digit-instances-fewshot``): the compositor of the semantic ``digit-scenes``
(:func:`mona_peft.tasks.semantic_segmentation.data.compose_instances`: scikit-learn's scans of the digits 0, 1 and 2 on
crops of scikit-image's photographs, colours kept visible, splits drawn from disjoint photograph bands and disjoint
scans), with each digit reported as an instance. A digit's mask is its upsampled ink above half of full ink minus the
pixels of digits painted after it; its box is the tight box of that visible mask (``w = x_max - x_min + 1``). Scenes are
``INSTANCE_SCENE_SIZE`` (32) pixels square, the shipped backbone's pretraining resolution, with 2 to 4 digits of 8 to 15
pixels. Occlusion rule: a digit's position is re-drawn (seeded) until every digit placed so far keeps at least half of
its ink pixels and at least ``MIN_INSTANCE_AREA`` (8) of them visible, so every painted digit is annotated and none is
hidden beyond recognition (a visible digit left unannotated would teach a detector to ignore digits). A digit no
position of 50 allows is neither painted nor annotated. The scenes draw from a random stream of their own (not the
semantic scenes'), seeded by the seed and the split; the sizes never change.

Why these sizes: a box task needs room for boxes to differ in place and size, so the digits are smaller than the
semantic scenes' 12-22 pixels (there, 11 % of digits are more than half hidden). 64-pixel scenes with 16-30 pixel
digits were tried first: a detector step on the shipped backbone costs 5 times as much there (Conditional DETR, batch
16, one thread: 2.7 s against 0.53 s), too slow to train on 2 CPU cores; at 32 pixels RT-DETR reaches a validation
box AP50 of 0.16 after two epochs (``benchmarks/detection/probes/``). Seed 0, train: 3.0 digits per scene, mean
visible area 39 pixels (8 to 99), a position re-drawn in 7 % of scenes, no digit left out.

**Local COCO folders** (:func:`load_detection_data`): a folder of images plus one COCO JSON (``annotations.json``
when there are several, else the only ``*.json``) whose ``file_name`` s are relative to the folder. Categories map to
contiguous indices in order of category id, and their names are the class names. Polygons and uncompressed RLE become
compressed RLE; ``area`` is recomputed from the mask. Boxes may exceed their image by up to ``BOX_TOLERANCE`` pixels
(annotation tools round) and are then clipped to it. Every unusable annotation is named (:class:`AnnotationError`,
with the JSON file and the annotation id): a box outside its image, an unknown image id or a missing image file, an
unknown category id, an empty mask, a missing mask where masks are required, a malformed segmentation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image, Sequence, Value
from PIL import Image as PILImage
from pycocotools import mask as mask_utils

from ...data.images import ImageDataError, decode_image
from ...data.splits import hold_out_validation
from ..semantic_segmentation.data import (
    BACKGROUND_BANDS,
    SCENE_DIGITS,
    ComposedScene,
    SceneLayout,
    SceneTask,
    _digit_pool,
    _photographs,
    compose_instances,
    scene_task_splits,
    scene_tasks,
)

INSTANCE_SCENE_SIZE = 32
#: Digits per scene and their side in pixels (both inclusive).
INSTANCE_DIGITS_PER_SCENE = (2, 4)
INSTANCE_DIGIT_SIZES = (8, 15)
#: Most of a digit's ink pixels that later digits may cover, and the fewest that must stay visible.
MAX_OCCLUDED = 0.5
MIN_INSTANCE_AREA = 8
INSTANCE_LAYOUT = SceneLayout(
    INSTANCE_SCENE_SIZE, INSTANCE_DIGIT_SIZES, INSTANCE_DIGITS_PER_SCENE, MAX_OCCLUDED, MIN_INSTANCE_AREA
)
DETECTION_CLASSES = tuple(f"digit {d}" for d in SCENE_DIGITS)
#: The annotation file a folder's JSON files are chosen by when there are several.
ANNOTATION_FILE = "annotations.json"
#: Pixels by which a box may exceed its image before it is an error (it is clipped to the image).
BOX_TOLERANCE = 1.0
_MAX_LISTED = 20
#: The lists of a row's ``objects``.
OBJECT_FIELDS = ("id", "category", "bbox", "area", "iscrowd", "segmentation")


DETECTION_TASKS: dict[str, SceneTask] = scene_tasks("digit-instances", "instances of digits 0-2")


class AnnotationError(ImageDataError):
    """A COCO folder or annotation that cannot be used, naming the JSON file and the annotation."""


class _Invalid(Exception):
    """What is wrong with one annotation or image entry (collected into an :class:`AnnotationError`)."""


def detection_features() -> Features:
    """The ``datasets`` features of a detection row (see the module docstring)."""
    objects = {
        "id": Value("int64"),
        "category": Value("int64"),
        "bbox": Sequence(Value("float64"), length=4),
        "area": Value("float64"),
        "iscrowd": Value("int64"),
        "segmentation": Value("string"),
    }
    scalars = {name: Value("int64") for name in ("image_id", "width", "height")}
    return Features({"image": Image(mode="RGB"), **scalars, "objects": Sequence(objects)})


def encode_mask(mask: np.ndarray) -> str:
    """The compressed COCO RLE ``counts`` string of a 2-D mask (nonzero = inside)."""
    return mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))["counts"].decode("ascii")


def decode_mask(counts: str, height: int, width: int) -> np.ndarray:
    """The boolean ``(height, width)`` mask of a compressed COCO RLE ``counts`` string."""
    return mask_utils.decode({"size": [height, width], "counts": counts.encode("ascii")}).astype(bool)


def mask_box(mask: np.ndarray) -> list[float]:
    """The tight COCO box ``[x, y, w, h]`` of a non-empty mask (``w = x_max - x_min + 1``)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _rows_dataset(rows: list[dict[str, Any]]) -> Dataset:
    columns = {name: [row[name] for row in rows] for name in detection_features()}
    return Dataset.from_dict(columns, features=detection_features())


def _objects(records: list[dict[str, Any]]) -> dict[str, list]:
    return {name: [record[name] for record in records] for name in OBJECT_FIELDS}


# ------------------------------------------------------------------------------------------------ offline scenes


def _scene_objects(scene: ComposedScene, first_id: int) -> dict[str, list]:
    records = [
        {
            "id": first_id + i,
            "category": instance.category,
            "bbox": mask_box(instance.mask),
            "area": float(instance.mask.sum()),
            "iscrowd": 0,
            "segmentation": encode_mask(instance.mask),
        }
        for i, instance in enumerate(scene.instances)
    ]
    return _objects(records)


def instance_scenes(split: str, size: int, seed: int) -> list[ComposedScene]:
    """``size`` composed instance scenes of ``split`` (seeded by ``seed`` and the split name)."""
    # A stream of its own ([seed, split, 1]): the semantic scenes use [seed, split].
    rng = np.random.default_rng([seed, list(BACKGROUND_BANDS).index(split), 1])
    photographs, digits = _photographs(), _digit_pool(split, seed)
    return [compose_instances(rng, photographs, BACKGROUND_BANDS[split], digits, INSTANCE_LAYOUT) for _ in range(size)]


def instance_scene_split(split: str, size: int, seed: int) -> Dataset:
    """``size`` instance scenes of ``split`` as detection rows (image ids and annotation ids count from 1)."""
    rows, next_id = [], 1
    for index, scene in enumerate(instance_scenes(split, size, seed)):
        height, width = scene.image.shape[:2]
        objects = _scene_objects(scene, next_id)
        next_id += len(scene.instances)
        image = PILImage.fromarray(scene.image)
        rows.append({"image": image, "image_id": index + 1, "width": width, "height": height, "objects": objects})
    return _rows_dataset(rows)


@lru_cache(maxsize=4)
def load_detection_task(name: str, seed: int = 0) -> tuple[DatasetDict, list[str]]:
    """``train`` / ``validation`` / ``test`` scenes of the offline task ``name``, and the class names."""
    splits = scene_task_splits(DETECTION_TASKS, "detection", name, seed, instance_scene_split)
    return splits, list(DETECTION_CLASSES)


# -------------------------------------------------------------------------------------------- local COCO folders


def find_annotation_file(folder: str | Path) -> Path:
    """The COCO JSON of ``folder``: ``annotations.json`` if there are several ``*.json``, else the only one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AnnotationError(f"Detection folder {folder} does not exist.")
    candidates = sorted(folder.glob("*.json"))
    if not candidates:
        raise AnnotationError(
            f"{folder} holds no COCO annotation file: expected images plus one {ANNOTATION_FILE} (or one other *.json)."
        )
    if len(candidates) == 1:
        return candidates[0]
    if (folder / ANNOTATION_FILE).is_file():
        return folder / ANNOTATION_FILE
    names = ", ".join(c.name for c in candidates)
    raise AnnotationError(f"{folder} holds several JSON files ({names}) and no {ANNOTATION_FILE} to choose.")


def _read_coco(path: Path) -> dict[str, Any]:
    try:
        coco = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path} is not valid JSON: {error}") from error
    missing = [key for key in ("images", "categories") if not isinstance(coco, dict) or key not in coco]
    if missing:
        raise AnnotationError(f"{path} is not a COCO annotation file: it has no {' and no '.join(missing)} list.")
    return coco


def _categories(path: Path, coco: dict[str, Any]) -> tuple[dict[int, int], list[str]]:
    """Category id -> contiguous index (in order of id), and the names in that order."""
    ids = [category["id"] for category in coco["categories"]]
    if not ids or len(set(ids)) != len(ids):
        raise AnnotationError(f"{path}: categories must be non-empty with distinct ids, got ids {ids}.")
    ordered = sorted(coco["categories"], key=lambda category: category["id"])
    return {c["id"]: i for i, c in enumerate(ordered)}, [str(c["name"]) for c in ordered]


@dataclass(frozen=True)
class _ImageEntry:
    path: Path
    width: int
    height: int


def _image_entry(folder: Path, image: dict[str, Any]) -> _ImageEntry:
    if "file_name" not in image:
        raise _Invalid("it has no file_name")
    path = folder / image["file_name"]
    if not path.is_file():
        raise _Invalid(f"its file {path} does not exist")
    try:
        width, height = decode_image(path).size
    except ImageDataError as error:
        raise _Invalid(f"its file {error}") from None
    stated = (image.get("width", width), image.get("height", height))
    if stated != (width, height):
        raise _Invalid(f"{path} is {width}x{height} (width x height), the JSON says {stated[0]}x{stated[1]}")
    return _ImageEntry(path, width, height)


def _image_entries(folder: Path, coco: dict[str, Any]) -> tuple[dict[int, _ImageEntry], dict[int, str]]:
    """Usable images by id, and what is wrong with each unusable one; an id given to two images is an error naming
    both (one would be dropped and its boxes given to the other)."""
    entries, broken, first = {}, {}, {}
    for image in coco["images"]:
        image_id = image.get("id")
        if image_id in first:
            raise AnnotationError(
                f"image id {image_id} is given to two images, {first[image_id]!r} and {image.get('file_name')!r}: "
                "every image of a COCO file needs its own id."
            )
        first[image_id] = image.get("file_name")
        try:
            entries[image.get("id")] = _image_entry(folder, image)
        except _Invalid as problem:
            broken[image.get("id")] = str(problem)
    return entries, broken


def _polygon_rle(polygons: list, height: int, width: int) -> dict[str, Any]:
    for polygon in polygons:
        if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
            raise _Invalid("a polygon must be a list of at least 3 x, y pairs (COCO: a list of such lists)")
    return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))


def _segmentation_rle(segmentation: Any, height: int, width: int) -> dict[str, Any] | None:
    """The compressed RLE of a COCO segmentation (polygons, uncompressed or compressed RLE), None if there is none."""
    if segmentation is None or (isinstance(segmentation, (list, dict)) and not segmentation):
        return None
    if isinstance(segmentation, list):
        return _polygon_rle(segmentation, height, width)
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise _Invalid("segmentation is neither a list of polygons nor an RLE with 'size' and 'counts'")
    if list(segmentation["size"]) != [height, width]:
        raise _Invalid(f"its RLE size {segmentation['size']} (height, width) is not its image's [{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _checked_box(box: Any, width: int, height: int) -> list[float]:
    """``box`` clipped to the image, if it lies inside it (within ``BOX_TOLERANCE``) and has a positive size."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise _Invalid(f"bbox {box} is not [x, y, w, h]")
    x, y, w, h = map(float, box)
    t = BOX_TOLERANCE
    if w <= 0 or h <= 0 or x < -t or y < -t or x + w > width + t or y + h > height + t:
        raise _Invalid(f"bbox [x, y, w, h] = {list(box)} is not inside its {width}x{height} (width x height) image")
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    return [x0, y0, x1 - x0, y1 - y0]


def _annotation_record(
    annotation: dict[str, Any], image: _ImageEntry, category_index: dict[int, int], require_masks: bool
) -> dict[str, Any]:
    """One ``objects`` entry of a COCO annotation, or :class:`_Invalid` saying why it cannot be used."""
    if not isinstance(annotation.get("id"), int):
        raise _Invalid(f"its id {annotation.get('id')!r} is not an integer")
    if annotation.get("category_id") not in category_index:
        known = sorted(category_index)
        raise _Invalid(f"category id {annotation.get('category_id')!r} is not among the categories (ids {known})")
    rle = _segmentation_rle(annotation.get("segmentation"), image.height, image.width)
    if rle is None and require_masks:
        raise _Invalid("it has no segmentation, and masks are required (instance segmentation)")
    area = None if rle is None else float(mask_utils.area(rle))
    if area == 0:
        raise _Invalid("its mask is empty (0 pixels)")
    box = annotation.get("bbox")
    if box is None and rle is not None:
        box = mask_utils.toBbox(rle).tolist()
    box = _checked_box(box, image.width, image.height)
    return {
        "id": int(annotation["id"]),
        "category": category_index[annotation["category_id"]],
        "bbox": box,
        "area": box[2] * box[3] if area is None else area,
        "iscrowd": int(annotation.get("iscrowd", 0)),
        "segmentation": "" if rle is None else rle["counts"].decode("ascii"),
    }


def _locate(annotation: dict[str, Any], entries: dict[int, _ImageEntry], broken: dict[int, str]) -> _ImageEntry:
    image_id = annotation.get("image_id")
    if image_id in broken:
        raise _Invalid(f"its image {image_id}: {broken[image_id]}")
    if image_id not in entries:
        raise _Invalid(f"image id {image_id!r} is not among the file's images")
    return entries[image_id]


def _raise_problems(path: Path, problems: list[str]) -> None:
    if problems:
        listed = problems[:_MAX_LISTED]
        if len(problems) > _MAX_LISTED:
            listed.append(f"... and {len(problems) - _MAX_LISTED} more")
        raise AnnotationError(f"{path}: unusable COCO annotations:\n  " + "\n  ".join(listed))


def read_coco_folder(folder: str | Path, *, require_masks: bool = False) -> tuple[Dataset, list[str]]:
    """The detection rows of a COCO folder (every image in the JSON's order, with its annotations in the JSON's
    order) and its class names; every unusable annotation or image is named in one :class:`AnnotationError`."""
    folder = Path(folder)
    path = find_annotation_file(folder)
    coco = _read_coco(path)
    category_index, names = _categories(path, coco)
    try:
        entries, broken = _image_entries(folder, coco)
    except AnnotationError as error:
        raise AnnotationError(f"{path}: {error}") from None
    records: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in entries}
    problems, referenced = [], set()
    for annotation in coco.get("annotations", []):
        referenced.add(annotation.get("image_id"))
        try:
            image = _locate(annotation, entries, broken)
            records[annotation["image_id"]].append(_annotation_record(annotation, image, category_index, require_masks))
        except _Invalid as problem:
            problems.append(f"annotation {annotation.get('id')}: {problem}")
    problems += [f"image {image_id}: {problem}" for image_id, problem in broken.items() if image_id not in referenced]
    _raise_problems(path, problems)
    rows = [
        {"image": str(e.path), "image_id": i, "width": e.width, "height": e.height, "objects": _objects(records[i])}
        for i, e in entries.items()
    ]
    return _rows_dataset(rows), names


def load_detection_data(
    train_dir: str | Path,
    validation_dir: str | Path | None = None,
    *,
    require_masks: bool = False,
    seed: int = 0,
    validation_fraction: float = 0.15,
) -> tuple[DatasetDict, list[str]]:
    """``train`` / ``validation`` splits from COCO folders and the class names; without ``validation_dir``, a seeded
    ``validation_fraction`` of the training folder. ``require_masks``: every annotation must have a non-empty mask."""
    train, names = read_coco_folder(train_dir, require_masks=require_masks)
    if validation_dir is None:
        return hold_out_validation(DatasetDict(train=train), validation_fraction, seed), names
    validation, validation_names = read_coco_folder(validation_dir, require_masks=require_masks)
    if validation_names != names:
        raise AnnotationError(
            f"{find_annotation_file(validation_dir)} has categories {validation_names} (in order of id), "
            f"{find_annotation_file(train_dir)} has {names}: both splits need the same categories."
        )
    return DatasetDict(train=train, validation=validation), names


def write_coco_folder(dataset: Dataset, class_names: list[str], folder: str | Path) -> Path:
    """Write detection rows as a COCO folder (``<image_id>.png`` images and ``annotations.json``, category ids from
    1, masks as compressed RLE) that :func:`load_detection_data` reads back identically; returns the JSON's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for row in dataset:
        file_name = f"{row['image_id']:06d}.png"
        row["image"].save(folder / file_name)
        images.append({"id": row["image_id"], "file_name": file_name, "width": row["width"], "height": row["height"]})
        annotations += _coco_annotations(row)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    path = folder / ANNOTATION_FILE
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _coco_annotations(row: dict[str, Any]) -> list[dict[str, Any]]:
    objects, size = row["objects"], [row["height"], row["width"]]
    annotations = []
    for i, annotation_id in enumerate(objects["id"]):
        annotation = {
            "id": annotation_id,
            "image_id": row["image_id"],
            "category_id": objects["category"][i] + 1,
            "bbox": objects["bbox"][i],
            "area": objects["area"][i],
            "iscrowd": objects["iscrowd"][i],
        }
        if objects["segmentation"][i]:
            annotation["segmentation"] = {"size": size, "counts": objects["segmentation"][i]}
        annotations.append(annotation)
    return annotations
