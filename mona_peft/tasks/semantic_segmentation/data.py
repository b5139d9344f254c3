"""Semantic-segmentation data: local folders, Hub datasets, and offline scenes composed from real images.

Every loader returns ``train`` / ``validation`` (and, for the offline tasks, ``test``) splits with an ``image``
column (PIL images) and a ``label`` column (single-channel PIL masks of class ids, 255 = not scored), plus the class
names in id order.

**Offline scenes** (``digit-scenes``, ``digit-scenes-fewshot``): handwritten digits 0, 1 and 2 from scikit-learn's
bundled scans (real 8x8 images) pasted onto crops of scikit-image's sample photographs (brick, grass, gravel, camera,
moon, coffee, chelsea, astronaut, rocket, immunohistochemistry). Each 32x32 scene (the shipped backbone's pretraining
resolution) gets 2 to 4 digits, each scaled to 12-22 pixels (bilinear upsampling of the scan, so the stroke is smooth)
at a random place; later digits cover earlier ones (occlusion). A digit's colour is random, but at least
``MIN_CONTRAST`` grey levels of luminance away from the photograph under it (else its complement, else black or
white): a digit the eye cannot see is not a segmentation target. A digit's pixels are those where its upsampled ink
exceeds half of full ink: the mask is exact, and the image blends the digit's colour over the photograph with the ink
as opacity. Classes: 0 background, 1-3 digits 0-2. Splits never share a source: each photograph is cut into a left
60 % (train), a middle 20 % (validation) and a right 20 % (test) band, and each digit scan belongs to one split.
Seeded; the sizes never change. The compositor (:func:`compose_instances`) also reports every digit's visible
mask; :mod:`mona_peft.tasks.object_detection.data` composes its instance scenes with it.

Why these sizes: with all five digits 0-4 at 64x64, 20-40 px, full fine-tuning of the shipped backbone stayed at
all-background for 400 steps and reached 0.29 validation mIoU after 600 (``benchmarks/segmentation/README.md``); three
classes at the backbone's own resolution reach about 0.5 in the same steps, at a quarter of the cost per step.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage

from ...data.images import IMAGE_SUFFIXES, ImageDataError, decode_image
from ...data.splits import hold_out_validation

IGNORE_INDEX = 255
SCENE_SIZE = 32
SCENE_DIGITS = (0, 1, 2)
#: Digits per scene and their side in pixels (both inclusive).
DIGITS_PER_SCENE = (2, 4)
DIGIT_SIZES = (12, 22)
#: Least luminance difference (grey levels) between a digit's colour and the mean of the photograph under it.
MIN_CONTRAST = 80.0
_LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)
SCENE_CLASSES = ("background", *(f"digit {d}" for d in SCENE_DIGITS))
SCENE_BACKGROUNDS = (
    "brick", "grass", "gravel", "camera", "moon", "coffee", "chelsea", "astronaut", "rocket", "immunohistochemistry",
)  # fmt: skip
#: Horizontal band of every photograph that each split's backgrounds come from.
BACKGROUND_BANDS = {"train": (0.0, 0.6), "validation": (0.6, 0.8), "test": (0.8, 1.0)}
#: Share of each digit class's scans that each split's digits come from.
DIGIT_SHARES = {"train": 0.6, "validation": 0.2, "test": 0.2}


@dataclass(frozen=True)
class SceneTask:
    """An offline scene task (segmentation or detection): split sizes and the schedule every method gets on it."""

    name: str
    description: str
    sizes: dict[str, int]
    epochs: int
    batch_size: int


def scene_tasks(name: str, scenes: str) -> dict[str, SceneTask]:
    """The two tasks of a scene dataset, by name: ``name`` (1500/200/200 scenes) and ``<name>-fewshot`` (100 training
    and 40 validation scenes, the same test split), with the schedules every method gets on them in the dense
    benchmarks (benchmarks/harness/kinds.py). ``scenes`` says what a scene shows."""
    full = SceneTask(
        name,
        f"{scenes} composed on real photographs, 32x32, 1500/200/200 scenes",
        {"train": 1500, "validation": 200, "test": 200},
        epochs=6,
        batch_size=16,
    )
    fewshot = SceneTask(
        f"{name}-fewshot",
        f"the same scenes with 100 training and 40 validation images (test split shared with {name})",
        {"train": 100, "validation": 40, "test": 200},
        epochs=40,
        batch_size=8,
    )
    return {task.name: task for task in (full, fewshot)}


SEGMENTATION_TASKS: dict[str, SceneTask] = scene_tasks("digit-scenes", "digits 0-2")


@lru_cache(maxsize=1)
def _photographs() -> tuple[np.ndarray, ...]:
    """The background photographs as RGB uint8 arrays, rescaled to a height of at least 256 and a width of at least
    400 (so that the narrowest split band, 20 % of the width, still holds a whole scene)."""
    import skimage.data

    photographs = []
    for name in SCENE_BACKGROUNDS:
        image = PILImage.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")
        scale = max(256 / image.height, 400 / image.width)
        image = image.resize((round(image.width * scale), 256), PILImage.Resampling.LANCZOS)
        photographs.append(np.asarray(image))
    return tuple(photographs)


def _digit_pool(split: str, seed: int) -> dict[int, np.ndarray]:
    """Per digit class, the 8x8 scans (ink in [0, 1]) of ``split``: a seeded, disjoint share of each class."""
    from ...data.offline import load_digits_arrays

    images, targets = load_digits_arrays()
    rng = np.random.default_rng(seed)
    pool = {}
    for digit in SCENE_DIGITS:
        order = rng.permutation(np.flatnonzero(targets == digit))
        cuts = np.cumsum([round(DIGIT_SHARES[s] * len(order)) for s in ("train", "validation")])
        chosen = {"train": order[: cuts[0]], "validation": order[cuts[0] : cuts[1]], "test": order[cuts[1] :]}[split]
        pool[digit] = images[chosen].astype(np.float32) / 16.0
    return pool


def _visible_colour(colour: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``colour``, or its complement, or black or white: the first at least ``MIN_CONTRAST`` from ``region``'s mean
    luminance."""
    under = float(region.reshape(-1, 3).mean(axis=0) @ _LUMINANCE)
    for candidate in (colour, 255 - colour):
        if abs(float(candidate @ _LUMINANCE) - under) >= MIN_CONTRAST:
            return candidate
    return np.full(3, 0.0 if under > 127.5 else 255.0, dtype=np.float32)


