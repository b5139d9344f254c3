"""Image classification as a :class:`~mona_peft.training.task.TrainingTask`: the task of
``scripts/train_image_classification.py``."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import evaluate
import torch
from accelerate import Accelerator
from datasets import DatasetDict
from torch import nn
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from ...data import DIGITS_NAME, load_task
from ...sharing.labels import save_labels
from ...sharing.model_card import TOP1_KEYS, TOP5_KEYS, CardTask, Score, normalise_metric_key
from ...training.config import RunConfig
from ...training.task import TrainingTask
from .data import collate, image_transform, load_image_classification_data

#: The shipped ``evaluate`` module (``evaluate.load("accuracy")`` fetches its script from the Hub).
METRIC_PATH = str(Path(__file__).with_name("top_k_accuracy"))


def accuracy_scores(metrics: Mapping[str, float]) -> list[Score]:
    """The model-index's top-1 then top-5 accuracy."""
    top1 = top5 = None
    for key, value in metrics.items():
        normalised = normalise_metric_key(key)
        if top1 is None and normalised in TOP1_KEYS:
            top1 = float(value)
        elif top5 is None and normalised in TOP5_KEYS:
            top5 = float(value)
    found = []
    if top1 is not None:
        found.append(("accuracy", "Top-1 Accuracy", top1, None))
    if top5 is not None:
        found.append(("top_k_accuracy", "Top-5 Accuracy", top5, {"k": 5}))
    return found


class ImageClassificationTask(TrainingTask):
    """Hub datasets, image folders (``<dir>/<class name>/<images>``), the offline benchmark tasks (``--task``) or,
    with none of them, scikit-learn's digits; validation top-1 (and top-5 with more than five classes)."""

    name = "image_classification"
    pipeline_tag = "image-classification"
    card = CardTask("image_classification.md", "image-classification", "Image Classification", accuracy_scores)
    default_output_dir = "outputs/mona-digits"
    default_dataset = DIGITS_NAME
    # Mona's (default method) best rate on the shipped backbone since its projections train at a tenth of the
    # adapter rate (benchmarks/stability): 1e-2 reaches 0.94 on digits where 1e-3 reaches 0.69.
    run_defaults = {"learning_rate": 1e-2}

    def load_data(self, config: RunConfig) -> tuple[DatasetDict, list[str]]:
        if config.task:
            data = load_task(config.task, config.task_seed or 0)
        else:
            data = load_image_classification_data(**config.data_sources())
        return data, data["train"].features["label"].names

    def load_processor(self, config: RunConfig) -> Any:
        return AutoImageProcessor.from_pretrained(config.model_name_or_path)

    def transform(self, processor: Any, train: bool) -> Any:
        return image_transform(processor)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return collate(examples)

    def load_model(self, config: RunConfig, labels: list[str]) -> nn.Module:
        model = AutoModelForImageClassification.from_pretrained(
            config.model_name_or_path,
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
        _fresh_head_for_new_labels(model, config.model_name_or_path, labels)
        return model

    def head_modules(self, model: nn.Module) -> list[str]:
        return _head_modules(model)

    def evaluate(self, model: nn.Module, loader: DataLoader, accelerator: Accelerator, labels: list[str]) -> dict:
        """Top-1 (and top-5 with more than 5 classes) accuracy with the shipped ``evaluate`` module."""
        metric = evaluate.load(METRIC_PATH, experiment_id=f"mona-{os.getpid()}-{time.time_ns()}")
        model.eval()
        scores, references = [], []
        for batch in loader:
            with torch.no_grad():
                logits = model(pixel_values=batch["pixel_values"]).logits
            logits, targets = accelerator.gather_for_metrics((logits.float(), batch["labels"]))
            scores.append(logits.cpu())
            references.append(targets.cpu())
        predictions, targets = torch.cat(scores).tolist(), torch.cat(references).tolist()
        results = {"top1": metric.compute(predictions=predictions, references=targets, k=1)["top_k_accuracy"]}
        if len(labels) > 5:
            results["top5"] = metric.compute(predictions=predictions, references=targets, k=5)["top_k_accuracy"]
        return results

    def save_extras(self, model: nn.Module, processor: Any, output_dir: Path) -> None:
        """``labels.json``: the trained class names, which an adapter alone does not carry (the card's snippet and
        ``mona_peft.sharing.labels.load_labels`` give them back to the base model)."""
        save_labels(model.config, output_dir)


def _head_modules(model: nn.Module) -> list[str]:
    for name in ("classifier", "head"):
        if getattr(model, name, None) is not None:
            return [name]
    raise ValueError(f"{type(model).__name__} has no 'classifier' head to train.")


def _fresh_head_for_new_labels(model: nn.Module, model_name_or_path: str, labels: list[str]) -> None:
    """Re-initialise the head when the data has other classes than the checkpoint but as many of them.

    ``ignore_mismatched_sizes`` only re-initialises a head of another shape; a 10-class checkpoint would otherwise
    start a 10-class task of different classes from its old class weights.
    """
    pretrained = AutoConfig.from_pretrained(model_name_or_path)
    old = [pretrained.id2label[i] for i in sorted(pretrained.id2label)] if pretrained.id2label else []
    if len(old) != len(labels) or old == list(labels):
        return
    for module in model.get_submodule(_head_modules(model)[0]).modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=getattr(model.config, "initializer_range", 0.02))
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
