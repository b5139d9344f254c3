"""Fine-tune a transformers image classifier with a PEFT method under Accelerate.

The library side of ``scripts/train_image_classification.py`` (flags named as in transformers'
image-classification examples). Run it with ``accelerate launch`` or plain ``python``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import evaluate
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, get_scheduler

from .benchmarking.tasks import TASKS, load_task
from .data import DIGITS_NAME, collate, image_transform, load_image_classification_data
from .methods import (
    FULL_MODEL_METHODS,
    METHODS,
    adamw,
    build_method,
    count_parameters,
    is_adapter_parameter,
    load_trainable,
    save_trainable,
)
from .metrics import metric_path

ADAPTER_FILE = "adapter_model.safetensors"
RUN_ARGS_FILE = "run_args.json"
#: The methods ``--mimi_target`` can shrink.
MIMI_METHODS = ("mona", "adapter")
# Flags that may differ between an interrupted run and its resumption (or a moved run dir): still the same run.
RESUMABLE_FLAGS = {
    "output_dir",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "push_to_hub",
    "hub_token",
    "report_to",
}


def default_model() -> str:
    """The small Swin pretrained by ``scripts/pretrain_backbone.py`` that ships with mona_peft."""
    from .backbones import backbone_path

    return str(backbone_path("swin"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Fine-tune an image classifier with Mona (PEFT) under Accelerate.")
    add = parser.add_argument
    add("--model_name_or_path", default=None, help="Hub id or local path (default: the shipped pretrained Swin).")
    add("--dataset_name", default=None, help="Hub dataset with image and label columns.")
    add("--dataset_config_name", default=None)
    add("--train_dir", default=None, help="Image folder: <train_dir>/<class name>/<images>.")
    add("--validation_dir", default=None, help="Image folder with the same class folders.")
    add("--validation_fraction", type=float, default=0.15, help="Carved from train when there is no validation split.")
    add("--task", default=None, choices=sorted(TASKS), help="An offline benchmark task (train/validation/test splits).")
    add("--task_seed", type=int, default=None, help="Seed of the --task split (default 0), independent of --seed.")
    add("--output_dir", default="outputs/mona-digits")
    add("--overwrite_output_dir", action="store_true", help="Allow an output dir that holds a different run.")
    add("--method", default="mona", help=f"Fine-tuning method: {', '.join(sorted(METHODS))}.")
    add("--inner_dim", type=int, default=64, help="Bottleneck width of mona, adapter and adaptformer.")
    add("--num_prompts", type=int, default=10, help="Prompt tokens per set of vpt_shallow and vpt_deep.")
    add("--adapter_lr_scale", type=float, default=2.0, help="Adapter lr = this x --learning_rate (2 in the paper).")
    add("--num_train_epochs", type=int, default=3)
    add(
        "--mimi_target",
        default=None,
        help="MiMi (mona, adapter): shrink to this size, '4x' (a quarter of the hidden neurons) or a number of adapter "
        "parameters ('20000', '20k'); --num_train_epochs becomes MiMi's total.",
    )
    add("--mimi_rho", type=float, default=0.5, help="MiMi: fraction removed per cycle.")
    add("--mimi_epochs_per_cycle", type=int, default=1, help="MiMi: epochs before the first shrink and after each.")
    add("--mimi_ranking", default="global", choices=["global", "local"], help="MiMi: neuron ranking.")
    add("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    add("--per_device_train_batch_size", type=int, default=32)
    add("--per_device_eval_batch_size", type=int, default=64)
    add("--learning_rate", type=float, default=1e-3)
    add("--weight_decay", type=float, default=0.05)
    add("--max_grad_norm", type=float, default=5.0)
    add("--lr_scheduler_type", default="cosine")
    add("--num_warmup_steps", type=int, default=10)
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--mixed_precision", default=None, choices=["no", "fp16", "bf16"])
    add("--seed", type=int, default=42)
    add("--checkpointing_steps", default="epoch", help="'epoch', a number of steps, or 'no'.")
    add("--eval_strategy", default="epoch", choices=["epoch", "end"], help="Evaluate after every epoch or at the end.")
    add("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest' in --output_dir.")
    add("--report_to", default="tensorboard", help="Accelerate tracker ('tensorboard', 'all', 'none').")
    add("--push_to_hub", action="store_true")
    add("--hub_model_id", default=None, help="Repository id for --push_to_hub (default: the output dir's name).")
    add("--hub_token", default=None)
    add("--dataloader_num_workers", type=int, default=0)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.method not in METHODS:
        raise SystemExit(f"error: unknown --method {args.method!r}; available: {', '.join(sorted(METHODS))}.")
    if args.checkpointing_steps not in ("epoch", "no") and not str(args.checkpointing_steps).isdigit():
        raise SystemExit(
            f"error: --checkpointing_steps must be 'epoch', 'no' or a number, got {args.checkpointing_steps!r}."
        )
    if args.mimi_target is not None:
        if args.method not in MIMI_METHODS:
            raise SystemExit(f"error: --mimi_target shrinks {' and '.join(MIMI_METHODS)} adapters, not {args.method}.")
        if args.max_train_steps is not None or args.resume_from_checkpoint is not None:
            raise SystemExit(
                "error: --mimi_target sets the number of epochs itself and cannot resume a run (the adapter shrinks); "
                "drop --max_train_steps / --resume_from_checkpoint."
            )
    if args.model_name_or_path is None:
        args.model_name_or_path = default_model()
    return args


def _run_identity(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in sorted(vars(args).items()) if k not in RESUMABLE_FLAGS}


def prepare_output_dir(args: argparse.Namespace) -> Path:
    """Refuse to mix two different runs in one output dir, unless ``--overwrite_output_dir``."""
    output_dir = Path(args.output_dir)
    record = output_dir / RUN_ARGS_FILE
    if record.exists() and not args.overwrite_output_dir:
        previous = json.loads(record.read_text())
        current = json.loads(json.dumps(_run_identity(args)))
        if previous != current:
            changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            raise SystemExit(
                f"error: {output_dir} already holds a different run (differs in {', '.join(changed)}); "
                "pass --overwrite_output_dir to replace it, or choose another --output_dir."
            )
    elif output_dir.exists() and any(output_dir.iterdir()) and not record.exists() and not args.overwrite_output_dir:
        raise SystemExit(f"error: {output_dir} is not empty and holds no mona_peft run; pass --overwrite_output_dir.")
    return output_dir


def find_checkpoint(args: argparse.Namespace) -> Path | None:
    if args.resume_from_checkpoint is None:
        return None
    if args.resume_from_checkpoint == "latest":
        candidates = sorted(Path(args.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if not candidates:
            raise SystemExit(f"error: --resume_from_checkpoint latest: no checkpoint-* folder in {args.output_dir}.")
        return candidates[-1]
    path = Path(args.resume_from_checkpoint)
    if not (path / "training_state.json").is_file():
        raise SystemExit(f"error: --resume_from_checkpoint {path} is not a checkpoint (no training_state.json there).")
    return path


def _head_modules(model) -> list[str]:
    for name in ("classifier", "head"):
        if getattr(model, name, None) is not None:
            return [name]
    raise ValueError(f"{type(model).__name__} has no 'classifier' head to train.")


def _fresh_head_for_new_labels(model, model_name_or_path: str, labels: list[str]) -> None:
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


def _start_mimi(model, args: argparse.Namespace, accelerator: Accelerator):
    """MiMi's controller for ``--mimi_target``; sets ``args.num_train_epochs`` to its total."""
    from .mimi import MiMi, MiMiSchedule

    if accelerator.num_processes > 1:
        raise SystemExit("error: --mimi_target trains in one process (DDP would keep the parameters MiMi replaces).")
    schedule = MiMiSchedule.from_target(
        args.mimi_target, rho=args.mimi_rho, epochs_per_cycle=args.mimi_epochs_per_cycle, ranking=args.mimi_ranking
    )
    mimi = MiMi(model, schedule)
    args.num_train_epochs = mimi.total_epochs
    accelerator.print(
        f"MiMi: {mimi.initial_size:,} -> {mimi.target:,} {schedule.measure} in {mimi.num_cycles} cycles, "
        f"{mimi.total_epochs} epochs"
    )
    return mimi