@dataclass(frozen=True)
class SceneLayout:
    """How a scene is composed: its side, its digits' sides and count (both inclusive), and how much of a digit later
    digits may hide.

    ``max_occluded=None`` places each digit where it is first drawn, however much later digits cover earlier ones (the
    semantic scenes). With a fraction, a digit's position is re-drawn (up to ``max_draws`` times, then the digit is
    left out: neither painted nor reported) until every digit placed so far keeps more than ``1 - max_occluded`` of
    its ink pixels, and at least ``min_visible`` of them, visible.
    """

    size: int = SCENE_SIZE
    digit_sizes: tuple[int, int] = DIGIT_SIZES
    digits_per_scene: tuple[int, int] = DIGITS_PER_SCENE
    max_occluded: float | None = None
    min_visible: int = 0
    max_draws: int = 50


@dataclass
class DigitInstance:
    """One painted digit: its index into ``SCENE_DIGITS``, its visible pixels (its ink > 0.5 minus those of later
    digits) and the count of all its ink pixels."""

    category: int
    mask: np.ndarray
    ink: int


@dataclass
class ComposedScene:
    """A composed scene: the RGB uint8 image, its digits in painting order, how many positions were re-drawn and how
    many digits were left out because no position kept every digit visible enough."""

    image: np.ndarray
    instances: list[DigitInstance]
    redraws: int = 0
    skipped: int = 0


def _keeps_visible(instances: list[DigitInstance], stroke: np.ndarray, layout: SceneLayout) -> bool:
    """Whether a digit with ink pixels ``stroke`` (a scene-sized boolean mask) leaves every digit visible enough."""
    if layout.max_occluded is None:
        return True
    if stroke.sum() < layout.min_visible:
        return False
    for instance in instances:
        visible = np.count_nonzero(instance.mask & ~stroke)
        if visible < max((1 - layout.max_occluded) * instance.ink, layout.min_visible):
            return False
    return True


