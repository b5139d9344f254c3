"""MiMi checked offline: at equal final size, do adapters shrunk by MiMi beat adapters trained small from the start?

    python scripts/mimi_experiment.py --output benchmarks/mimi_results.json --figures benchmarks/figures

For each task, seed and method (Mona, Houlsby adapter) on the shipped pretrained Swin (``backbone_path("swin")``):

- ``<method>_small``: adapters of width ``--small_dim`` everywhere, trained from the start;
- ``<method>_mimi``: adapters of width ``--initial_dim`` trained ``epochs_per_cycle`` epochs, then shrunk by MiMi
  (global ranking, ``rho`` of the parameters per cycle) to at most the small adapters' parameter count, training
  ``epochs_per_cycle`` epochs after each shrink.

Every run goes through the training core (``mona_peft.training.train`` on the image-classification task, MiMi through
``RunConfig.mimi_target``), so both get what the training script does: AdamW with the adapter learning-rate scale
(Mona's projections at a tenth of it), 10 warm-up steps then cosine, gradient clipping 5, the same seeded data order,
and the same total number of epochs (MiMi's ``first + K * epochs_per_cycle``). Nothing is selected on the test split:
the model at the end of training is evaluated once on it (``top1``); validation accuracy is recorded after every
epoch. The MiMi path (validation accuracy at the end of each cycle, before the shrink, and the adapters' size then)
is recorded for the plot, beside the small adapters' final validation accuracy.

Rows go to ``--output`` in the benchmark's format (``method, task, seed, top1, trainable_params, adapter_bytes`` and
more). CPU: the script sets one torch thread (``--threads``), much faster than two on a shared two-core machine.
``--budget_s`` stops starting new (task, seed) groups once the time is spent.
"""

from __future__ import annotations

import argparse
import json
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
from transformers import AutoModelForImageClassification

import mona_peft
from mona_peft.backbones import backbone_path
from mona_peft.data import load_task
from mona_peft.mimi import MiMi, MiMiSchedule, adapter_sizes, find_sites
from mona_peft.tasks.image_classification import ImageClassificationTask
from mona_peft.training import RunConfig, train
from mona_peft.tuners.methods import build_method
from mona_peft.tuners.registry import methods