def _register_adapter_only_checkpoints(accelerator: Accelerator) -> None:
    """Checkpoints hold the trainable state (adapter + head, or what a non-PEFT method trains), not the frozen rest."""

    def save_hook(models, weights, output_dir):
        for model in models:
            save_trainable(accelerator.unwrap_model(model), Path(output_dir) / "adapter")
        weights.clear()

    def load_hook(models, input_dir):
        for _ in range(len(models)):
            load_trainable(accelerator.unwrap_model(models.pop()), Path(input_dir) / "adapter")

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def evaluate_model(model, dataloader, accelerator: Accelerator, num_labels: int) -> dict[str, float]:
    """Top-1 (and top-5 with more than 5 classes) accuracy with the shipped ``evaluate`` module."""
    metric = evaluate.load(metric_path("top_k_accuracy"), experiment_id=f"mona-{os.getpid()}-{time.time_ns()}")
    model.eval()
    scores, labels = [], []
    for batch in dataloader:
        with torch.no_grad():
            logits = model(pixel_values=batch["pixel_values"]).logits
        logits, references = accelerator.gather_for_metrics((logits.float(), batch["labels"]))
        scores.append(logits.cpu())
        labels.append(references.cpu())
    scores, labels = torch.cat(scores), torch.cat(labels)
    results = {"top1": metric.compute(predictions=scores.tolist(), references=labels.tolist(), k=1)["top_k_accuracy"]}
    if num_labels > 5:
        results["top5"] = metric.compute(predictions=scores.tolist(), references=labels.tolist(), k=5)["top_k_accuracy"]
    return results


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run one fine-tuning job; returns the final results (also written to ``all_results.json``)."""
    start = time.perf_counter()
    output_dir = prepare_output_dir(args)
    checkpoint = find_checkpoint(args)
    report_to = None if args.report_to == "none" else args.report_to
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=report_to,
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / RUN_ARGS_FILE).write_text(json.dumps(_run_identity(args), indent=2))
    accelerator.wait_for_everyone()

    if getattr(args, "task", None):
        data = load_task(args.task, args.task_seed or 0)
    else:
        data = load_image_classification_data(
            args.dataset_name,
            args.dataset_config_name,
            args.train_dir,
            args.validation_dir,
            args.validation_fraction,
            args.seed,
        )
    labels = data["train"].features["label"].names
    processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    transform = image_transform(processor)
    train_loader = DataLoader(
        data["train"].with_transform(transform),
        shuffle=True,
        collate_fn=collate,
        batch_size=args.per_device_train_batch_size,
        num_workers=args.dataloader_num_workers,
        # Its own generator: creating the iterator must not draw from the global RNG, or a resumed run
        # (which restores that RNG, then creates the iterator) would see other dropout masks.
        generator=torch.Generator().manual_seed(args.seed),
    )
    eval_loader = DataLoader(
        data["validation"].with_transform(transform), collate_fn=collate, batch_size=args.per_device_eval_batch_size
    )
    test_loader = None
    if "test" in data:  # reported once, after training; never used to choose anything
        test_loader = DataLoader(
            data["test"].with_transform(transform), collate_fn=collate, batch_size=args.per_device_eval_batch_size
        )

    base = AutoModelForImageClassification.from_pretrained(
        args.model_name_or_path,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    _fresh_head_for_new_labels(base, args.model_name_or_path, labels)
    model = build_method(base, args.method, _head_modules(base), inner_dim=args.inner_dim, num_prompts=args.num_prompts)
    trainable, total = count_parameters(model)
    accelerator.print(
        f"{args.method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)"
    )
    mimi = None
    if args.mimi_target is not None:
        mimi = _start_mimi(model, args, accelerator)

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if is_adapter_parameter(n)], "lr": args.learning_rate * args.adapter_lr_scale},
        {"params": [p for n, p in named if not is_adapter_parameter(n)], "lr": args.learning_rate},
    ]
    optimizer = adamw([g for g in groups if g["params"]], weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    epochs = math.ceil(max_steps / steps_per_epoch)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler
    )
    if test_loader is not None:
        test_loader = accelerator.prepare(test_loader)
    _register_adapter_only_checkpoints(accelerator)
    if report_to:
        accelerator.init_trackers(
            "mona_peft", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        )

    completed_steps, start_epoch, skip_batches = 0, 0, 0
    if checkpoint is not None:
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        completed_steps = json.loads((checkpoint / "training_state.json").read_text())["completed_steps"]
        start_epoch = completed_steps // steps_per_epoch
        skip_batches = (completed_steps % steps_per_epoch) * args.gradient_accumulation_steps

    def save_checkpoint() -> None:
        path = output_dir / f"checkpoint-{completed_steps}"
        accelerator.save_state(str(path))
        if accelerator.is_main_process:
            (path / "training_state.json").write_text(json.dumps({"completed_steps": completed_steps}))

    progress = tqdm(range(max_steps), initial=completed_steps, disable=not accelerator.is_local_main_process)
    results: dict[str, float] = {}
    train_loss = float("nan")
    train_loop_s, train_samples = 0.0, 0  # the training loop alone (no evaluation), for throughput
    for epoch in range(start_epoch, epochs):
        model.train()
        loader = accelerator.skip_first_batches(train_loader, skip_batches) if epoch == start_epoch else train_loader
        running, seen = 0.0, 0
        loop_start = time.perf_counter()
        for batch in loader:
            train_samples += len(batch["labels"])
            with accelerator.accumulate(model):
                loss = model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            running, seen = running + loss.item(), seen + 1
            if accelerator.sync_gradients:
                completed_steps += 1
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}")
                if report_to:
                    accelerator.log({"train_loss": loss.item(), "lr": scheduler.get_last_lr()[0]}, step=completed_steps)
                if args.checkpointing_steps.isdigit() and completed_steps % int(args.checkpointing_steps) == 0:
                    save_checkpoint()
            if completed_steps >= max_steps:
                break
        train_loop_s += time.perf_counter() - loop_start
        train_loss = running / max(seen, 1)
        last_epoch = epoch == epochs - 1 or completed_steps >= max_steps
        if getattr(args, "eval_strategy", "epoch") == "epoch" or last_epoch:
            results = evaluate_model(model, eval_loader, accelerator, len(labels))
            accelerator.print(
                f"epoch {epoch}: train loss {train_loss:.4f}, " + ", ".join(f"{k} {v:.4f}" for k, v in results.items())
            )
            if report_to:
                accelerator.log({f"eval_{k}": v for k, v in results.items()} | {"epoch": epoch}, step=completed_steps)
        if mimi is not None and (shrunk := mimi.on_epoch_end(epoch, optimizer)) is not None:
            accelerator.print(
                f"MiMi cycle {shrunk['cycle']}: {shrunk['neurons']} hidden neurons, {shrunk['adapter_params']:,} "
                f"adapter parameters ({len(shrunk['removed_sites'])} adapters removed)"
            )
        if args.checkpointing_steps == "epoch":
            save_checkpoint()
        if completed_steps >= max_steps:
            break
    if report_to:
        accelerator.end_training()
    if mimi is not None:
        trainable, total = count_parameters(model)
    test_results = evaluate_model(model, test_loader, accelerator, len(labels)) if test_loader is not None else {}

    accelerator.wait_for_everyone()
    final = {
        **{f"eval_{k}": v for k, v in results.items()},
        **{f"test_{k}": v for k, v in test_results.items()},
        "train_loss": train_loss,
        "train_samples_per_second": train_samples * accelerator.num_processes / max(train_loop_s, 1e-9),
        "train_runtime_s": round(time.perf_counter() - start, 1),
        "completed_steps": completed_steps,
        "num_processes": accelerator.num_processes,
        "trainable_params": trainable,
        "total_params": total,
    }
    if mimi is not None:
        final["mimi"] = mimi.summary()
    if accelerator.is_main_process:
        _write_outputs(accelerator.unwrap_model(model), processor, args, output_dir, final, trainable, total)
    accelerator.wait_for_everyone()
    return final


def _write_outputs(
    model, processor, args: argparse.Namespace, output_dir: Path, final: dict, trainable: int, total: int
) -> None:
    from .model_card import write_model_card

    model.save_pretrained(output_dir)
    whole_model = args.method in FULL_MODEL_METHODS
    if whole_model:  # config.json + model.safetensors + the image processor: loads with transformers alone
        processor.save_pretrained(output_dir)
        weights_bytes = final["model_bytes"] = (output_dir / "model.safetensors").stat().st_size
    else:
        weights_bytes = final["adapter_bytes"] = (output_dir / ADAPTER_FILE).stat().st_size
    (output_dir / "all_results.json").write_text(json.dumps(final, indent=2))
    dataset = args.dataset_name or (Path(args.train_dir).name if args.train_dir else args.task or DIGITS_NAME)
    hyperparameters = {
        k: getattr(args, k)
        for k in (
            "method",
            "learning_rate",
            "weight_decay",
            "lr_scheduler_type",
            "num_warmup_steps",
            "num_train_epochs",
            "max_train_steps",
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "max_grad_norm",
            "mixed_precision",
            "seed",
        )
    }
    hyperparameters["num_processes"] = final["num_processes"]
    if not whole_model:
        hyperparameters["adapter_lr_scale"] = args.adapter_lr_scale
    if args.method in ("mona", "adapter", "adaptformer"):
        hyperparameters["inner_dim"] = args.inner_dim
    if args.method.startswith("vpt_"):
        hyperparameters["num_prompts"] = args.num_prompts
    if args.mimi_target is not None:
        hyperparameters.update({k: getattr(args, k) for k in ("mimi_target", "mimi_rho", "mimi_epochs_per_cycle")})
    write_model_card(
        output_dir,
        base_model=args.model_name_or_path,
        method=args.method,
        dataset=dataset,
        metrics={k.removeprefix("eval_"): v for k, v in final.items() if k.startswith("eval_")},
        hyperparameters=hyperparameters,
        trainable_params=trainable,
        total_params=total,
        adapter_bytes=weights_bytes,
        repo_id=args.hub_model_id,
        num_labels=model.config.num_labels if hasattr(model, "config") else None,
        whole_model=whole_model,
    )
    if args.push_to_hub:
        from .hub import push_to_hub

        repo_id = args.hub_model_id or output_dir.name
        url = push_to_hub(output_dir, repo_id, token=args.hub_token)
        print(f"Pushed to {url}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return train(parse_args(argv))
