"""The dense-task benchmarks: every method x learning rate x seed on an offline scene task, for semantic segmentation
(UperNet), object detection (RT-DETR) and instance segmentation (Mask2Former), each around the shipped Swin.

The classification benchmark's protocol: each run is one call of the training core with the kind's recipe (AdamW,
the kind's weight decay, schedule with 10 % warm-up and gradient clipping; the same learning rate for the heads and
the method's parameters times the factors a method declares). The validation score (mean IoU, box AP or mask AP) is
recorded after every epoch (the curves); per method, the rate with the best mean final validation score over the
seeds is chosen, and its runs are the result. The test split is evaluated once per run and never chooses.

Runs append to ``<work_dir>/runs.jsonl`` as they finish, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import shutil
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..tasks.instance_segmentation.task import InstanceSegmentationTask
from ..tasks.object_detection.data import DETECTION_TASKS
from ..tasks.object_detection.task import ObjectDetectionTask
from ..tasks.semantic_segmentation.data import SEGMENTATION_TASKS
from ..tasks.semantic_segmentation.task import SemanticSegmentationTask
from ..training import RunConfig, train
from ..training.task import TrainingTask
from ..tuners.registry import methods
from .timing import environment

#: The methods of the dense benchmarks (what 2 CPU cores allow; the issues' lists minus BitFit and the rest).
DENSE_METHODS = ["full", "linear", "lora", "adapter", "adaptformer", "mona"]


@dataclass(frozen=True)
class BenchmarkKind:
    """What a dense benchmark trains and scores: the training task, its offline tasks, the score that chooses
    (a key of the task's ``evaluate``), the report's words, and the recipe every method gets."""

    title: str
    model: str
    make_task: type[TrainingTask]
    tasks: Mapping[str, Any]
    default_task: str
    score: str
    per_class: str
    label: str
    described: str
    per_class_label: str
    lr_grid: tuple[float, ...]
    weight_decay: float
    max_grad_norm: float
    lr_scheduler_type: str


KINDS: dict[str, BenchmarkKind] = {
    # 1e-3 is left out of segmentation's grid: full fine-tuning stayed at all-background for 300 steps there. 3e-2
    # and 1e-1 were added after most methods chose the top of the grid (benchmarks/segmentation/run.sh).
    "semantic-segmentation": BenchmarkKind(
        title="Semantic segmentation benchmark",
        model="UperNet (fresh decode and auxiliary heads)",
        make_task=SemanticSegmentationTask,
        tasks=SEGMENTATION_TASKS,
        default_task="digit-scenes",
        score="mean_iou",
        per_class="per_category_iou",
        label="mIoU",
        described="mean IoU (%) over background and the digit classes",
        per_class_label="per class (bg, digits)",
        lr_grid=(3e-3, 1e-2, 3e-2, 1e-1),
        weight_decay=0.01,
        max_grad_norm=5.0,
        lr_scheduler_type="polynomial",
    ),
    # RT-DETR's recipe (weight decay 1e-4, clipping 0.1), the default detector. The grid first stopped at 3e-3,
    # which every method chose; 1e-2 was added (Mona: validation box AP 0.07 at 1e-3, 0.25 at 3e-3).
    "object-detection": BenchmarkKind(
        title="Object detection benchmark",
        model="RT-DETR (fresh encoder, decoder and heads; 20 denoising queries)",
        make_task=ObjectDetectionTask,
        tasks=DETECTION_TASKS,
        default_task="digit-instances",
        score="map",
        per_class="map_per_class",
        label="box AP",
        described="COCO box AP (%, IoU 0.50:0.95, 100 detections per image)",
        per_class_label="per class (digits)",
        lr_grid=(1e-3, 3e-3, 1e-2),
        weight_decay=1e-4,
        max_grad_norm=0.1,
        lr_scheduler_type="cosine",
    ),
    "instance-segmentation": BenchmarkKind(
        title="Instance segmentation benchmark",
        model="Mask2Former (fresh pixel decoder, transformer decoder and heads)",
        make_task=InstanceSegmentationTask,
        tasks=DETECTION_TASKS,
        default_task="digit-instances",
        score="mask_map",
        per_class="mask_map_per_class",
        label="mask AP",
        described="COCO mask AP (%, IoU 0.50:0.95)",
        per_class_label="per class (digits)",
        lr_grid=(1e-3, 3e-3, 1e-2),
        weight_decay=0.05,
        max_grad_norm=0.1,
        lr_scheduler_type="cosine",
    ),
}
#: How the report names a schedule.
SCHEDULE_NAMES = {"polynomial": "poly", "cosine": "cosine", "linear": "linear"}


@dataclass
class DenseBenchmarkConfig:
    """What to run. Empty ``task`` and ``lr_grid`` take the kind's; ``num_train_epochs`` replaces the task's
    schedule length (a longer schedule, to see the curves level off); ``max_train_steps`` (quick runs) cuts it short."""

    kind: str = "semantic-segmentation"
    methods: list[str] = field(default_factory=lambda: list(DENSE_METHODS))
    task: str = ""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    lr_grid: list[float] = field(default_factory=list)
    workers: int = 2
    threads: int = 1
    warmup_fraction: float = 0.1
    max_train_steps: int | None = None
    num_train_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Unknown benchmark kind {self.kind!r}; available: {', '.join(KINDS)}.")
        kind = KINDS[self.kind]
        self.task = self.task or kind.default_task
        self.lr_grid = list(self.lr_grid or kind.lr_grid)
        unknown = [m for m in self.methods if m not in methods()]
        if unknown or self.task not in kind.tasks:
            raise ValueError(
                f"Unknown methods {unknown} or task {self.task!r}; methods: {sorted(methods())}, "
                f"{self.kind} tasks: {list(kind.tasks)}."
            )
        if not self.seeds:
            raise ValueError("Need at least one seed.")
        if self.num_train_epochs is not None and self.num_train_epochs < 1:
            raise ValueError(f"num_train_epochs must be at least 1, got {self.num_train_epochs}.")

    @property
    def epochs(self) -> int:
        return self.num_train_epochs or KINDS[self.kind].tasks[self.task].epochs

    @property
    def steps_per_epoch(self) -> int:
        task = KINDS[self.kind].tasks[self.task]
        if KINDS[self.kind].make_task.drop_last_train and task.sizes["train"] > task.batch_size:
            return task.sizes["train"] // task.batch_size
        return math.ceil(task.sizes["train"] / task.batch_size)

    @property
    def total_steps(self) -> int:
        return self.max_train_steps or self.epochs * self.steps_per_epoch


@dataclass(frozen=True)
class Job:
    method: str
    lr: float
    seed: int


def run_config(job: Job, config: DenseBenchmarkConfig, output_dir: Path) -> RunConfig:
    """The training run of ``job`` (the same recipe for every method)."""
    kind = KINDS[config.kind]
    task = kind.tasks[config.task]
    return RunConfig(
        task=config.task,
        method=job.method,
        output_dir=str(output_dir),
        overwrite_output_dir=True,
        report_to="none",
        checkpointing_steps="no",
        eval_strategy="epoch",
        num_train_epochs=config.epochs,
        max_train_steps=config.max_train_steps,
        per_device_train_batch_size=task.batch_size,
        per_device_eval_batch_size=100,
        learning_rate=job.lr,
        adapter_lr_scale=1.0,
        weight_decay=kind.weight_decay,
        max_grad_norm=kind.max_grad_norm,
        lr_scheduler_type=kind.lr_scheduler_type,
        num_warmup_steps=max(1, round(config.warmup_fraction * config.total_steps)),
        seed=job.seed,
    )


def run_job(job: Job, config: DenseBenchmarkConfig, work_dir: Path) -> dict:
    """Train ``job``; returns its row: final validation and test scores, the validation curve, sizes, speed."""
    kind = KINDS[config.kind]
    started = time.perf_counter()
    output_dir = work_dir / job.method / f"lr{job.lr:g}" / f"seed{job.seed}"
    task = kind.make_task()
    evaluations = []  # every evaluation's scores: the validation after each epoch, then the test
    evaluate = task.evaluate
    task.evaluate = lambda *args: evaluations.append(evaluate(*args)) or evaluations[-1]
    final = train(run_config(job, config, output_dir), task)
    *validation, test = evaluations  # the task has a test split: evaluated once, last
    steps = [min((epoch + 1) * config.steps_per_epoch, config.total_steps) for epoch in range(len(validation))]
    row = {
        **asdict(job),
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
        "run_wall_s": round(time.perf_counter() - started, 1),
    }
    shutil.rmtree(output_dir, ignore_errors=True)
    return row


_WORKER: dict = {}


def _init_worker(config: DenseBenchmarkConfig, work_dir: str) -> None:
    torch.set_num_threads(config.threads)
    import mona_peft  # noqa: F401  (registers the PEFT methods in a spawned process)

    _WORKER.update(config=config, work_dir=Path(work_dir))


def _worker_run(job: Job) -> dict:
    return run_job(job, _WORKER["config"], _WORKER["work_dir"])


def pending_jobs(config: DenseBenchmarkConfig, done: list[dict]) -> list[Job]:
    """Jobs not in ``done``, seed by seed, so that an interrupted benchmark has whole seeds of every method."""
    finished = {(row["method"], row["lr"], row["seed"]) for row in done}
    jobs = [Job(m, lr, s) for s in config.seeds for m in config.methods for lr in config.lr_grid]
    return [job for job in jobs if (job.method, job.lr, job.seed) not in finished]


def run_jobs(jobs: list[Job], config: DenseBenchmarkConfig, work_dir: Path) -> Iterable[dict]:
    """Rows of ``jobs``, in ``config.workers`` spawned processes of ``config.threads`` threads each."""
    if config.workers <= 1:
        _init_worker(config, str(work_dir))
        yield from map(_worker_run, jobs)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(config.workers, initializer=_init_worker, initargs=(config, str(work_dir))) as pool:
        yield from pool.imap_unordered(_worker_run, jobs)


def choose_learning_rates(rows: list[dict], config: DenseBenchmarkConfig) -> dict[str, dict]:
    """Per method: mean final validation score of each rate, and the rate with the best one. The rates are compared
    on the seeds they all ran (every seed, once the grid is complete), so that more seeds at one rate, run after the
    choice, do not change it."""
    chosen = {}
    for method in config.methods:
        by_lr = {
            lr: {r["seed"]: r["val_score"] for r in rows if r["method"] == method and r["lr"] == lr}
            for lr in config.lr_grid
        }
        ran = [scores for scores in by_lr.values() if scores]
        common = set.intersection(*(set(scores) for scores in ran)) if ran else set()
        means = {lr: statistics.fmean(scores[s] for s in common) for lr, scores in by_lr.items() if scores and common}
        if means:
            chosen[method] = {"val_score_by_lr": {f"{lr:g}": m for lr, m in means.items()}}
            chosen[method]["chosen_lr"] = max(means, key=means.get)
            chosen[method]["choice_seeds"] = sorted(common)
    return chosen


def run_dense_benchmark(
    config: DenseBenchmarkConfig, work_dir: str | Path, log=print, report_only: bool = False
) -> dict:
    """Run every pending job (resuming ``work_dir/runs.jsonl``), choose rates on validation; returns the results.
    ``report_only``: train nothing, report the runs done (seeds run at a chosen rate only, for instance)."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    runs = work_dir / "runs.jsonl"
    rows = [json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else []
    jobs = [] if report_only else pending_jobs(config, rows)
    other_schedule = sorted({row["curve"][-1]["step"] for row in rows} - {config.total_steps})
    if jobs and other_schedule:
        raise ValueError(
            f"{runs} holds runs of {other_schedule} steps; this benchmark trains {config.total_steps} "
            "(another schedule length). Give it its own --work_dir."
        )
    log(f"{len(rows)} runs done, {len(jobs)} to go")
    with runs.open("a") as sink:
        for row in run_jobs(jobs, config, work_dir):
            rows.append(row)
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            job = f"{row['method']} lr {row['lr']:g} seed {row['seed']}"
            log(f"{job}: val {KINDS[config.kind].label} {row['val_score']:.3f} ({row['run_wall_s']} s)")
    return {
        "config": asdict(config) | {"steps_per_epoch": config.steps_per_epoch, "total_steps": config.total_steps},
        "task": asdict(KINDS[config.kind].tasks[config.task]),
        "environment": environment(),
        "learning_rates": choose_learning_rates(rows, config),
        "rows": rows,
    }


# ------------------------------------------------------------------------------------------------- report


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


def markdown(results: dict) -> str:
    """The report: the test score per method at its chosen rate, the grid on validation, the curves as numbers."""
    from .report import _pm, _size

    config, task = results["config"], results["task"]
    kind = KINDS[config["kind"]]
    label = kind.label
    present = [m for m in config["methods"] if _chosen_rows(results, m)]
    # The steps the rows ran (their curves end there), not today's config: an older work dir reports what it ran.
    steps_run = max(point["step"] for row in results["rows"] for point in row["curve"])
    epochs = config.get("num_train_epochs") or task["epochs"]
    # Linear probing trains the heads only; without its rows the backbone's share is not known here.
    head_params = _chosen_rows(results, "linear")[0]["trainable_params"] if "linear" in present else None
    choice_seeds = sorted({tuple(results["learning_rates"][m].get("choice_seeds", config["seeds"])) for m in present})
    seeds_words = "; ".join(", ".join(map(str, seeds)) for seeds in choice_seeds)
    lines = [
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
    grid = config["lr_grid"]
    lines += [
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
    lines += ["", f"## Validation curves at the chosen rates (mean {label} % over seeds)", ""]
    steps = _mean_curve(_chosen_rows(results, present[0]))[0]
    # Whether a curve has levelled off: its change over the last quarter of the evaluations.
    tail = max(1, len(steps) // 4)
    header = " | ".join(f"step {s}" for s in steps) + (f" | change, last {tail} epoch(s)" if len(steps) > tail else "")
    lines += [f"| method | {header} |", "|---|" + "---:|" * (len(steps) + (len(steps) > tail))]
    for method in present:
        _, curve = _mean_curve(_chosen_rows(results, method))
        change = [f"{100 * (curve[-1] - curve[-1 - tail]):+.1f}"] if len(curve) > tail else []
        lines.append(f"| {method} | " + " | ".join([f"{100 * v:.1f}" for v in curve] + change) + " |")
    env = results["environment"]
    lines += [
        "",
        f"Run on {env['device_name']} ({env['cpu_count']} cores) with {config['workers']} worker process(es) of "
        f"{config['threads']} thread(s); command: `{results.get('command', 'scripts/benchmark_dense.py')}`.",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict, path: str | Path) -> None:
    """Left: the test score vs trainable parameters (log scale). Right: validation curves at the chosen rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import plot_method_point

    config = results["config"]
    kind = KINDS[config["kind"]]
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


def write_results(results: dict, output_dir: str | Path) -> None:
    """``results.json``, ``results.md`` and ``results.png`` in ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "results.md").write_text(markdown(results))
    plot(results, output_dir / "results.png")