def _place(
    rng: np.random.Generator, ink: np.ndarray, instances: list[DigitInstance], layout: SceneLayout
) -> tuple[int, int, np.ndarray, int] | None:
    """``(y, x, stroke, redraws)`` of a digit's first acceptable position (``stroke``: its ink pixels in the scene),
    or None when ``max_draws`` positions all hide another digit too much. Without an occlusion limit: one draw."""
    side = ink.shape[0]
    for draw in range(1 if layout.max_occluded is None else layout.max_draws):
        y, x = rng.integers(0, layout.size - side + 1, size=2)
        stroke = np.zeros((layout.size, layout.size), dtype=bool)
        stroke[y : y + side, x : x + side] = ink > 0.5
        if _keeps_visible(instances, stroke, layout):
            return int(y), int(x), stroke, draw
    return None


def compose_instances(
    rng: np.random.Generator,
    photographs,
    band: tuple[float, float],
    digits: dict[int, np.ndarray],
    layout: SceneLayout | None = None,
) -> ComposedScene:
    """One scene of ``layout`` (default: the semantic scenes' constants) with each digit's class and visible mask.

    Random numbers are drawn in a fixed order (photograph, crop, digit count; per digit: class, scan, side,
    position(s), colour), so the default layout reproduces the semantic scenes exactly.
    """
    layout = layout or SceneLayout(SCENE_SIZE, DIGIT_SIZES, DIGITS_PER_SCENE)
    size = layout.size
    photo = photographs[rng.integers(len(photographs))]
    left, right = int(band[0] * photo.shape[1]), int(band[1] * photo.shape[1])
    top = rng.integers(0, photo.shape[0] - size + 1)
    x0 = rng.integers(left, right - size + 1)
    image = photo[top : top + size, x0 : x0 + size].astype(np.float32)
    scene = ComposedScene(image, [])
    for _ in range(rng.integers(layout.digits_per_scene[0], layout.digits_per_scene[1] + 1)):
        digit = int(rng.choice(SCENE_DIGITS))
        scans = digits[digit]
        scan = scans[rng.integers(len(scans))]
        side = int(rng.integers(layout.digit_sizes[0], layout.digit_sizes[1] + 1))
        ink = np.asarray(PILImage.fromarray(scan).resize((side, side), PILImage.Resampling.BILINEAR)).clip(0, 1)
        placed = _place(rng, ink, scene.instances, layout)
        if placed is None:
            scene.skipped += 1
            continue
        y, x, stroke, redraws = placed
        scene.redraws += redraws
        region = image[y : y + side, x : x + side]
        colour = _visible_colour(rng.integers(0, 256, size=3).astype(np.float32), region)
        region[:] = region * (1 - ink[..., None]) + colour * ink[..., None]
        for instance in scene.instances:
            instance.mask &= ~stroke
        scene.instances.append(DigitInstance(SCENE_DIGITS.index(digit), stroke, int(stroke.sum())))
    scene.image = image.round().astype(np.uint8)
    return scene


def compose_scene(rng: np.random.Generator, photographs, band: tuple[float, float], digits: dict[int, np.ndarray]):
    """One scene: (RGB uint8 image, uint8 mask of class ids) of size ``SCENE_SIZE``; later digits cover earlier ones."""
    scene = compose_instances(rng, photographs, band, digits)
    mask = np.zeros(scene.image.shape[:2], dtype=np.uint8)
    for instance in scene.instances:
        mask[instance.mask] = 1 + instance.category
    return scene.image, mask


def _features() -> Features:
    return Features({"image": Image(), "label": Image()})


def scene_split(split: str, size: int, seed: int) -> Dataset:
    """``size`` scenes of ``split`` (seeded by ``seed`` and the split name)."""
    rng = np.random.default_rng([seed, list(BACKGROUND_BANDS).index(split)])
    photographs, digits = _photographs(), _digit_pool(split, seed)
    images, masks = [], []
    for _ in range(size):
        image, mask = compose_scene(rng, photographs, BACKGROUND_BANDS[split], digits)
        images.append(PILImage.fromarray(image))
        masks.append(PILImage.fromarray(mask, mode="L"))
    return Dataset.from_dict({"image": images, "label": masks}, features=_features())


