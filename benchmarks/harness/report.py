"""``results.md`` and ``results.png`` from a benchmark's ``results.json``, for every kind: classification's
accuracy, rate and cost tables; the dense kinds' scores, grid and validation curves."""

from __future__ import annotations

import statistics
from pathlib import Path

from .kinds import SCHEDULE_NAMES, kind_of


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
    """The report of a results file, for any kind (:data:`harness.kinds.KINDS`)."""
    if kind_of(results).several_tasks:
        return classification_markdown(results)
    return dense_markdown(results)


def classification_markdown(results: dict) -> str:
    """The classification report: accuracy table, chosen learning rates, costs, and how it was run."""
    config = results["config"]
    seeds = len(config["seeds"])
    lines = [
        "# Downstream benchmark",
        "",
        f"Backbone: the shipped `{config['backbone']}` pretrained on Fashion-MNIST. Test top-1 (%), mean ± sample std "
        f"over {seeds} seed(s) (training seeds; the task splits are fixed, task seed {config['task_seed']}). "
        f"Learning rate chosen per method and task from a {len(config['lr_grid'])}-value grid by the mean "
        "validation top-1 over the seeds (below); the test split never chooses.",
        "",
    ]
    lines += _accuracy_table(results) + _rates_table(results) + _costs_table(results) + _run_notes(results)
    return "\n".join(lines)


