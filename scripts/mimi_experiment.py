"""MiMi checked offline: at equal final size, do adapters shrunk by MiMi beat adapters trained small from the start?

    python scripts/mimi_experiment.py --output benchmarks/mimi_results.json --figures benchmarks/figures

For each task, seed and method (Mona, Houlsby adapter) on the shipped pretrained Swin (``backbone_path("swin")``):

- ``<method>_small``: adapters of width ``--small_dim`` everywhere, trained from the start;
- ``<method>_mimi``: adapters of width ``--initial_dim`` trained ``epochs_per_cycle`` epochs, then shrunk by MiMi
  (global ranking, ``rho`` of the parameters per cycle) to at most the small adapters' parameter count, training
  ``epochs_per_cycle`` epochs after each shrink.

Both get the same total number of epochs (MiMi's ``first + K * epochs_per_cycle``), the same optimizer (AdamW, the
training script's defaults: lr 1e-3 for the head, 2x for the adapters, weight decay 0.05, 10 warm-up steps then
cosine, gradient clipping 5), batch size and data order. Nothing is selected on the test split: the model at the end
of training is evaluated once on it (``top1``); validation accuracy is recorded alongside. The MiMi path (test
accuracy of the adapters at the end of each cycle, before the shrink, and their size) is recorded for the plot.

Rows go to ``--output`` in the benchmark's format (``method, task, seed, top1, trainable_params, adapter_bytes`` and
more). CPU: the script sets one torch thread (``--threads``), much faster than two on a shared two-core machine.
``--budget_s`` stops starting new (task, seed) groups once the time is spent.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import peft
import torch
import transformers
from peft import get_peft_model
from transformers import AutoImageProcessor, AutoModelForImageClassification, get_scheduler

import mona_peft
from mona_peft.backbones import backbone_path
from mona_peft.mimi import MiMi, MiMiSchedule, adapter_sizes, find_sites

CONFIGS = {"mona": mona_peft.MonaConfig, "adapter": mona_peft.HoulsbyConfig}
DEFAULT_EPOCHS_PER_CYCLE = {"digits": 2, "digits-fewshot": 5, "textures": 2}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--tasks", nargs="+", default=["digits", "digits-fewshot"])
    add("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add("--methods", nargs="+", default=["mona", "adapter"], choices=sorted(CONFIGS))
    add("--initial_dim", type=int, default=64, help="Width of the adapters MiMi starts from.")
    add("--small_dim", type=int, default=8, help="Width of the small adapters trained from the start.")
    add("--rho", type=float, default=0.5)
    add("--variants", nargs="+", default=["mimi", "small"], choices=["mimi", "small"])
    add(
        "--balanced",
        action="store_true",
        help="Ablation: MiMi with the per-parameter-kind balanced score (rows named <method>_mimi_balanced).",
    )
    add("--epochs_per_cycle", type=int, default=None, help=f"Default per task: {DEFAULT_EPOCHS_PER_CYCLE}.")
    add("--task_seed", type=int, default=0, help="Split of the tasks (the same test set for every seed).")
    add("--batch_size", type=int, default=32)
    add("--learning_rate", type=float, default=1e-3)
    add("--adapter_lr_scale", type=float, default=2.0)
    add("--weight_decay", type=float, default=0.05)
    add("--warmup_steps", type=int, default=10)
    add("--max_grad_norm", type=float, default=5.0)
    add("--threads", type=int, default=1)
    add("--budget_s", type=float, default=1800.0)
    add("--output", default="benchmarks/mimi_results.json")
    add("--figures", default="benchmarks/figures")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------------------ data


def task_tensors(task: str, task_seed: int, processor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from mona_peft.data import load_task

    data = load_task(task, task_seed)
    tensors = {}
    for split in ("train", "validation", "test"):
        images = [image.convert("RGB") for image in data[split]["image"]]
        pixels = processor(images, return_tensors="pt")["pixel_values"]
        tensors[split] = (pixels, torch.as_tensor(data[split]["label"]))
    return tensors


# ----------------------------------------------------------------------------------------------------------- model


def build_model(method: str, inner_dim: int, seed: int, num_labels: int):
    base = AutoModelForImageClassification.from_pretrained(
        backbone_path("swin"),
        num_labels=num_labels,
        id2label={i: str(i) for i in range(num_labels)},
        label2id={str(i): i for i in range(num_labels)},
        ignore_mismatched_sizes=True,
    )
    torch.manual_seed(seed)
    torch.nn.init.normal_(base.classifier.weight, std=base.config.initializer_range)  # a fresh head for the new task
    torch.nn.init.zeros_(base.classifier.bias)
    return get_peft_model(base, CONFIGS[method](inner_dim=inner_dim, modules_to_save=["classifier"]))


def adapter_params(model) -> int:
    return sum(site.params(site.size) for site in find_sites(model, "default"))


def trainable_params(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_bytes(model) -> int:
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        return (Path(directory) / "adapter_model.safetensors").stat().st_size


def make_optimizer(model, args):
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if "classifier" not in n], "lr": args.learning_rate * args.adapter_lr_scale},
        {"params": [p for n, p in named if "classifier" in n], "lr": args.learning_rate},
    ]
    return torch.optim.AdamW(groups, weight_decay=args.weight_decay)


def evaluate(model, pixels: torch.Tensor, labels: torch.Tensor, batch: int = 250) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch):
            logits = model(pixel_values=pixels[start : start + batch]).logits
            correct += int((logits.argmax(-1) == labels[start : start + batch]).sum())
    return correct / len(labels)


def train(model, data, epochs: int, seed: int, args, mimi: MiMi | None = None) -> dict:
    """The same loop for both variants; ``mimi`` shrinks at the end of its cycles (recording the path first)."""
    pixels, labels = data["train"]
    optimizer = make_optimizer(model, args)
    steps_per_epoch = math.ceil(len(labels) / args.batch_size)
    scheduler = get_scheduler(
        "cosine", optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    path = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), args.batch_size):
            index = order[start : start + args.batch_size]
            loss = model(pixel_values=pixels[index], labels=labels[index]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if mimi is not None and (epoch in mimi._shrink_at or epoch == epochs - 1):
            path.append(
                {
                    "epoch": epoch,
                    "cycle": mimi.cycle,
                    "adapter_params": adapter_params(model),
                    "trainable_params": trainable_params(model),
                    "top1": evaluate(model, *data["test"]),
                }
            )
            entry = mimi.on_epoch_end(epoch, optimizer)
            if entry is not None:
                assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == trainable_params(model)
    return {"path": path}


# ------------------------------------------------------------------------------------------------------------- run


def run_one(method: str, variant: str, task: str, seed: int, data, args) -> dict:
    start = time.perf_counter()
    num_labels = int(data["train"][1].max()) + 1
    per_cycle = args.epochs_per_cycle or DEFAULT_EPOCHS_PER_CYCLE.get(task, 2)
    # The small adapters fix the target: MiMi ends at most at their parameter count.
    small = build_model(method, args.small_dim, seed, num_labels)
    target = adapter_params(small)
    if variant == "small":
        model = small
        reference = build_model(method, args.initial_dim, seed, num_labels)
        schedule = MiMiSchedule(rho=args.rho, epochs_per_cycle=per_cycle, target_params=target)
        epochs = MiMi(reference, schedule).total_epochs
        del reference
        extra = train(model, data, epochs, seed, args)
    else:
        model = build_model(method, args.initial_dim, seed, num_labels)
        schedule = MiMiSchedule(rho=args.rho, epochs_per_cycle=per_cycle, target_params=target, balanced=args.balanced)
        mimi = MiMi(model, schedule)
        epochs = mimi.total_epochs
        extra = train(model, data, epochs, seed, args, mimi=mimi)
    name = f"{method}_{variant}" + ("_balanced" if variant == "mimi" and args.balanced else "")
    row = {
        "method": name,
        "task": task,
        "seed": seed,
        "top1": evaluate(model, *data["test"]),
        "val_top1": evaluate(model, *data["validation"]),
        "trainable_params": trainable_params(model),
        "adapter_params": adapter_params(model),
        "adapter_bytes": adapter_bytes(model),
        "target_adapter_params": target,
        "initial_dim": args.initial_dim if variant == "mimi" else args.small_dim,
        "epochs": epochs,
        "epochs_per_cycle": per_cycle,
        "sizes": adapter_sizes(model, "default"),
        "wall_s": round(time.perf_counter() - start, 1),
        **extra,
    }
    print(
        f"{task} seed {seed} {row['method']}: top1 {row['top1']:.4f} (val {row['val_top1']:.4f}), "
        f"{row['adapter_params']:,} adapter params, {epochs} epochs, {row['wall_s']} s",
        flush=True,
    )
    return row


def summarize(rows: list[dict]) -> dict:
    summary = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows):
            values = [r["top1"] for r in rows if r["task"] == task and r["method"] == method]
            params = [r["adapter_params"] for r in rows if r["task"] == task and r["method"] == method]
            if values:
                summary[f"{task}/{method}"] = {
                    "top1_mean": statistics.mean(values),
                    "top1_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "adapter_params_mean": statistics.mean(params),
                    "n": len(values),
                }
        for method in ("mona", "adapter"):
            mimi = {r["seed"]: r["top1"] for r in rows if r["task"] == task and r["method"] == f"{method}_mimi"}
            small = {r["seed"]: r["top1"] for r in rows if r["task"] == task and r["method"] == f"{method}_small"}
            paired = [mimi[s] - small[s] for s in mimi if s in small]
            if paired:
                summary[f"{task}/{method}_mimi_minus_small"] = {
                    "mean": statistics.mean(paired),
                    "std": statistics.stdev(paired) if len(paired) > 1 else 0.0,
                    "wins": sum(d > 0 for d in paired),
                    "ties": sum(d == 0 for d in paired),
                    "n": len(paired),
                }
    return summary


def plot(rows: list[dict], figures: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = [m for m in ("mona", "adapter") if any(r["method"].startswith(m + "_") for r in rows)]
    colours = {"mona": "tab:blue", "adapter": "tab:orange"}
    labels = {"mona": "Mona", "adapter": "Houlsby adapter"}

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for method in methods:
            runs = [r for r in rows if r["task"] == task and r["method"].startswith(f"{method}_mimi")]
            if runs:
                stages = len(runs[0]["path"])
                xs = [statistics.mean(r["path"][i]["adapter_params"] for r in runs) for i in range(stages)]
                ys = [[r["path"][i]["top1"] for r in runs] for i in range(stages)]
                ax.errorbar(
                    xs,
                    [np.mean(y) for y in ys],
                    yerr=[np.std(y) for y in ys],
                    marker="o",
                    capsize=3,
                    color=colours[method],
                    label=f"{labels[method]}: {runs[0]['method']} path (end of each cycle)",
                )
            small = [r for r in rows if r["task"] == task and r["method"] == f"{method}_small"]
            if small:
                ax.errorbar(
                    [statistics.mean(r["adapter_params"] for r in small)],
                    [np.mean([r["top1"] for r in small])],
                    yerr=[np.std([r["top1"] for r in small])],
                    marker="s",
                    markersize=9,
                    capsize=3,
                    linestyle="none",
                    color=colours[method],
                    markerfacecolor="white",
                    label=f"{labels[method]}: small from scratch",
                )
        ax.set_xscale("log")
        ax.set_xlabel("adapter parameters (head excluded)")
        ax.set_ylabel("test top-1")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("MiMi: accuracy along the shrinking path (mean +- std over seeds)")
    fig.tight_layout()
    path_png = figures / "mimi_path.png"
    fig.savefig(path_png, dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(len(methods), len(tasks), figsize=(5.5 * len(tasks), 3.4 * len(methods)), squeeze=False)
    for row_axes, method in zip(axes, methods, strict=True):
        for ax, task in zip(row_axes, tasks, strict=True):
            runs = [r for r in rows if r["task"] == task and r["method"].startswith(f"{method}_mimi")]
            if not runs:
                ax.axis("off")
                continue
            keys = list(runs[0]["sizes"])
            short = [_short_site(k) for k in keys]
            sizes = np.array([[r["sizes"].get(k, 0) for k in keys] for r in runs], dtype=float)
            ax.bar(range(len(keys)), sizes.mean(0), yerr=sizes.std(0), color=colours[method], capsize=2)
            ax.axhline(runs[0]["initial_dim"], color="grey", linestyle="--", linewidth=1, label="initial width")
            small = [r for r in rows if r["task"] == task and r["method"] == f"{method}_small"]
            if small:
                ax.axhline(small[0]["initial_dim"], color="black", linestyle=":", linewidth=1, label="small width")
            ax.set_xticks(range(len(keys)))
            ax.set_xticklabels(short, rotation=90, fontsize=7)
            ax.set_ylabel("hidden neurons")
            ax.set_title(f"{labels[method]}, {task}")
            ax.legend(fontsize=7)
    fig.suptitle("Per-adapter widths learned by MiMi (global ranking; mean +- std over seeds; 0 = removed)")
    fig.tight_layout()
    sizes_png = figures / "mimi_sizes.png"
    fig.savefig(sizes_png, dpi=120)
    plt.close(fig)
    return [str(path_png), str(sizes_png)]


def _short_site(key: str) -> str:
    name = key.replace("\\", "")
    parts = name.split(".")
    stage, block = parts[parts.index("layers") + 1], parts[parts.index("blocks") + 1]
    tail = parts[-1] if parts[-1].startswith("mona_") else parts[-2] + "." + parts[-1]
    return f"s{stage}b{block} {tail.removeprefix('mona_').replace('attention.', '')}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    processor = AutoImageProcessor.from_pretrained(backbone_path("swin"))
    rows, skipped = [], []
    for task in args.tasks:
        data = task_tensors(task, args.task_seed, processor)
        for seed in args.seeds:
            if time.perf_counter() - start > args.budget_s:
                skipped.append({"task": task, "seed": seed})
                continue
            for method in args.methods:
                for variant in args.variants:
                    rows.append(run_one(method, variant, task, seed, data, args))
    wall = time.perf_counter() - start
    result = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "args": vars(args),
        "environment": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "mona_peft": mona_peft.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
        },
        "summary": summarize(rows),
        "skipped_for_budget": skipped,
        "wall_time_s": round(wall, 1),
        "rows": rows,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    if rows:
        result["figures"] = plot(rows, Path(args.figures))
        output.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    print(f"wall time {wall:.0f} s; wrote {output}")
    return result


if __name__ == "__main__":
    main()
