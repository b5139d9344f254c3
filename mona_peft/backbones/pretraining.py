"""Pretraining of the shipped backbones on Fashion-MNIST, and their model cards.

:func:`pretrain` trains :func:`mona_peft.backbones.build_backbone` ``(config.arch)`` on Fashion-MNIST (read by
:mod:`mona_peft.backbones.fashion_mnist`) and saves it, with its image processor, ``training_log.json`` (the exact
command, seed, hardware and learning curve) and ``README.md`` (:func:`write_model_card`), by default into the
shipped folder :func:`mona_peft.backbones.backbone_path` ``(config.arch)``. ``scripts/pretrain_backbone.py`` is its
command line.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from . import backbone_path, build_backbone, build_image_processor
from .fashion_mnist import fashion_mnist_tensors

__all__ = ["PretrainConfig", "evaluate_accuracy", "pretrain", "write_model_card"]


@dataclass
class PretrainConfig:
    """Hyper-parameters of :func:`pretrain` (all recorded in ``training_log.json``)."""

    arch: str = "swin"
    epochs: int = 2
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    label_smoothing: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    limit: int | None = None
    augment: bool = False
    bf16: bool = False
    compile: bool = True
    num_threads: int | None = 2
    log_every: int = 50
    eval_batch_size: int = 500
    data_dir: str | None = None
    #: Free-form notes copied into ``training_log.json`` and the model card (e.g. machine load).
    notes: str = ""


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms, position/relative-position tables and the CLS token."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        skip = parameter.ndim < 2 or any(
            key in name for key in ("position", "cls_token", "mask_token", "relative_position_bias_table")
        )
        (no_decay if skip else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 2 pixels (edge padding), per image."""
    batch, _, height, width = pixels.shape
    flip = torch.rand(batch, generator=generator) < 0.5
    pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    padded = F.pad(pixels, (2, 2, 2, 2), mode="replicate")
    dy, dx = (torch.randint(0, 5, (batch,), generator=generator) for _ in range(2))
    rows = (dy[:, None] + torch.arange(height))[:, None, :, None].expand(-1, pixels.shape[1], -1, width + 4)
    padded = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(width))[:, None, None, :].expand(-1, pixels.shape[1], height, -1)
    return padded.gather(3, cols)


