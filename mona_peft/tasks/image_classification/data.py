"""Image-classification data for the training script: Hub datasets, image folders, an offline default."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import ClassLabel, DatasetDict, load_dataset

from ...data.images import IMAGE_SUFFIXES, ImageDataError, decode_image
from ...data.splits import hold_out_validation


def check_image_folder(folder: str | Path) -> list[str]:
    """Validate ``folder/<class>/<images>`` and return the class names; name every unreadable image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageDataError(f"Image folder {folder} does not exist.")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ImageDataError(
            f"{folder} has no class folders: expected {folder}/<class name>/<image files>, one folder per class."
        )
    corrupt, count = [], 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        count += 1
        try:
            decode_image(path)
        except ImageDataError as error:
            corrupt.append(str(error))
    if corrupt:
        raise ImageDataError("Unreadable image file(s):\n  " + "\n  ".join(corrupt))
    if count == 0:
        raise ImageDataError(f"{folder} has class folders {classes} but no image files ({sorted(IMAGE_SUFFIXES)}).")
    if len(classes) < 2:
        # The imagefolder loader drops the label column of a single class (a bare KeyError: 'label' later).
        raise ImageDataError(
            f"{folder} has a single class folder ({classes[0]!r}): classification needs at least 2 classes, "
            f"one folder per class ({folder}/<class name>/<image files>)."
        )
    return classes


def _standardise_columns(data: DatasetDict) -> DatasetDict:
    columns = data["train"].column_names
    image_column = next((c for c in ("image", "img", "pixel_values") if c in columns), None)
    label_column = next((c for c in ("label", "labels", "fine_label") if c in columns), None)
    if image_column is None or label_column is None:
        raise ImageDataError(f"Cannot find the image and label columns among {columns}.")
    if image_column != "image":
        data = data.rename_column(image_column, "image")
    if label_column != "label":
        data = data.rename_column(label_column, "label")
    return data


def load_image_classification_data(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    validation_fraction: float = 0.15,
    seed: int = 0,
) -> DatasetDict:
    """``train`` and ``validation`` splits with an ``image`` column and a ``ClassLabel`` ``label`` column.

    From a Hub dataset (``dataset_name``), from image folders (``train_dir``, optional
    ``validation_dir``; one sub-folder per class), or, with neither, the offline digits default.
    A missing validation split is carved from the training split (seeded).
    """
    if dataset_name is not None:
        data = _standardise_columns(load_dataset(dataset_name, dataset_config_name))
    elif train_dir is not None:
        classes = check_image_folder(train_dir)
        files = {"train": str(Path(train_dir) / "**")}
        if validation_dir is not None:
            validation_classes = check_image_folder(validation_dir)
            if validation_classes != classes:
                raise ImageDataError(
                    f"--validation_dir classes {validation_classes} differ from --train_dir classes {classes}."
                )
            files["validation"] = str(Path(validation_dir) / "**")
        data = load_dataset("imagefolder", data_files=files)
    elif validation_dir is not None:
        raise ImageDataError("--validation_dir needs --train_dir.")
    else:
        from ...data.offline import digits_dataset

        return digits_dataset(seed=seed)
    data = hold_out_validation(data, validation_fraction, seed)
    if not isinstance(data["train"].features["label"], ClassLabel):
        raise ImageDataError("The label column must be a ClassLabel (class names), got " + str(data["train"].features))
    names = data["train"].features["label"].names
    if len(names) < 2:
        source = dataset_name or train_dir
        raise ImageDataError(f"{source} has {len(names)} class(es) {names}: classification needs at least 2 classes.")
    return DatasetDict(train=data["train"], validation=data["validation"])


def image_transform(processor: Any) -> Callable[[dict], dict]:
    """A ``with_transform`` function: RGB-convert (grayscale, palette, RGBA...) and run the image processor."""

    def transform(batch: dict) -> dict:
        images = [image.convert("RGB") for image in batch["image"]]
        pixel_values = processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": torch.as_tensor(batch["label"])}

    return transform


def collate(examples: list[dict]) -> dict:
    """Stack transformed examples into a batch: ``pixel_values`` and ``labels`` tensors."""
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.stack([torch.as_tensor(example["labels"]) for example in examples]),
    }
