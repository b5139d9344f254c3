"""``results.md`` and the accuracy-vs-trainable-parameters plot from a benchmark's ``results.json``."""

from __future__ import annotations

import statistics
from pathlib import Path


def _cells(results: dict) -> dict[tuple[str, str], list[dict]]:
    cells: dict[tuple[str, str], list[dict]] = {}
    for row in results["rows"]:
        cells.setdefault((row["method"], row["task"]), []).append(row)
    return cells


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _pm(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 1e3:.0f} kB" if num_bytes < 1e6 else f"{num_bytes / 1e6:.2f} MB"


def summary(results: dict) -> dict[str, dict[str, dict]]:
    """Per method and task: test top-1 mean and std (fractions), seeds, chosen learning rate."""
    out: dict[str, dict[str, dict]] = {}
    for (method, task), rows in _cells(results).items():
        mean, std = mean_std([r["top1"] for r in rows])
        out.setdefault(method, {})[task] = {
            "top1_mean": mean,
            "top1_std": std,
            "seeds": len(rows),
            "lr": results["learning_rates"][method][task]["chosen_lr"],
        }
    return out


def markdown(results: dict) -> str:
    """The report: accuracy table, chosen learning rates, costs, and how it was run."""
    config = results["config"]
    methods, tasks = config["methods"], config["tasks"]
    cells = _cells(results)
    seeds = len(config["seeds"])
    env = results["environment"]
    lines = [
        "# Downstream benchmark",
        "",
        f"Backbone: the shipped `{config['backbone']}` pretrained on Fashion-MNIST. Test top-1 (%), mean ± sample std "
        f"over {seeds} seed(s) (training seeds; the task splits are fixed, task seed {config['task_seed']}). "
        f"Learning rate chosen per method and task from a {len(config['lr_grid'])}-value grid by the mean "
        "validation top-1 over the seeds (below); the test split never chooses.",
        "",
        "| method | trainable params | trainable % | " + " | ".join(tasks) + " | mean |",
        "|---|---:|---:|" + "---:|" * len(tasks) + "---:|",
    ]
    for method in methods:
        rows = [r for t in tasks for r in cells.get((method, t), [])]
        if not rows:
            continue
        per_task = [_pm([r["top1"] for r in cells[(method, t)]], 100) for t in tasks]
        task_means = [statistics.fmean(r["top1"] for r in cells[(method, t)]) for t in tasks]
        lines.append(
            f"| {method} | {rows[0]['trainable_params']:,} | {rows[0]['trainable_percent']:.2f} | "
            + " | ".join(per_task)
            + f" | {100 * statistics.fmean(task_means):.1f} |"
        )
    lines += [
        "",
        "## Chosen learning rates (mean validation top-1 % over the seeds at each grid value)",
        "",
        "| method | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for method in methods:
        entries = []
        for task in tasks:
            choice = results["learning_rates"][method][task]
            grid = ", ".join(f"{float(lr):g}: {100 * v:.1f}" for lr, v in choice["mean_validation_top1"].items())
            entries.append(f"**{choice['chosen_lr']:g}** ({grid})")
        lines.append(f"| {method} | " + " | ".join(entries) + " |")
    lines += [
        "",
        "## Costs (mean ± std over every task and seed)",
        "",
        "| method | saved trainable state | train images/s | peak train memory (MB) | latency / bare backbone |",
        "|---|---:|---:|---:|---:|",
    ]
    for method in methods:
        rows = [r for t in tasks for r in cells.get((method, t), [])]
        if not rows:
            continue
        memory = [r["peak_memory_bytes"] for r in rows if r["peak_memory_bytes"] is not None]
        lines.append(
            f"| {method} | {_size(statistics.fmean(r['adapter_bytes'] for r in rows))} | "
            f"{_pm([r['train_images_per_s'] for r in rows], digits=0)} | "
            f"{_pm(memory, 1e-6, 1) if memory else 'n/a'} | {_pm([r['infer_latency_ratio'] for r in rows], digits=2)} |"
        )
    schedules = "; ".join(
        f"{t}: {s['epochs']} epochs, batch {s['batch_size']}" for t, s in results["schedules"].items()
    )
    # resumed runs give the contention of each invocation instead
    busy = (env.get("cpu_share_used_elsewhere") or {}) if len(results.get("invocations") or []) <= 1 else {}
    lines += [
        "",
        f"Schedules (every method alike): {schedules}; AdamW, weight decay {config['weight_decay']}, gradient clipping "
        f"{config['max_grad_norm']}, {100 * config['warmup_fraction']:.0f}% linear warm-up then cosine, one learning "
        "rate for head and method parameters (times a method's declared factors: Mona's projections 0.1)"
        + (f", at most {config['max_train_steps']} steps (quick run)" if config.get("max_train_steps") else "")
        + ".",
        "Saved trainable state: the adapter file (`adapter_model.safetensors`, head included) of PEFT methods, the "
        "trained tensors of `full`/`linear`/`bitfit`/`partial1`. Train images/s: the training loop of the training "
        f"script (data loading included), {config['workers']} worker process(es) with {config['threads']} torch "
        "thread(s) each. Peak train memory: " + results["peak_memory_definition"] + ". Inference latency: the trained "
        f"model reloaded from its files vs the bare pretrained backbone, batch {config['latency_batch']} of test "
        f"images, {config['latency_repeats']} interleaved repetitions, ratio of medians.",
        "",
        f"Command: `{results['command']}`; wall time {results['wall_time_s']:.0f} s{_invocations(results)} on "
        f"{env['device_name']} "
        f"({env['cpu_count']} CPUs), torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
        f"git {env['git']}"
        + (
            f"; other processes used {100 * busy['other_processes']:.0f}% of the CPU time during the run"
            if busy
            else ""
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


def plot_method_point(axis, method: str, trainable_params: int, scores: list[float], color) -> None:
    """One method on a score-vs-trainable-parameters axis: mean with a std error bar, labelled (Mona as a star)."""
    mean, std = mean_std(scores)
    style = {"marker": "*", "markersize": 14} if method == "mona" else {"marker": "o", "markersize": 7}
    axis.errorbar(trainable_params, mean, yerr=std or 0.0, capsize=3, color=color, label=method, **style)
    axis.annotate(method, (trainable_params, mean), textcoords="offset points", xytext=(5, 4), fontsize=8)


def plot(results: dict, path: str | Path) -> None:
    """Test top-1 vs trainable parameters (log scale), one panel per task, one point per method, std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = results["config"]
    tasks, methods = config["tasks"], config["methods"]
    cells = _cells(results)
    figure, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.4), squeeze=False)
    colors = plt.get_cmap("tab20")
    for axis, task in zip(axes[0], tasks, strict=True):
        for index, method in enumerate(methods):
            rows = cells.get((method, task))
            if not rows:
                continue
            plot_method_point(axis, method, rows[0]["trainable_params"], [100 * r["top1"] for r in rows], colors(index))
        axis.set_xscale("log")
        axis.set_xlabel("trainable parameters (log scale, head included)")
        axis.set_ylabel("test top-1 (%)")
        axis.set_title(task)
        axis.grid(True, alpha=0.3)
    seeds = len(config["seeds"])
    figure.suptitle(f"Fine-tuning methods on the shipped {config['backbone']} (mean ± std over {seeds} seed(s))")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _invocations(results: dict) -> str:
    """How the wall time splits when the run was resumed (several invocations on one work dir)."""
    invocations = results.get("invocations") or []
    if len(invocations) <= 1:
        return ""
    parts = []
    for invocation in invocations:
        part = f"{invocation['wall_time_s']:.0f} s for {invocation['runs']} runs"
        if busy := invocation.get("cpu_share_used_elsewhere"):
            part += f" ({100 * busy['other_processes']:.0f}% of the CPU used elsewhere)"
        parts.append(part)
    return f" over {len(invocations)} invocations on the same work dir ({'; '.join(parts)})"
