"""The class names of a trained classifier, saved beside its adapter so that they come back with it.

An adapter holds the trained head (``modules_to_save``) but not the names of its classes: loaded onto the base
checkpoint, ``model.config.id2label`` (and so ``pipeline("image-classification", ...)``) would answer with the base
checkpoint's classes. The training script writes ``labels.json`` next to the adapter; the model card's snippet
passes it to ``from_pretrained``::

    import mona_peft
    from mona_peft.sharing.labels import load_labels
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    base = AutoModelForImageClassification.from_pretrained(
        "base/checkpoint", **load_labels("user/adapter"), ignore_mismatched_sizes=True
    )
    model = PeftModel.from_pretrained(base, "user/adapter")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LABELS_FILE = "labels.json"


def save_labels(config: Any, folder: str | os.PathLike) -> Path:
    """Write the ``id2label`` of a transformers ``config`` to ``folder/labels.json``; returns the path."""
    path = Path(folder) / LABELS_FILE
    names = {str(i): config.id2label[i] for i in sorted(config.id2label)}
    path.write_text(json.dumps({"id2label": names}, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_labels(folder_or_repo: str | os.PathLike, **hub_kwargs: Any) -> dict[str, dict]:
    """``{"id2label": ..., "label2id": ...}`` saved with an adapter: a local folder, or a Hub repository.

    Pass the result to ``from_pretrained`` of the base model (with ``ignore_mismatched_sizes=True`` when it has
    another number of classes). ``hub_kwargs`` go to ``hf_hub_download`` (``revision``, ``token``, ...).

    Raises:
        FileNotFoundError: a local folder without ``labels.json`` (e.g. an adapter saved by hand, not by the script).
    """
    folder = Path(folder_or_repo)
    if folder.is_dir():
        path = folder / LABELS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} has no {LABELS_FILE}: pass id2label/label2id to from_pretrained yourself, or save them "
                "with mona_peft.sharing.labels.save_labels(model.config, folder)."
            )
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(str(folder_or_repo), LABELS_FILE, **hub_kwargs))
    names = json.loads(path.read_text(encoding="utf-8"))["id2label"]
    id2label = {int(i): name for i, name in names.items()}
    return {"id2label": id2label, "label2id": {name: i for i, name in id2label.items()}}