def scene_task_splits(
    tasks: dict[str, SceneTask], kind: str, name: str, seed: int, split_scenes: Callable[[str, int, int], Dataset]
) -> DatasetDict:
    """``train`` / ``validation`` / ``test`` of the offline ``kind`` task ``name`` (a key of ``tasks``), each made by
    ``split_scenes(split, size, seed)``."""
    if name not in tasks:
        raise ValueError(f"Unknown {kind} task {name!r}; available: {', '.join(tasks)}.")
    sizes = tasks[name].sizes
    return DatasetDict({split: split_scenes(split, sizes[split], seed) for split in ("train", "validation", "test")})


@lru_cache(maxsize=4)
def load_segmentation_task(name: str, seed: int = 0) -> tuple[DatasetDict, list[str]]:
    """``train`` / ``validation`` / ``test`` scenes of the offline task ``name``, and the class names."""
    return scene_task_splits(SEGMENTATION_TASKS, "segmentation", name, seed, scene_split), list(SCENE_CLASSES)


# ------------------------------------------------------------------------------------------------- local folders


def _images_by_stem(folder: Path) -> dict[str, Path]:
    """The folder's images by file stem; two files of one stem (``0.png`` and ``0.jpg``) are an error naming both,
    since an image and its mask are paired by stem."""
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            if path.stem in by_stem:
                raise ImageDataError(
                    f"{by_stem[path.stem]} and {path} have the same stem {path.stem!r}: images and masks are paired "
                    "by stem, so each stem may name one file; rename or remove one of them."
                )
            by_stem[path.stem] = path
    return by_stem