@torch.no_grad()
def evaluate_accuracy(
    model: PreTrainedModel, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int = 500, bf16: bool = False
) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``(pixels, labels)``."""
    model.eval()
    correct = 0
    for start in range(0, len(labels), batch_size):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(pixel_values=pixels[start : start + batch_size]).logits
        correct += (logits.argmax(-1) == labels[start : start + batch_size]).sum().item()
    return correct / len(labels)


def _hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}; {os.cpu_count()} visible CPU cores, torch.get_num_threads()={torch.get_num_threads()}; "
        f"torch {torch.__version__}; {platform.system()} {platform.release()}; Python {platform.python_version()}"
    )


def pretrain(
    config: PretrainConfig,
    output_dir: str | os.PathLike | None = None,
    command: str | Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Pretrain backbone ``config.arch`` on Fashion-MNIST and save it (with processor, log, model card).

    AdamW, linear warmup then cosine decay per step, label smoothing, gradient clipping, full batches
    only; ``torch.compile`` for the training steps (evaluation runs eagerly) and optional bf16 autocast
    (slower than float32 once compiled on the CPU used here; weights and checkpoint stay float32).
    Everything random is seeded by ``config.seed``. After each epoch, the test accuracy is measured and
    the log written, so an interrupted run leaves a consistent ``training_log.json``. Returns the log.

    ``output_dir`` defaults to the shipped folder :func:`backbone_path` ``(config.arch)``; ``command``
    (default: this process's ``sys.argv``) is recorded verbatim.

    Not :func:`mona_peft.training.train`: that core fine-tunes a checkpoint with a method; this loop is the recorded
    recipe of the shipped weights (no weight decay on norms and position tables, label smoothing, full batches for
    one compiled shape, augmentation on tensors), which their ``training_log.json`` files reproduce.
    """
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    output = Path(output_dir) if output_dir is not None else backbone_path(config.arch)
    output.mkdir(parents=True, exist_ok=True)
    if command is None:
        command = shlex.join(["python", *sys.argv])
    elif not isinstance(command, str):
        command = shlex.join(command)
    train_x, train_y = fashion_mnist_tensors("train", limit=config.limit, data_dir=config.data_dir)
    test_x, test_y = fashion_mnist_tensors("test", limit=config.limit, data_dir=config.data_dir)
    run = _PretrainingRun.start(config, len(train_y))
    record = _new_record(config, run, len(train_y), len(test_y), command)
    log(
        f"{config.arch}: {record['num_parameters']:,} parameters, {len(train_y)} train / {len(test_y)} test, "
        f"{run.total_steps} steps"
    )
    for epoch in range(config.epochs):
        accuracy = run.epoch(epoch, (train_x, train_y), (test_x, test_y), record, log)
        _save(run.model, output, record)
    # With bf16 the numbers above are what training saw; the shipped weights are float32, so measure those too.
    if config.bf16:
        accuracy = evaluate_accuracy(run.model, test_x, test_y, config.eval_batch_size)
    record["final_test_accuracy_float32"] = round(accuracy, 4)
    record["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    record["status"] = "finished"
    _save(run.model, output, record)
    log(f"saved to {output}; float32 test accuracy {record['final_test_accuracy_float32']:.4f}")
    return record


@dataclass
class _PretrainingRun:
    """The model, its optimizer and schedule, and the seeded data order of one pretraining run."""

    config: PretrainConfig
    model: PreTrainedModel
    train_model: Callable
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    batch_size: int
    steps_per_epoch: int
    step: int = 0
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def start(cls, config: PretrainConfig, num_train: int) -> _PretrainingRun:
        model = build_backbone(config.arch, config.seed)
        # Full batches only (the last partial one is dropped): one input shape, so torch.compile compiles once.
        batch_size = min(config.batch_size, num_train)
        steps_per_epoch = num_train // batch_size
        total_steps = steps_per_epoch * config.epochs
        optimizer = torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.learning_rate)
        warmup = max(1, round(config.warmup_fraction * total_steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_with_warmup(total_steps, warmup))
        generator = torch.Generator().manual_seed(config.seed)
        # On CPU, torch.compile fuses Swin's many memory-bound ops: about 6x faster steps after ~1 min of compiling.
        train_model = torch.compile(model) if config.compile else model
        return cls(config, model, train_model, optimizer, schedule, generator, batch_size, steps_per_epoch)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    def epoch(self, epoch: int, train: tuple, test: tuple, record: dict, log: Callable) -> float:
        """Train one epoch, measure the test accuracy, add both to ``record``; returns the accuracy."""
        epoch_loss = self.train_epoch(*train, record, log)
        train_seconds = time.perf_counter() - self.started
        accuracy = evaluate_accuracy(self.model, *test, self.config.eval_batch_size, bf16=self.config.bf16)
        elapsed = time.perf_counter() - self.started
        record["epochs"].append(
            {
                "epoch": epoch + 1,
                "train_loss": round(epoch_loss, 4),
                "test_accuracy": round(accuracy, 4),
                "wall_time_s": round(elapsed, 1),
                "train_wall_time_s": round(train_seconds, 1),
            }
        )
        log(
            f"epoch {epoch + 1}/{self.config.epochs}: train loss {epoch_loss:.4f}, test accuracy {accuracy:.4f}, "
            f"{elapsed:.0f}s"
        )
        record.update(final_test_accuracy=round(accuracy, 4), wall_time_s=round(elapsed, 1))
        return accuracy

    def train_epoch(self, pixels: torch.Tensor, labels: torch.Tensor, record: dict, log: Callable) -> float:
        """One epoch of full batches in a seeded order; logs every ``log_every`` steps; returns the mean loss."""
        config = self.config
        self.model.train()
        order = torch.randperm(len(labels), generator=self.generator)
        epoch_loss, epoch_seen, window_loss, window_seen = 0.0, 0, 0.0, 0
        for batch in order[: self.steps_per_epoch * self.batch_size].view(self.steps_per_epoch, self.batch_size):
            loss = self.train_step(pixels[batch], labels[batch]) * len(batch)
            epoch_loss, epoch_seen = epoch_loss + loss, epoch_seen + len(batch)
            window_loss, window_seen = window_loss + loss, window_seen + len(batch)
            if self.step % config.log_every == 0 or self.step == self.total_steps:
                elapsed = time.perf_counter() - self.started
                record["steps"].append(
                    {
                        "step": self.step,
                        "epoch": round(self.step / self.steps_per_epoch, 3),
                        "train_loss": round(window_loss / window_seen, 4),
                        "learning_rate": self.schedule.get_last_lr()[0],
                        "wall_time_s": round(elapsed, 1),
                    }
                )
                log(f"step {self.step}/{self.total_steps}  loss {window_loss / window_seen:.4f}  {elapsed:.0f}s")
                window_loss, window_seen = 0.0, 0
        return epoch_loss / epoch_seen

    def train_step(self, pixels: torch.Tensor, labels: torch.Tensor) -> float:
        config = self.config
        if config.augment:
            pixels = _augment(pixels, self.generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            logits = self.train_model(pixel_values=pixels).logits
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.step += 1
        return loss.item()


def _new_record(config: PretrainConfig, run: _PretrainingRun, num_train: int, num_test: int, command: str) -> dict:
    """``training_log.json`` as a run starts: what trains, on what, how, where; the curves fill in as it goes."""
    from transformers import __version__ as transformers_version

    return {
        "arch": config.arch,
        "model_class": type(run.model).__name__,
        "num_parameters": sum(p.numel() for p in run.model.parameters()),
        "dataset": "Fashion-MNIST (idx files from Debian's dataset-fashion-mnist)",
        "train_examples": num_train,
        "test_examples": num_test,
        "hyperparameters": asdict(config),
        "seed": config.seed,
        "command": command,
        "hardware": _hardware(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "notes": config.notes,
        "transformers": transformers_version,
        "steps_per_epoch": run.steps_per_epoch,
        "epochs": [],
        "steps": [],
        "status": "running",
    }


def _save(model: PreTrainedModel, output: Path, record: dict) -> None:
    model.save_pretrained(output)
    build_image_processor().save_pretrained(output)
    (output / "training_log.json").write_text(json.dumps(record, indent=2) + "\n")
    write_model_card(output)


def _architecture_words(config: dict) -> str:
    if config["model_type"] == "swin":
        return (
            f"Swin, patch {config['patch_size']}, window {config['window_size']}, embed dim {config['embed_dim']}, "
            f"depths {config['depths']}, heads {config['num_heads']}"
        )
    return (
        f"ViT, patch {config['patch_size']}, hidden {config['hidden_size']}, {config['num_hidden_layers']} "
        f"layers, {config['num_attention_heads']} heads, MLP {config['intermediate_size']}"
    )


def write_model_card(folder: str | os.PathLike, notes: str | None = None) -> Path:
    """(Re)write ``folder/README.md`` from the folder's ``config.json`` and ``training_log.json``.

    ``notes`` replaces the log's ``notes`` in the card (the log itself is left as the run wrote it).
    """
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    record = json.loads((folder / "training_log.json").read_text())
    if notes is not None:
        record["notes"] = notes
    hp, shape = record["hyperparameters"], _architecture_words(config)
    weights = folder / "model.safetensors"
    size_mb = weights.stat().st_size / 1e6 if weights.exists() else 0.0
    accuracy = record.get("final_test_accuracy_float32", record.get("final_test_accuracy"))
    curve = "\n".join(
        f"| {e['epoch']} | {e['train_loss']:.4f} | {e['test_accuracy']:.4f} | {e['wall_time_s']:.0f} |"
        for e in record["epochs"]
    )
    lines = [
        f"# {folder.name}: small {record['model_class']} pretrained on Fashion-MNIST",
        "",
        "A small backbone that `mona_peft` ships because pretrained ViT/Swin weights cannot be downloaded",
        "where it is developed and tested. Not a general-purpose model: it has seen only Fashion-MNIST",
        "(grayscale clothing, 10 classes) at 32x32.",
        "",
        f"* Architecture: {shape}; 3-channel 32x32 input; {record['num_parameters']:,} parameters;",
        f"  `model.safetensors` in float32, {size_mb:.1f} MB.",
        "* Input: 28x28 grayscale, bilinear-resized to 32x32, repeated to RGB, scaled to [-1, 1]",
        "  (`preprocessor_config.json`; `AutoImageProcessor` loads it without torchvision).",
        f"* Training: {record['train_examples']:,} Fashion-MNIST training images, {hp['epochs']} epoch(s),",
        f"  batch {hp['batch_size']}, AdamW (lr {hp['learning_rate']}, weight decay {hp['weight_decay']}),",
        f"  {hp['warmup_fraction']:.0%} linear warmup then cosine, label smoothing {hp['label_smoothing']},",
        f"  augmentation {hp['augment']}, bf16 {hp['bf16']}, torch.compile {hp.get('compile', False)},"
        f" seed {record['seed']}.",
        f"* Test accuracy on the 10,000 Fashion-MNIST test images: **{accuracy:.4f}**.",
        f"* Wall time {record.get('wall_time_s', 0):.0f} s on: {record['hardware']}.",
        *([f"* Notes: {record['notes']}"] if record.get("notes") else []),
        "* Reproduce (`training_log.json` has the learning curve every 50 steps):",
        "",
        "  ```bash",
        f"  {record['command']}",
        "  ```",
        "",
        "| epoch | train loss | test accuracy | wall time (s) |",
        "|---|---|---|---|",
        curve,
        "",
        "```python",
        "from transformers import AutoImageProcessor, AutoModelForImageClassification",
        "from mona_peft.backbones import backbone_path",
        "",
        f'model = AutoModelForImageClassification.from_pretrained(backbone_path("{record["arch"]}"))',
        f'processor = AutoImageProcessor.from_pretrained(backbone_path("{record["arch"]}"))',
        "```",
        "",
    ]
    path = folder / "README.md"
    path.write_text("\n".join(lines))
    return path
