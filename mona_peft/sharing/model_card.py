"""Model cards of what mona_peft trains, for every task: PEFT adapters, and whole models of the baselines.

``render_model_card(...)`` returns a Hub README (YAML metadata + Markdown body) rendered from a Jinja2 template that
ships inside the package (``model_cards/``); ``write_model_card(output_dir, ...)`` writes it to
``output_dir/README.md``, replacing the placeholder card PEFT's ``save_pretrained`` writes there. The method's name and
summary come from its declaration (:mod:`mona_peft.tuners.registry`), the template and the model-index's task and
scores from the task's :class:`CardTask`.

The metadata is built with ``huggingface_hub.ModelCardData`` (``library_name: peft``, or ``transformers`` for the
whole models that ``full``/``linear``/``bitfit``/``partial1`` save, ``base_model``,
``pipeline_tag``, tags, ``datasets``, and a ``model-index`` with the task's scores), so
``huggingface_hub.ModelCard``/``metadata_load`` parse it back and the Hub shows the results as evaluation results.
Write the card *after* ``save_pretrained``: PEFT rewrites the tags and ``base_model`` of an existing README.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import model_cards
from ..backbones import BACKBONES, shipped_backbone_name
from ..tuners.registry import methods
from .labels import LABELS_FILE

#: A model-index entry: (metric type, metric name, value, metric args).
Score = tuple[str, str, float, "dict | None"]


@dataclass(frozen=True)
class CardTask:
    """What a task's model card needs; each task declares its own (``TrainingTask.card``).

    Args:
        template: the task's Jinja template in ``model_cards/`` (it extends ``_base.md``).
        hub_task_type: the Hub's task type, also the card's ``pipeline_tag`` (``"image-segmentation"``).
        hub_task_name: the task's name in the model-index (``"Semantic Segmentation"``).
        scores: the run's metrics -> the model-index entries, in the order the Hub should show them.

    Example::

        CardTask("semantic_segmentation.md", "image-segmentation", "Semantic Segmentation", segmentation_scores)
    """

    template: str
    hub_task_type: str
    hub_task_name: str
    scores: Callable[[Mapping[str, float]], list[Score]]


#: The folder of the card templates: ``model_cards/`` at the top of the repository, installed as this package.
TEMPLATE_DIR = Path(model_cards.__file__).resolve().parent
CARD_MARKER = "<!-- mona_peft model card"
LIBRARY_TAG = "mona_peft"

# metric key (lower case, "eval_" prefix removed) -> canonical key
TOP1_KEYS = ("top1", "top1_accuracy", "top_1_accuracy", "top-1", "accuracy", "acc", "acc1")
TOP5_KEYS = ("top5", "top5_accuracy", "top_5_accuracy", "top-5", "acc5")


def render_model_card(
    *,
    base_model: str,
    method: str,
    dataset: str,
    metrics: dict[str, float],
    evaluated_on: str | None = None,
    hyperparameters: dict[str, object],
    trainable_params: int,
    total_params: int,
    adapter_bytes: int | None = None,
    repo_id: str | None = None,
    num_labels: int | None = None,
    extra_tags: list[str] | None = None,
    whole_model: bool = False,
    task: CardTask,
    labels_file: bool = False,
    framework_versions: list[tuple[str, str]] | None = None,
) -> str:
    """The README.md (YAML metadata + Markdown) of an adapter, or of a whole model.

    Args:
        base_model: Hub id (or local path) of the backbone the adapter was trained on. A local path is shown in the
            body but left out of the ``base_model`` metadata, which the Hub only accepts as a model id.
        method: a declared ``--method`` name (``"mona"``, ...): a tag, and the card's wording from its declaration.
        dataset: dataset name or Hub id; becomes a tag, ``datasets`` (when it is a valid id) and the model-index.
        evaluated_on: where the metrics come from (Markdown; default the dataset's name): ``"the validation split"``.
        metrics: e.g. ``{"top1": 0.93}`` (``eval_`` prefixes understood): the task's ``CardTask.scores`` pick the
            model-index entries; every metric goes into the results table.
        hyperparameters: shown as a table, in the given order.
        trainable_params / total_params / adapter_bytes: the budget, and the size of the saved weights.
        repo_id / num_labels: the repository (the model name and the snippet's reference) and the head's classes.
        extra_tags: more metadata tags.
        whole_model: the card of a whole transformers model (loaded with the task's Auto class), not of an adapter.
        task: the task's :class:`CardTask` (``TrainingTask.card``): template, snippet, the model-index's task.
        labels_file: the folder has a ``labels.json`` (``write_model_card`` checks): the snippet loads it.
        framework_versions: (package, version) rows of the last table; default the installed ones (examples pin).
    """
    method_key = method.lower()
    model_name = repo_id.split("/")[-1] if repo_id else f"{method_key}-{_short_name(base_model)}-{_short_name(dataset)}"
    card_data = _card_data(base_model, method_key, dataset, metrics, model_name, extra_tags, whole_model, task)
    context = {
        "card_data": card_data.to_yaml(),
        "template": task.template,
        "whole_model": whole_model,
        "model_name": model_name,
        "method": _method_wording(method),
        **_base_model_reference(base_model),
        "dataset": dataset,
        "evaluated_on": evaluated_on or f"**{dataset}**",
        "num_labels": num_labels,
        "labels_file": labels_file,
        "adapter_ref": repo_id or f"path/to/this/{'model' if whole_model else 'adapter'}",
        "hyperparameters": [(str(k), _format_value(v)) for k, v in hyperparameters.items()],
        **_budget(trainable_params, total_params, adapter_bytes),
        "results": [(_metric_label(k), _format_value(v)) for k, v in metrics.items()],
        "versions": [tuple(row) for row in framework_versions] if framework_versions else framework_versions_table(),
    }
    return _render_template(context)


#: What a card's snippet loads when the base model was a local folder other than a shipped backbone.
BASE_MODEL_PLACEHOLDER = "path/to/base-model"


def _base_model_reference(base_model: str) -> dict[str, Any]:
    """How the card names the base model and how its snippet loads it, with no path of the training machine: a Hub
    id as itself, a shipped backbone through ``backbone_path``, any other local checkpoint by its folder's name in
    the text and a placeholder in the snippet."""
    shipped = shipped_backbone_name(base_model)
    hub_id = _is_hub_id(base_model) and not shipped
    if hub_id:
        label, code = f"[`{base_model}`](https://huggingface.co/{base_model})", f'"{base_model}"'
    elif shipped:
        label = f'the backbone that ships with `mona_peft` (`backbone_path("{shipped}")`)'
        code = f'backbone_path("{shipped}")'
    else:
        label, code = f"a local checkpoint (`{_short_name(base_model)}`)", f'"{BASE_MODEL_PLACEHOLDER}"'
    return {
        "base_model_is_hub_id": hub_id,
        "base_model_label": label,
        "base_model_code": code,
        "base_model_shipped": shipped,
    }


def _method_wording(method: str) -> dict[str, str]:
    """The card's name and summary of ``method``, from its declaration (an undeclared name is shown as given)."""
    spec = methods().get(method.lower())
    return {"display": spec.display_name, "summary": spec.summary} if spec else {"display": method, "summary": ""}


def _budget(trainable_params: int, total_params: int, adapter_bytes: int | None) -> dict[str, Any]:
    """The card's parameter budget and weights size; refuses a budget no model has."""
    if trainable_params < 0 or total_params <= 0 or trainable_params > total_params:
        raise ValueError(
            f"Need 0 <= trainable_params <= total_params and total_params > 0, got {trainable_params=}, "
            f"{total_params=}."
        )
    return {
        "trainable_params": int(trainable_params),
        "total_params": int(total_params),
        "trainable_percent": _format_percent(100.0 * trainable_params / total_params),
        "adapter_size": _format_bytes(adapter_bytes) if adapter_bytes is not None else None,
        "adapter_size_short": _format_bytes(adapter_bytes, short=True) if adapter_bytes is not None else None,
    }


def _card_data(
    base_model: str,
    method: str,
    dataset: str,
    metrics: Mapping[str, float],
    model_name: str,
    extra_tags: list[str] | None,
    whole_model: bool,
    task: CardTask,
):
    """The card's metadata: library, base model (a Hub id only), pipeline tag, tags, and the model-index results."""
    from huggingface_hub import EvalResult, ModelCardData

    task_type, task_name = task.hub_task_type, task.hub_task_name
    dataset_is_id = _is_hub_id(dataset)
    dataset_label = dataset if dataset_is_id else _short_name(dataset)  # no local paths in the metadata
    library = "transformers" if whole_model else "peft"
    tags = _unique([method, library, task_type, dataset_label, LIBRARY_TAG, *(extra_tags or [])])
    scores = task.scores(metrics)
    eval_results = [
        EvalResult(
            task_type=task_type,
            task_name=task_name,
            dataset_type=dataset_label,
            dataset_name=dataset_label,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=value,
            metric_args=args,
        )
        for metric_type, metric_name, value, args in scores
    ]
    return ModelCardData(
        library_name=library,
        base_model=base_model if _is_hub_id(base_model) else None,
        pipeline_tag=task_type,
        tags=tags,
        datasets=[dataset] if dataset_is_id else None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )


def write_model_card(output_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Render the card (same keyword arguments as ``render_model_card``) into ``output_dir/README.md``."""
    kwargs.setdefault("labels_file", (Path(output_dir) / LABELS_FILE).is_file())
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_model_card(**kwargs), encoding="utf-8")
    return path


def is_mona_peft_card(text: str) -> bool:
    """Whether ``text`` is a card rendered by this module (and not, e.g., PEFT's placeholder card)."""
    return CARD_MARKER in text


# --------------------------------------------------------------------------------------------------- template


def _render_template(context: dict) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML
    )
    env.filters["md_cell"] = _md_cell
    return env.get_template(context["template"]).render(**context)


# ---------------------------------------------------------------------------------------------------- helpers


def _is_hub_id(name: str) -> bool:
    """A valid Hub repo id that is not an existing local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or os.path.exists(name) or name.startswith((".", "~", "/")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _short_name(name: str) -> str:
    """A checkpoint's or dataset's last path component (a shipped backbone: its folder's name)."""
    shipped = shipped_backbone_name(name)
    if shipped:
        return BACKBONES[shipped]
    return Path(str(name).rstrip("/\\")).name or str(name)


def _unique(items) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item and item not in seen:
            seen.append(item)
    return seen


def normalise_metric_key(key: str) -> str:
    """``key`` in lower case without its split prefix (``eval_``, ``test_``, ``validation_``)."""
    key = key.lower()
    return key.removeprefix("eval_").removeprefix("test_").removeprefix("validation_")


def _metric_label(key: str) -> str:
    normalised = normalise_metric_key(key)
    if normalised in TOP1_KEYS:
        return "top-1 accuracy"
    if normalised in TOP5_KEYS:
        return "top-5 accuracy"
    return key


def _format_value(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    return str(value)


def _format_percent(percent: float) -> str:
    return f"{percent:.2f}" if percent >= 1 else f"{percent:.3g}"


def _format_bytes(size: int, short: bool = False) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            break
        value /= 1024
    if unit == "B":
        return f"{size:,} bytes"
    return f"{value:.1f} {unit}" if short else f"{value:.1f} {unit} ({size:,} bytes)"


def _md_cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def framework_versions_table() -> list[tuple[str, str]]:
    versions = []
    for label, distribution in (
        ("mona_peft", "mona-peft"),
        ("PEFT", "peft"),
        ("Transformers", "transformers"),
        ("PyTorch", "torch"),
    ):
        try:
            versions.append((label, importlib.metadata.version(distribution)))
        except importlib.metadata.PackageNotFoundError:
            if label == "mona_peft":
                from .. import __version__

                versions.append((label, __version__))
    return versions