def _accuracy_table(results: dict) -> list[str]:
    methods, tasks = results["config"]["methods"], results["config"]["tasks"]
    cells = _cells(results)
    lines = [
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
    return lines


def _rates_table(results: dict) -> list[str]:
    methods, tasks = results["config"]["methods"], results["config"]["tasks"]
    lines = [
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
    return lines


def _costs_table(results: dict) -> list[str]:
    methods, tasks = results["config"]["methods"], results["config"]["tasks"]
    cells = _cells(results)
    lines = [
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
    return lines


def _run_notes(results: dict) -> list[str]:
    """The recipe, what the cost columns measure, and the command, machine and versions."""
    config, env = results["config"], results["environment"]
    schedules = "; ".join(
        f"{t}: {s['epochs']} epochs, batch {s['batch_size']}" for t, s in results["schedules"].items()
    )
    # resumed runs give the contention of each invocation instead
    busy = (env.get("cpu_share_used_elsewhere") or {}) if len(results.get("invocations") or []) <= 1 else {}
    return [
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


def plot_method_point(axis, method: str, trainable_params: int, scores: list[float], color) -> None:
    """One method on a score-vs-trainable-parameters axis: mean with a std error bar, labelled (Mona as a star)."""
    mean, std = mean_std(scores)
    style = {"marker": "*", "markersize": 14} if method == "mona" else {"marker": "o", "markersize": 7}
    axis.errorbar(trainable_params, mean, yerr=std or 0.0, capsize=3, color=color, label=method, **style)
    axis.annotate(method, (trainable_params, mean), textcoords="offset points", xytext=(5, 4), fontsize=8)


def plot(results: dict, path: str | Path) -> None:
    """The figure of a results file, for any kind."""
    (classification_plot if kind_of(results).several_tasks else dense_plot)(results, path)


def classification_plot(results: dict, path: str | Path) -> None:
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


# ------------------------------------------------------------------------------------------------- dense kinds


def _chosen_rows(results: dict, method: str) -> list[dict]:
    chosen = results["learning_rates"].get(method, {}).get("chosen_lr")
    return [r for r in results["rows"] if r["method"] == method and r["lr"] == chosen]


def _mean_curve(rows: list[dict]) -> tuple[list[int], list[float]]:
    """Validation score after each epoch, averaged over the seeds that reached it."""
    by_step: dict[int, list[float]] = {}
    for row in rows:
        for point in row["curve"]:
            by_step.setdefault(point["step"], []).append(point["val_score"])
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[s]) for s in steps]


def dense_markdown(results: dict) -> str:
    """The dense report: the test score per method at its chosen rate, the grid on validation, the curves as
    numbers."""
    config = results["config"]
    present = [m for m in config["methods"] if _chosen_rows(results, m)]
    lines = _dense_intro(results, present) + _dense_scores_table(results, present)
    lines += _dense_grid_table(results, present) + _dense_curves_table(results, present)
    env = results["environment"]
    lines += [
        "",
        f"Run on {env['device_name']} ({env['cpu_count']} cores) with {config['workers']} worker process(es) of "
        f"{config['threads']} thread(s); command: `{results.get('command', 'scripts/benchmark_dense.py')}`.",
        "",
    ]
    return "\n".join(lines)


def _dense_intro(results: dict, present: list[str]) -> list[str]:
    config, task = results["config"], results["task"]
    kind = kind_of(results)
    label = kind.label
    # The steps the rows ran (their curves end there), not today's config: an older work dir reports what it ran.
    steps_run = max(point["step"] for row in results["rows"] for point in row["curve"])
    epochs = config.get("num_train_epochs") or task["epochs"]
    choice_seeds = sorted({tuple(results["learning_rates"][m].get("choice_seeds", config["seeds"])) for m in present})
    seeds_words = "; ".join(", ".join(map(str, seeds)) for seeds in choice_seeds)
    return [
        f"# {kind.title}",
        "",
        f"{kind.model} around the shipped Swin pretrained on Fashion-MNIST, on the offline `{config['task']}` task "
        f"({task['description']}). Test {kind.described}, mean ± sample std over the seeds at each method's chosen "
        f"rate. Rates from the grid {', '.join(f'{lr:g}' for lr in config['lr_grid'])}, chosen per method on the mean "
        f"final validation {label} over the seeds every rate ran ({seeds_words}); the test split never chooses. "
        f"{steps_run} steps of batch {task['batch_size']} ({epochs} epochs), AdamW (weight decay "
        f"{kind.weight_decay:g}), "
        f"{SCHEDULE_NAMES[kind.lr_scheduler_type]} schedule with {100 * config['warmup_fraction']:.0f} % warm-up, "
        f"clipping {kind.max_grad_norm:g}, the same rate for heads and method parameters (times Mona's declared 0.1 "
        "on its projections).",
        "",
    ]


def _dense_scores_table(results: dict, present: list[str]) -> list[str]:
    kind = kind_of(results)
    label = kind.label
    # Linear probing trains the heads only; without its rows the backbone's share is not known here.
    head_params = _chosen_rows(results, "linear")[0]["trainable_params"] if "linear" in present else None
    lines = [
        f"| method | seeds | chosen lr | trainable params | in the backbone | weights file | test {label} | "
        f"{kind.per_class_label} | val {label} |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for method in present:
        rows = _chosen_rows(results, method)
        per_class = [statistics.fmean(c) for c in zip(*(r["test_per_class"] for r in rows), strict=True)]
        lines.append(
            f"| {method} | {len(rows)} | {rows[0]['lr']:g} | {rows[0]['trainable_params']:,} | "
            f"{'-' if head_params is None else format(rows[0]['trainable_params'] - head_params, ',')} | "
            f"{_size(rows[0]['weights_bytes'])} | "
            f"{_pm([r['test_score'] for r in rows], 100)} | {', '.join(f'{100 * v:.0f}' for v in per_class)} | "
            f"{_pm([r['val_score'] for r in rows], 100)} |"
        )
    return lines


def _dense_grid_table(results: dict, present: list[str]) -> list[str]:
    label, grid = kind_of(results).label, results["config"]["lr_grid"]
    lines = [
        "",
        '"In the backbone": trainable parameters beyond the heads (what linear probing trains). Full fine-tuning '
        "and linear probing save the whole model.",
        "",
        f"## Learning-rate grid (mean final validation {label} %, over the seeds every rate ran)",
        "",
        "| method | " + " | ".join(f"{lr:g}" for lr in grid) + " |",
        "|---|" + "---:|" * len(grid),
    ]
    for method in present:
        by_lr = results["learning_rates"][method]["val_score_by_lr"]
        cells = [f"{100 * by_lr[f'{lr:g}']:.1f}" if f"{lr:g}" in by_lr else "-" for lr in grid]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _dense_curves_table(results: dict, present: list[str]) -> list[str]:
    label = kind_of(results).label
    lines = ["", f"## Validation curves at the chosen rates (mean {label} % over seeds)", ""]
    steps = _mean_curve(_chosen_rows(results, present[0]))[0]
    # Whether a curve has levelled off: its change over the last quarter of the evaluations.
    tail = max(1, len(steps) // 4)
    header = " | ".join(f"step {s}" for s in steps) + (f" | change, last {tail} epoch(s)" if len(steps) > tail else "")
    lines += [f"| method | {header} |", "|---|" + "---:|" * (len(steps) + (len(steps) > tail))]
    for method in present:
        _, curve = _mean_curve(_chosen_rows(results, method))
        change = [f"{100 * (curve[-1] - curve[-1 - tail]):+.1f}"] if len(curve) > tail else []
        lines.append(f"| {method} | " + " | ".join([f"{100 * v:.1f}" for v in curve] + change) + " |")
    return lines


def dense_plot(results: dict, path: str | Path) -> None:
    """Left: the test score vs trainable parameters (log scale). Right: validation curves at the chosen rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = results["config"]
    kind = kind_of(results)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    colors = plt.get_cmap("tab10")
    for index, method in enumerate(config["methods"]):
        rows = _chosen_rows(results, method)
        if not rows:
            continue
        scores = [100 * r["test_score"] for r in rows]
        plot_method_point(left, method, rows[0]["trainable_params"], scores, colors(index))
        steps, curve = _mean_curve(rows)
        right.plot(
            steps, [100 * v for v in curve], marker="o", color=colors(index), label=f"{method} ({rows[0]['lr']:g})"
        )
    left.set_xscale("log")
    left.set_xlabel("trainable parameters (log scale, heads included)")
    left.set_ylabel(f"test {kind.label} (%)")
    right.set_xlabel("training step")
    right.set_ylabel(f"validation {kind.label} (%)")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
    model = kind.model.split(" (")[0]
    figure.suptitle(f"{model} on the shipped Swin, {config['task']} (mean over the seeds each method ran)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