SHRINKABLE = [name for name, spec in methods().items() if spec.shrinkable]
DEFAULT_EPOCHS_PER_CYCLE = {"digits": 2, "digits-fewshot": 5, "textures": 2}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--tasks", nargs="+", default=["digits", "digits-fewshot"])
    add("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add("--methods", nargs="+", default=["mona", "adapter"], choices=SHRINKABLE)
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
    add("--work_dir", default=None, help="Where the runs train (default: a temporary folder).")
    add("--figures", default="benchmarks/figures")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------- model


def num_labels(task: str, task_seed: int) -> int:
    return load_task(task, task_seed)["train"].features["label"].num_classes


def built_adapters(method: str, inner_dim: int, labels: int):
    """The method's adapters of width ``inner_dim`` on the shipped backbone, built as the training core builds them
    (to read their parameter count and MiMi's schedule before training)."""
    base = AutoModelForImageClassification.from_pretrained(
        backbone_path("swin"), num_labels=labels, ignore_mismatched_sizes=True
    )
    return build_method(base, method, ["classifier"], inner_dim=inner_dim)


def adapter_params(model) -> int:
    return sum(site.params(site.size) for site in find_sites(model, "default"))


# ------------------------------------------------------------------------------------------------------------- run


def run_config(method: str, task: str, seed: int, args, output_dir: Path, inner_dim: int, **extra) -> RunConfig:
    """The training core's run: the training script's recipe, every validation epoch recorded, the test split once."""
    return RunConfig(
        model_name_or_path=str(backbone_path("swin")),
        task=task,
        task_seed=args.task_seed,
        method=method,
        options={"inner_dim": inner_dim},
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=250,
        learning_rate=args.learning_rate,
        adapter_lr_scale=args.adapter_lr_scale,
        weight_decay=args.weight_decay,
        num_warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm,
        lr_scheduler_type="cosine",
        seed=seed,
        output_dir=str(output_dir),
        overwrite_output_dir=True,
        report_to="none",
        checkpointing_steps="no",
        eval_strategy="epoch",
        **extra,
    )


def train_recording(config: RunConfig) -> tuple[dict, list[dict]]:
    """``train`` on the image-classification task; returns the final results and every validation evaluation."""
    task = ImageClassificationTask()
    evaluations, evaluate = [], task.evaluate
    task.evaluate = lambda *arguments: evaluations.append(evaluate(*arguments)) or evaluations[-1]
    final = train(config, task)
    return final, evaluations[:-1]  # the last evaluation is the test split's


def mimi_path(final: dict, validation: list[dict]) -> list[dict]:
    """Validation top-1 at the end of each cycle, before its shrink, with the adapters' size then; and at the end."""
    history = final["mimi"]["history"]
    path = [
        {"epoch": entry["epoch"], "cycle": before["cycle"], "adapter_params": before["adapter_params"]}
        for before, entry in zip(history, history[1:], strict=False)
    ]
    path.append(
        {"epoch": len(validation) - 1, "cycle": history[-1]["cycle"], "adapter_params": history[-1]["adapter_params"]}
    )
    return [{**point, "val_top1": validation[point["epoch"]]["top1"]} for point in path]


def run_one(method: str, variant: str, task: str, seed: int, args, work_dir: Path) -> dict:
    start = time.perf_counter()
    labels = num_labels(task, args.task_seed)
    per_cycle = args.epochs_per_cycle or DEFAULT_EPOCHS_PER_CYCLE.get(task, 2)
    # The small adapters fix the target: MiMi ends at most at their parameter count, in MiMi's number of epochs.
    small = built_adapters(method, args.small_dim, labels)
    target = adapter_params(small)
    schedule = MiMiSchedule(rho=args.rho, epochs_per_cycle=per_cycle, target_params=target, balanced=args.balanced)
    epochs = MiMi(built_adapters(method, args.initial_dim, labels), schedule).total_epochs
    output_dir = work_dir / f"{task}-{method}-{variant}-seed{seed}"
    if variant == "small":
        config = run_config(method, task, seed, args, output_dir, args.small_dim, num_train_epochs=epochs)
        final, validation = train_recording(config)
        sizes, params, path = adapter_sizes(small, "default"), target, []
    else:
        mimi = {"mimi_target": str(target), "mimi_rho": args.rho, "mimi_epochs_per_cycle": per_cycle}
        config = run_config(method, task, seed, args, output_dir, args.initial_dim, mimi_balanced=args.balanced, **mimi)
        final, validation = train_recording(config)
        last = final["mimi"]["history"][-1]
        sizes, params, path = last["sizes"], last["adapter_params"], mimi_path(final, validation)
    name = f"{method}_{variant}" + ("_balanced" if variant == "mimi" and args.balanced else "")
    row = {
        "method": name,
        "task": task,
        "seed": seed,
        "top1": final["test_top1"],
        "val_top1": final["eval_top1"],
        "trainable_params": final["trainable_params"],
        "adapter_params": params,
        "adapter_bytes": final["adapter_bytes"],
        "target_adapter_params": target,
        "initial_dim": args.initial_dim if variant == "mimi" else args.small_dim,
        "epochs": epochs,
        "epochs_per_cycle": per_cycle,
        "sizes": sizes,
        "wall_s": round(time.perf_counter() - start, 1),
        "path": path,
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
                ys = [[r["path"][i]["val_top1"] for r in runs] for i in range(stages)]
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
                    [np.mean([r["val_top1"] for r in small])],
                    yerr=[np.std([r["val_top1"] for r in small])],
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
        ax.set_ylabel("validation top-1")
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
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as temporary:
        work_dir = Path(args.work_dir or temporary)
        for task in args.tasks:
            for seed in args.seeds:
                if time.perf_counter() - start > args.budget_s:
                    skipped.append({"task": task, "seed": seed})
                    continue
                for method in args.methods:
                    for variant in args.variants:
                        rows.append(run_one(method, variant, task, seed, args, work_dir))
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