def check_segmentation_folder(
    folder: str | Path, num_labels: int, reduce_labels: bool = False
) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs of ``folder/images`` and ``folder/masks`` (same stems), each checked.

    Every problem is named: a missing folder, an empty one, an image without a mask (or a mask without an image), an
    image or mask that does not decode (read whole, so a truncated file is named here rather than mid-training), a
    mask whose size differs from its image's (both sizes), a mask with more than one channel, a class id outside
    ``0..num_labels-1`` other than 255 (the file and the id). With ``reduce_labels`` (``--do_reduce_labels``) the
    masks hold ``1..num_labels`` for the classes and 0 for "not scored".
    """
    folder = Path(folder)
    images_dir, masks_dir = folder / "images", folder / "masks"
    for required in (images_dir, masks_dir):
        if not required.is_dir():
            raise ImageDataError(f"{required} does not exist: expected {folder}/images/ and {folder}/masks/.")
    images, masks = _images_by_stem(images_dir), _images_by_stem(masks_dir)
    if not images:
        raise ImageDataError(f"{images_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    unmatched = [f"{images[s]} has no mask in {masks_dir}" for s in sorted(set(images) - set(masks))]
    unmatched += [f"{masks[s]} has no image in {images_dir}" for s in sorted(set(masks) - set(images))]
    if unmatched:
        raise ImageDataError("Images and masks must pair up by file stem:\n  " + "\n  ".join(unmatched))
    low, high = (1, num_labels) if reduce_labels else (0, num_labels - 1)
    unscored = "255 and 0 are not scored (--do_reduce_labels)" if reduce_labels else "255 is not scored"
    problems = []
    for stem in sorted(images):
        try:
            image, mask = decode_image(images[stem]), decode_image(masks[stem])
        except ImageDataError as error:
            problems.append(str(error))
            continue
        if image.size != mask.size:
            mask_size, image_size = "x".join(map(str, mask.size)), "x".join(map(str, image.size))
            problems.append(f"{masks[stem]} is {mask_size} (width x height), its image {image_size}")
            continue
        if mask.mode not in ("L", "P", "I", "I;16", "1"):
            problems.append(f"{masks[stem]} has mode {mask.mode}; masks are single-channel images of class ids")
            continue
        ids = np.unique(np.asarray(mask))
        outside = [int(i) for i in ids if i > high and i != IGNORE_INDEX]
        if outside:
            problems.append(
                f"{masks[stem]} holds class id(s) {outside}, outside {low}..{high} of id2label's {num_labels} "
                f"classes ({unscored})"
            )
    if problems:
        raise ImageDataError("Unusable segmentation masks:\n  " + "\n  ".join(problems))
    return [(images[stem], masks[stem]) for stem in sorted(images)]


def read_id2label(path: str | Path) -> list[str]:
    """Class names in id order from an ``id2label.json`` (``{"0": "background", "1": "cat", ...}``)."""
    path = Path(path)
    if not path.is_file():
        raise ImageDataError(f"{path} does not exist: local segmentation data needs an id2label.json beside it.")
    expected = 'expected a JSON object of class ids to names, {"0": "background", "1": "cat", ...}'
    try:
        found = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ImageDataError(f"{path} is not valid JSON ({error}); {expected}.") from None
    if not isinstance(found, dict):
        raise ImageDataError(f"{path} holds a JSON {type(found).__name__}; {expected}.")
    bad = [key for key, value in found.items() if not key.strip().isdigit() or not isinstance(value, str)]
    if bad:
        shown = ", ".join(f"{key!r}: {found[key]!r}" for key in bad[:3])
        raise ImageDataError(f"{path} maps {shown}; {expected} (label2id written instead?).")
    id2label = {int(k): v for k, v in found.items()}
    if sorted(id2label) != list(range(len(id2label))):
        raise ImageDataError(f"{path}: class ids must be 0..N-1 without gaps, got {sorted(id2label)}.")
    return [id2label[i] for i in range(len(id2label))]


def _folder_dataset(pairs: list[tuple[Path, Path]]) -> Dataset:
    images = [str(image) for image, _ in pairs]
    masks = [str(mask) for _, mask in pairs]
    return Dataset.from_dict({"image": images, "label": masks}, features=_features())


def load_segmentation_data(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    validation_fraction: float = 0.15,
    seed: int = 0,
    reduce_labels: bool = False,
) -> tuple[DatasetDict, list[str]]:
    """Splits and class names from a Hub dataset (``image`` and ``label``/``annotation`` columns, with an
    ``id2label.json`` in its repository), from local folders (``<dir>/images``, ``<dir>/masks``, and an
    ``id2label.json`` in ``<dir>`` or its parent), or, with neither, the offline ``digit-scenes`` task.

    ``reduce_labels`` (``--do_reduce_labels``, ADE20K's layout): the masks hold 0 for "not scored" and ``1..N`` for
    the classes, which ``id2label.json`` names from id 0 (mask value 1); the offline scenes' class 0 (background)
    becomes "not scored" and leaves the class names."""
    if dataset_name is not None:
        from datasets import load_dataset
        from huggingface_hub import hf_hub_download

        data = load_dataset(dataset_name, dataset_config_name)
        if "annotation" in data["train"].column_names:
            data = data.rename_column("annotation", "label")
        labels = read_id2label(hf_hub_download(dataset_name, "id2label.json", repo_type="dataset"))
    elif train_dir is not None:
        candidates = [Path(train_dir) / "id2label.json", Path(train_dir).parent / "id2label.json"]
        labels = read_id2label(next((c for c in candidates if c.is_file()), candidates[0]))
        data = DatasetDict(train=_folder_dataset(check_segmentation_folder(train_dir, len(labels), reduce_labels)))
        if validation_dir is not None:
            folder = check_segmentation_folder(validation_dir, len(labels), reduce_labels)
            data["validation"] = _folder_dataset(folder)
    elif validation_dir is not None:
        raise ImageDataError("--validation_dir needs --train_dir.")
    else:
        data, labels = load_segmentation_task("digit-scenes", seed=0)
        return DatasetDict(train=data["train"], validation=data["validation"]), scene_labels(labels, reduce_labels)
    data = hold_out_validation(data, validation_fraction, seed)
    return DatasetDict(train=data["train"], validation=data["validation"]), labels


def scene_labels(labels: list[str], reduce_labels: bool) -> list[str]:
    """The offline scenes' class names; with ``reduce_labels`` their class 0 (background) is not scored, so not a
    class."""
    return labels[1:] if reduce_labels else labels


def segmentation_transform(processor) -> Callable[[dict], dict]:
    """A ``with_transform`` function: RGB images and their masks through the image processor (masks: nearest).

    No random augmentation: Accelerate's loader prepares the next batch before a checkpoint is written, so random
    draws in the transform would make a resumed run differ from an uninterrupted one.
    """

    def transform(batch: dict) -> dict:
        images = [image.convert("RGB") for image in batch["image"]]
        masks = [np.array(mask) for mask in batch["label"]]  # writable: --do_reduce_labels rewrites them in place
        encoded = processor(images, segmentation_maps=masks, return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"], "labels": encoded["labels"]}

    return transform
