"""A finished run's result row, per kind: the classification benchmark also measures the trained model's costs
(saved trainable state, peak training memory, inference latency over the bare backbone); the dense benchmarks
record the validation curve and the test scores per class.

Peak training memory: weights + AdamW state + the peak resident-size increase of one training step (see
:mod:`harness.timing`). Latency: the trained model reloaded from its saved files against the bare pretrained
backbone, interleaved on the same batch in the same process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mona_peft.backbones import backbone_path
from mona_peft.data import TASKS, load_task
from mona_peft.tuners.registry import get_method

from .timing import PeakRSS, model_state_bytes, summarize, timed_pair

if TYPE_CHECKING:
    from .kinds import BenchmarkKind
    from .runner import BenchmarkConfig, Job

PEAK_MEMORY_DEFINITION = (
    "weights + buffers + AdamW state + the peak increase of this process's resident set size (Linux VmHWM, reset "
    "through /proc/self/clear_refs after malloc_trim) during one training step (forward, backward, optimizer step) "
    "at the task's batch size, after a warm-up step; not tracemalloc, which does not see PyTorch's allocations"
)


def dense_row(
    kind: BenchmarkKind, job: Job, config: BenchmarkConfig, final: dict, evaluations: list[dict], output_dir: Path
) -> dict[str, Any]:
    """Final validation and test scores, the validation curve (one point per epoch), sizes, speed."""
    *validation, test = evaluations  # the task has a test split: evaluated once, last
    per_epoch, total = config.steps_per_epoch, config.total_steps
    steps = [min((epoch + 1) * per_epoch, total) for epoch in range(len(validation))]
    return {
        "method": job.method,
        "lr": job.lr,
        "seed": job.seed,
        "val_score": final[f"eval_{kind.score}"],
        "test_score": test[kind.score],
        "test_per_class": test[kind.per_class],
        "test_scores": {key: value for key, value in test.items() if isinstance(value, float)},
        "curve": [{"step": s, "val_score": scores[kind.score]} for s, scores in zip(steps, validation, strict=True)],
        "trainable_params": final["trainable_params"],
        "total_params": final["total_params"],
        "weights_bytes": final.get("adapter_bytes") or final.get("model_bytes"),
        "train_images_per_s": final["train_samples_per_second"],
        "train_loss": final["train_loss"],
    }


def classification_row(
    kind: BenchmarkKind, job: Job, config: BenchmarkConfig, final: dict, evaluations: list[dict], output_dir: Path
) -> dict[str, Any]:
    """Test and validation top-1, then the costs of the trained model reloaded from its saved files."""
    from mona_peft.tuners.methods import save_trainable

    model = _reload(job, output_dir, config)
    if get_method(job.method).saves_whole_model:  # what a checkpoint of this method holds: its trained tensors only
        adapter_file = save_trainable(model, output_dir / "trainable")
    else:
        adapter_file = output_dir / "adapter_model.safetensors"
    latency = inference_latency(model, job, config)
    trainable, total = final["trainable_params"], final["total_params"]
    return {
        "method": job.method,
        "task": job.task,
        "seed": job.seed,
        "lr": job.lr,
        "top1": final[f"test_{kind.score}"],
        "val_top1": final[f"eval_{kind.score}"],
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
        "adapter_bytes": adapter_file.stat().st_size,
        "train_images_per_s": final["train_samples_per_second"],
        "peak_memory_bytes": training_peak_memory(model, job, config),
        "infer_latency_ratio": latency["ratio"],
        "infer_latency_ms": latency["method_median_ms"],
        "bare_latency_ms": latency["bare_median_ms"],
        "train_steps": final["completed_steps"],
        "train_loss": final["train_loss"],
    }


def _bare_classifier(config: BenchmarkConfig, task: str) -> torch.nn.Module:
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(
        str(backbone_path(config.backbone)), num_labels=_num_labels(task, config), ignore_mismatched_sizes=True
    )


def _reload(job: Job, output_dir: Path, config: BenchmarkConfig) -> torch.nn.Module:
    """The trained model from the run's saved files, with the method's trainable parameters marked again."""
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    from mona_peft.tuners.methods import build_method

    if get_method(job.method).saves_whole_model:
        model = AutoModelForImageClassification.from_pretrained(output_dir)
        return build_method(model, job.method, ["classifier"])
    return PeftModel.from_pretrained(_bare_classifier(config, job.task), output_dir, is_trainable=True)


def pixel_batch(task: str, config: BenchmarkConfig, size: int, split: str = "test") -> tuple[torch.Tensor, ...]:
    from transformers import AutoImageProcessor

    from mona_peft.tasks.image_classification.data import image_transform

    data = load_task(task, config.task_seed)[split]
    batch = data.select(range(min(size, len(data))))[:]
    encoded = image_transform(AutoImageProcessor.from_pretrained(str(backbone_path(config.backbone))))(batch)
    return encoded["pixel_values"], encoded["labels"]


def inference_latency(model: torch.nn.Module, job: Job, config: BenchmarkConfig) -> dict[str, float]:
    """The trained model vs the bare pretrained backbone (same head size): same batch, interleaved, eval mode."""
    bare = _bare_classifier(config, job.task)
    pixels, _ = pixel_batch(job.task, config, config.latency_batch)
    model.eval()
    bare.eval()

    def infer(net: torch.nn.Module):
        def run() -> None:
            with torch.no_grad():
                net(pixel_values=pixels)

        return run

    times = timed_pair({"method": infer(model), "bare": infer(bare)}, config.latency_warmup, config.latency_repeats)
    return summarize(times, "method", "bare")


def training_peak_memory(model: torch.nn.Module, job: Job, config: BenchmarkConfig) -> int | None:
    """Peak memory of one training step at the task's batch size: weights + AdamW state + the step's peak RSS rise."""
    from mona_peft.tuners.methods import adamw

    pixels, labels = pixel_batch(job.task, config, TASKS[job.task].batch_size, split="train")
    model.train()
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step() -> None:
        model(pixel_values=pixels, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with PeakRSS() as peak:
        step()
    return None if peak.bytes is None else model_state_bytes(model, optimizer) + peak.bytes


def _num_labels(task: str, config: BenchmarkConfig) -> int:
    return load_task(task, config.task_seed)["train"].features["label"].num_classes
