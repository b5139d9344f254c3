"""Detection data: offline digit-instance scenes (the semantic scenes' compositor), COCO folders, their errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import truncate_image
from PIL import Image
from pycocotools import mask as mask_utils

from mona_peft.data import ImageDataError
from mona_peft.tasks.object_detection.data import (
    ANNOTATION_FILE,
    DETECTION_CLASSES,
    DETECTION_TASKS,
    INSTANCE_SCENE_SIZE,
    MAX_OCCLUDED,
    MIN_INSTANCE_AREA,
    AnnotationError,
    decode_mask,
    encode_mask,
    instance_scene_split,
    instance_scenes,
    load_detection_data,
    load_detection_task,
    mask_box,
    write_coco_folder,
)
from mona_peft.tasks.semantic_segmentation.data import (
    BACKGROUND_BANDS,
    SCENE_DIGITS,
    SceneLayout,
    _digit_pool,
    _photographs,
    compose_instances,
    compose_scene,
    scene_split,
)


def _masks(row) -> list[np.ndarray]:
    return [decode_mask(counts, row["height"], row["width"]) for counts in row["objects"]["segmentation"]]


def _same_rows(a, b) -> bool:
    """Rows equal in every column (images compared by pixels)."""
    if len(a) != len(b):
        return False
    pairs = zip(a, b, strict=True)
    return all(np.array_equal(np.asarray(x.pop("image")), np.asarray(y.pop("image"))) and x == y for x, y in pairs)


def test_offline_instance_scenes_keep_their_splits_apart_and_boxes_exact():
    data, labels = load_detection_task("digit-instances", 0)
    assert labels == list(DETECTION_CLASSES) and "background" not in labels
    assert {k: len(v) for k, v in data.items()} == DETECTION_TASKS["digit-instances"].sizes
    ids = []
    for index, row in enumerate(data["validation"]):
        assert row["image"].mode == "RGB" and row["image"].size == (INSTANCE_SCENE_SIZE,) * 2
        assert row["image_id"] == index + 1 and (row["width"], row["height"]) == (INSTANCE_SCENE_SIZE,) * 2
        objects, masks = row["objects"], _masks(row)
        assert 2 <= len(masks) <= 4 and set(objects["iscrowd"]) == {0}
        assert np.sum(masks, axis=0).max() == 1  # visible masks never overlap
        for mask, box, area, category in zip(masks, objects["bbox"], objects["area"], objects["category"], strict=True):
            assert box == mask_box(mask) and area == mask.sum() >= MIN_INSTANCE_AREA and 0 <= category < len(labels)
        ids += objects["id"]
    assert ids == list(range(1, len(ids) + 1))
    # each split's digit scans are its own (scikit-learn's scans are all distinct) ...
    scans = {s: {scan.tobytes() for d in SCENE_DIGITS for scan in _digit_pool(s, 0)[d]} for s in BACKGROUND_BANDS}
    assert len(set.union(*scans.values())) == sum(map(len, scans.values()))
    # ... and its crops come from its own band of every photograph (stand-ins whose pixels say photograph and column)
    photographs = _photographs()
    coded = []
    for k, photo in enumerate(photographs):
        column = np.broadcast_to(np.arange(photo.shape[1]), photo.shape[:2])
        coded.append(np.stack([column % 256, column // 256, np.full_like(column, k)], axis=-1).astype(np.uint8))
    crops_only = SceneLayout(INSTANCE_SCENE_SIZE, (16, 16), (0, 0))
    rng = np.random.default_rng(0)
    for split, (left, right) in BACKGROUND_BANDS.items():
        for _ in range(100):
            crop = compose_instances(rng, coded, (left, right), {}, crops_only).image.astype(int)
            width, column = photographs[crop[0, 0, 2]].shape[1], crop[..., 0] + 256 * crop[..., 1]
            assert int(left * width) <= column.min() and column.max() < int(right * width), split
    assert [band[1] for band in BACKGROUND_BANDS.values()][:-1] == [band[0] for band in BACKGROUND_BANDS.values()][1:]
    few, _ = load_detection_task("digit-instances-fewshot", 0)
    assert {k: len(v) for k, v in few.items()} == {"train": 100, "validation": 40, "test": 200}
    assert _same_rows(list(few["test"].select(range(5))), list(data["test"].select(range(5))))


def test_offline_scenes_are_seeded():
    data, _ = load_detection_task("digit-instances", 0)
    assert _same_rows(list(instance_scene_split("train", 5, 0)), list(data["train"].select(range(5))))
    other = instance_scene_split("train", 5, 1)
    assert not np.array_equal(np.asarray(other[0]["image"]), np.asarray(data["train"][0]["image"]))


def test_offline_scenes_hide_at_most_half_of_every_digit():
    scenes = instance_scenes("train", 300, 0)
    visible = np.array([i.mask.sum() / i.ink for s in scenes for i in s.instances])
    assert visible.min() >= 1 - MAX_OCCLUDED and (visible < 1).mean() > 0.1  # occlusion happens, within the limit
    assert sum(s.redraws for s in scenes) > 0 and sum(s.skipped for s in scenes) == 0
    rows = instance_scene_split("train", 20, 0)
    for scene, row in zip(scenes[:20], rows, strict=True):
        assert np.array_equal(np.asarray(row["image"]), scene.image)
        assert all(np.array_equal(m, i.mask) for m, i in zip(_masks(row), scene.instances, strict=True))
    # a crowded layout: positions are re-drawn, digits no position allows are left out, the rule still holds
    crowded = SceneLayout(24, (16, 20), (4, 4), MAX_OCCLUDED, MIN_INSTANCE_AREA, max_draws=5)
    rng, digits = np.random.default_rng(0), _digit_pool("train", 0)
    scenes = [compose_instances(rng, _photographs(), BACKGROUND_BANDS["train"], digits, crowded) for _ in range(50)]
    assert sum(s.skipped for s in scenes) > 0 and sum(s.redraws for s in scenes) > 0
    assert all(i.mask.sum() >= max(i.ink / 2, MIN_INSTANCE_AREA) for s in scenes for i in s.instances)
    assert all(len(s.instances) + s.skipped == 4 for s in scenes)


@pytest.mark.parametrize("split", list(BACKGROUND_BANDS))
def test_semantic_scenes_are_the_union_of_instance_masks_painted_in_order(split):
    index = list(BACKGROUND_BANDS).index(split)
    photographs, digits = _photographs(), _digit_pool(split, 0)
    semantic, instances = np.random.default_rng([0, index]), np.random.default_rng([0, index])
    painted_labels = []
    for _ in range(40):
        image, mask = compose_scene(semantic, photographs, BACKGROUND_BANDS[split], digits)
        scene = compose_instances(instances, photographs, BACKGROUND_BANDS[split], digits)
        painted = np.zeros_like(mask)
        for instance in scene.instances:
            painted[instance.mask] = 1 + instance.category
        assert np.array_equal(image, scene.image) and np.array_equal(mask, painted)
        painted_labels.append(painted)
    shipped = scene_split(split, 5, 0)["label"]
    assert all(np.array_equal(np.asarray(m), p) for m, p in zip(shipped, painted_labels[:5], strict=True))


def test_offline_scenes_round_trip_through_a_coco_folder(tmp_path):
    data, labels = load_detection_task("digit-instances", 0)
    rows = data["validation"].select(range(30))
    json_path = write_coco_folder(rows, labels, tmp_path / "val")
    assert json_path == tmp_path / "val" / ANNOTATION_FILE
    loaded, names = load_detection_data(tmp_path / "val", tmp_path / "val", require_masks=True)
    assert names == labels and _same_rows(list(loaded["validation"]), list(rows))
    assert loaded["validation"].features == rows.features
    carved, _ = load_detection_data(tmp_path / "val", seed=3, validation_fraction=0.2)
    again, _ = load_detection_data(tmp_path / "val", seed=3, validation_fraction=0.2)
    assert (len(carved["train"]), len(carved["validation"])) == (24, 6)
    assert list(carved["validation"]["image_id"]) == list(again["validation"]["image_id"])
    assert sorted([*carved["train"]["image_id"], *carved["validation"]["image_id"]]) == list(range(1, 31))


def test_categories_map_to_contiguous_indices_in_order_of_id(tmp_path):
    folder = tmp_path / "data"
    write_coco_folder(instance_scene_split("test", 3, 0), list(DETECTION_CLASSES), folder)
    coco = json.loads((folder / ANNOTATION_FILE).read_text())
    new_id = {1: 30, 2: 20, 3: 10}  # digit 0 gets the largest id: its index becomes the last
    coco["categories"] = [{"id": new_id[c["id"]], "name": c["name"]} for c in coco["categories"]]
    for annotation in coco["annotations"]:
        annotation["category_id"] = new_id[annotation["category_id"]]
    (folder / "annotations.json").write_text(json.dumps(coco))
    loaded, names = load_detection_data(folder, folder)
    assert names == ["digit 2", "digit 1", "digit 0"]
    original = instance_scene_split("test", 3, 0)
    assert [[2 - c for c in o["category"]] for o in original["objects"]] == [
        o["category"] for o in loaded["validation"]["objects"]
    ]


def _first(coco):
    return coco["annotations"][0]


def _unlink_first_image(folder: Path, coco: dict) -> None:
    image = next(i for i in coco["images"] if i["id"] == _first(coco)["image_id"])
    (folder / image["file_name"]).unlink()


def _truncate_first_image(folder: Path, coco: dict) -> None:
    image = next(i for i in coco["images"] if i["id"] == _first(coco)["image_id"])
    truncate_image(folder / image["file_name"])


SIZE = INSTANCE_SCENE_SIZE
BREAKAGES = {
    "box outside": (
        lambda f, c: _first(c).update(bbox=[SIZE - 4, 2, 10, 5]),
        rf"\[{SIZE - 4}, 2, 10, 5\] is not inside its {SIZE}x{SIZE}",
    ),
    "unknown image": (lambda f, c: _first(c).update(image_id=99), r"image id 99 is not among the file's images"),
    "missing file": (_unlink_first_image, r"its file .*000001\.png does not exist"),
    # its header opens: only decoding it (formerly inside the training loop) finds the cut
    "truncated file": (_truncate_first_image, r"its file .*000001\.png is not a readable image \(OSError: image file"),
    "unknown category": (
        lambda f, c: _first(c).update(category_id=9),
        r"category id 9 is not among the categories \(ids \[1, 2, 3\]\)",
    ),
    "empty mask": (
        lambda f, c: _first(c).update(
            segmentation={"size": [SIZE, SIZE], "counts": encode_mask(np.zeros((SIZE, SIZE)))}
        ),
        r"its mask is empty \(0 pixels\)",
    ),
    "missing mask": (lambda f, c: _first(c).pop("segmentation"), r"no segmentation, and masks are required"),
    "bad polygon": (lambda f, c: _first(c).update(segmentation=[[1, 2, 3, 4]]), r"at least 3 x, y pairs"),
    "wrong RLE size": (
        lambda f, c: _first(c)["segmentation"].update(size=[SIZE // 2, SIZE]),
        rf"RLE size \[{SIZE // 2}, {SIZE}\] \(height, width\) is not its image's \[{SIZE}, {SIZE}\]",
    ),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_bad_coco_annotations_are_named_with_file_and_id(breakage, tmp_path):
    folder = tmp_path / "data"
    json_path = write_coco_folder(instance_scene_split("validation", 4, 0), list(DETECTION_CLASSES), folder)
    coco = json.loads(json_path.read_text())
    _first(coco)["id"] = 4242
    breaker, message = BREAKAGES[breakage]
    breaker(folder, coco)
    json_path.write_text(json.dumps(coco))
    with pytest.raises(AnnotationError, match=message) as raised:
        load_detection_data(folder, require_masks=True)
    assert str(json_path) in str(raised.value) and "annotation 4242:" in str(raised.value)
    assert isinstance(raised.value, ImageDataError)


def test_two_images_with_one_id_are_named_both(tmp_path):
    """An id given twice used to drop one image and attach its boxes to the other."""
    folder = tmp_path / "data"
    json_path = write_coco_folder(instance_scene_split("validation", 3, 0), list(DETECTION_CLASSES), folder)
    coco = json.loads(json_path.read_text())
    first, second = coco["images"][0], coco["images"][1]
    second["id"] = first["id"]
    json_path.write_text(json.dumps(coco))
    with pytest.raises(AnnotationError, match=rf"image id {first['id']} is given to two images") as raised:
        load_detection_data(folder)
    assert str(json_path) in str(raised.value)
    assert first["file_name"] in str(raised.value) and second["file_name"] in str(raised.value)


def test_a_missing_mask_is_allowed_unless_required(tmp_path):
    folder = tmp_path / "data"
    json_path = write_coco_folder(instance_scene_split("validation", 2, 0), list(DETECTION_CLASSES), folder)
    coco = json.loads(json_path.read_text())
    box = _first(coco).pop("segmentation") and _first(coco)["bbox"]
    json_path.write_text(json.dumps(coco))
    loaded, _ = load_detection_data(folder, folder)
    objects = loaded["validation"][0]["objects"]
    assert objects["segmentation"][0] == "" and objects["bbox"][0] == box and objects["area"][0] == box[2] * box[3]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, r"holds no COCO annotation file"),
        ({"a.png": None}, r"holds no COCO annotation file"),
        ({"a.json": "{}", "b.json": "{}"}, r"several JSON files \(a\.json, b\.json\) and no annotations\.json"),
        ({"annotations.json": "{}"}, r"annotations\.json is not a COCO annotation file: it has no images"),
        ({"annotations.json": "{"}, r"annotations\.json is not valid JSON"),
    ],
)
def test_unusable_coco_folders_are_named(layout, message, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for name, text in layout.items():
        if text is None:
            Image.new("RGB", (8, 8)).save(folder / name)
        else:
            (folder / name).write_text(text)
    with pytest.raises(AnnotationError, match=message) as raised:
        load_detection_data(folder)
    assert str(folder) in str(raised.value)


def test_polygons_and_uncompressed_rle_become_compressed_rle(tmp_path):
    Image.new("RGB", (40, 30)).save(tmp_path / "img.png")
    polygon = [3.0, 4.0, 30.5, 6.0, 35.0, 25.0, 12.0, 27.5, 5.0, 18.0]
    xs, ys = np.array(polygon[0::2]), np.array(polygon[1::2])
    shoelace = 0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))
    blob = np.zeros((30, 40), dtype=np.uint8)
    blob[5:12, 20:33] = 1
    blob[8:20, 25:28] = 1
    uncompressed = {"size": [30, 40], "counts": _uncompressed_counts(blob)}
    coco = {
        "images": [{"id": 7, "file_name": "img.png", "width": 40, "height": 30}],
        "categories": [{"id": 5, "name": "shape"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "segmentation": [polygon], "bbox": [3, 4, 32, 23.5]},
            {"id": 2, "image_id": 7, "category_id": 5, "segmentation": uncompressed, "iscrowd": 1},  # no bbox
        ],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    loaded, names = load_detection_data(tmp_path, tmp_path, require_masks=True)
    row = loaded["validation"][0]
    assert names == ["shape"] and row["image_id"] == 7 and (row["width"], row["height"]) == (40, 30)
    objects, (polygon_mask, blob_mask) = row["objects"], _masks(row)
    assert abs(objects["area"][0] - shoelace) <= 2 and objects["area"][0] == polygon_mask.sum()
    assert mask_box(polygon_mask) == [3.0, 4.0, 32.0, 24.0] and objects["bbox"][0] == [3.0, 4.0, 32.0, 23.5]
    assert np.array_equal(blob_mask, blob.astype(bool)) and objects["area"][1] == blob.sum()
    assert objects["bbox"][1] == mask_box(blob) and objects["iscrowd"] == [0, 1] and objects["category"] == [0, 0]
    assert objects["segmentation"][1] == encode_mask(blob)
    assert mask_utils.area({"size": [30, 40], "counts": objects["segmentation"][0].encode()}) == objects["area"][0]


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts (column-major runs, starting with a run of zeros)."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return ([0] if flat[0] else []) + runs
