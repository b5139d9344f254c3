"""The downstream benchmark: every method x task x seed on the shipped pretrained backbone, one recipe for all.

Each run is one call of the training core (:func:`mona_peft.training.train` with a ``RunConfig`` of ``task=...``) with
the task's fixed schedule (epochs, batch size, 10 % linear warm-up then cosine, AdamW, weight decay 0.05, gradient
clipping 5, the same learning rate for the head and the method's parameters, times the factors a method declares
(``MethodSpec.lr_scales``: Mona's projections at 0.1)). Every method runs every value of one
learning-rate grid with every seed; per method and task the rate with the best mean validation top-1 over the seeds
is chosen, and its runs are the result. Choosing on one seed picked rates where some seeds diverge (Mona at 1e-2:
50 +- 16 % on digits); the mean over seeds penalises that. The test split is evaluated once per run and never used
to choose.

Per run it records: test top-1, trainable parameters, the size of the saved trainable state (adapter file, or the
trained tensors of a non-PEFT method), training throughput (images per second of the training loop), peak training
memory (weights + optimizer state + the peak resident-size increase of one training step, see
:mod:`mona_peft.benchmarking.timing`), and the inference latency of the trained model (reloaded from its saved
files) over the bare pretrained backbone, interleaved on the same batch in the same process.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data import TASKS, load_task
from ..tasks.image_classification import ImageClassificationTask
from ..training import RunConfig, train
from ..tuners.registry import get_method, methods
from .timing import PeakRSS, contention, cpu_snapshot, environment, model_state_bytes, summarize, timed_pair

#: One learning-rate grid for every method, wide enough that each method's best rate lies inside it: full
#: fine-tuning peaks at 1e-3 to 3e-3, and with 3e-2 as the top, seven of the lighter methods chose that edge.
LR_GRID = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


PEAK_MEMORY_DEFINITION = (
    "weights + buffers + AdamW state + the peak increase of this process's resident set size (Linux VmHWM, reset "
    "through /proc/self/clear_refs after malloc_trim) during one training step (forward, backward, optimizer step) "
    "at the task's batch size, after a warm-up step; not tracemalloc, which does not see PyTorch's allocations"
)


@dataclass
class BenchmarkConfig:
    """What to run. ``max_train_steps`` (quick runs) overrides the tasks' epochs."""

    methods: list[str] = field(default_factory=lambda: list(methods()))
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    lr_grid: list[float] = field(default_factory=lambda: list(LR_GRID))
    backbone: str = "swin"
    task_seed: int = 0
    workers: int = 2
    threads: int = 1
    warmup_fraction: float = 0.1
    weight_decay: float = 0.05
    max_grad_norm: float = 5.0
    max_train_steps: int | None = None
    latency_batch: int = 32
    latency_warmup: int = 1
    latency_repeats: int = 5
    work_dir: str | None = None

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in methods()] + [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"Unknown methods or tasks {unknown}; methods: {sorted(methods())}, tasks: {list(TASKS)}.")
        if not self.seeds or not self.lr_grid:
            raise ValueError("Need at least one seed and one learning rate.")


@dataclass(frozen=True)
class Job:
    method: str
    task: str
    lr: float
    seed: int


# ------------------------------------------------------------------------------------------------- one run


def _backbone_path(config: BenchmarkConfig) -> str:
    from ..backbones import backbone_path

    return str(backbone_path(config.backbone))


def training_config(job: Job, config: BenchmarkConfig, output_dir: Path) -> RunConfig:
    """The training run of ``job`` (the same recipe for every method)."""
    task = TASKS[job.task]
    train_size = len(load_task(job.task, config.task_seed)["train"])
    steps = config.max_train_steps or task.epochs * math.ceil(train_size / task.batch_size)
    return RunConfig(
        model_name_or_path=_backbone_path(config),
        task=job.task,
        task_seed=config.task_seed,
        method=job.method,
        output_dir=str(output_dir),
        overwrite_output_dir=True,
        report_to="none",
        checkpointing_steps="no",
        eval_strategy="end",
        num_train_epochs=task.epochs,
        max_train_steps=config.max_train_steps,
        per_device_train_batch_size=task.batch_size,
        per_device_eval_batch_size=100,
        learning_rate=job.lr,
        adapter_lr_scale=1.0,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        lr_scheduler_type="cosine",
        num_warmup_steps=max(1, round(config.warmup_fraction * steps)),
        seed=job.seed,
    )


def _reload(job: Job, output_dir: Path, backbone: str, num_labels: int) -> torch.nn.Module:
    """The trained model from the run's saved files, with the method's trainable parameters marked again."""
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    from ..tuners.methods import build_method

    if get_method(job.method).saves_whole_model:
        model = AutoModelForImageClassification.from_pretrained(output_dir)
        return build_method(model, job.method, ["classifier"])
    base = AutoModelForImageClassification.from_pretrained(
        backbone, num_labels=num_labels, ignore_mismatched_sizes=True
    )
    return PeftModel.from_pretrained(base, output_dir, is_trainable=True)


def _pixel_batch(task: str, config: BenchmarkConfig, size: int, split: str = "test") -> tuple[torch.Tensor, ...]:
    from transformers import AutoImageProcessor

    from ..tasks.image_classification.data import image_transform

    data = load_task(task, config.task_seed)[split]
    batch = data.select(range(min(size, len(data))))[:]
    encoded = image_transform(AutoImageProcessor.from_pretrained(_backbone_path(config)))(batch)
    return encoded["pixel_values"], encoded["labels"]


def run_job(job: Job, config: BenchmarkConfig, work_dir: Path) -> dict:
    """Train ``job`` with the training core, then measure the trained model; returns the result row."""
    from ..tuners.methods import save_trainable

    started = time.perf_counter()
    output_dir = work_dir / job.task / job.method / f"lr{job.lr:g}" / f"seed{job.seed}"
    final = train(training_config(job, config, output_dir), ImageClassificationTask())
    model = _reload(job, output_dir, _backbone_path(config), _num_labels(job.task, config))
    if get_method(job.method).saves_whole_model:  # what a checkpoint of this method holds: its trained tensors only
        adapter_file = save_trainable(model, output_dir / "trainable")
    else:
        adapter_file = output_dir / "adapter_model.safetensors"
    latency = inference_latency(model, job, config)
    trainable, total = final["trainable_params"], final["total_params"]
    row = {
        "method": job.method,
        "task": job.task,
        "seed": job.seed,
        "lr": job.lr,
        "top1": final["test_top1"],
        "val_top1": final["eval_top1"],
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
        "run_wall_s": round(time.perf_counter() - started, 2),
    }
    shutil.rmtree(output_dir, ignore_errors=True)
    return row


def inference_latency(model: torch.nn.Module, job: Job, config: BenchmarkConfig) -> dict[str, float]:
    """The trained model vs the bare pretrained backbone (same head size): same batch, interleaved, eval mode."""
    from transformers import AutoModelForImageClassification

    bare = AutoModelForImageClassification.from_pretrained(
        _backbone_path(config), num_labels=_num_labels(job.task, config), ignore_mismatched_sizes=True
    )
    pixels, _ = _pixel_batch(job.task, config, config.latency_batch)
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
    from ..tuners.methods import adamw

    pixels, labels = _pixel_batch(job.task, config, TASKS[job.task].batch_size, split="train")
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


# ------------------------------------------------------------------------------------------------- workers

_WORKER: dict = {}


def _init_worker(config: BenchmarkConfig, work_dir: str, quiet: bool = False) -> None:
    if quiet:  # a spawned worker: its training logs go to <work_dir>/worker-<pid>.log
        log = open(Path(work_dir) / f"worker-{os.getpid()}.log", "a", buffering=1)  # noqa: SIM115
        sys.stdout = sys.stderr = log
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    torch.set_num_threads(config.threads)
    import mona_peft  # noqa: F401  (registers the PEFT methods in a spawned process)

    for task in config.tasks:
        load_task(task, config.task_seed)
    _WORKER.update(config=config, work_dir=Path(work_dir))


def _worker_run(job: Job) -> dict:
    return run_job(job, _WORKER["config"], _WORKER["work_dir"])


def run_jobs(jobs: list[Job], config: BenchmarkConfig, work_dir: Path, log=print) -> Iterable[dict]:
    """Run ``jobs`` (in ``config.workers`` spawned processes, or in this one for 1 worker); yields rows as they end."""
    if config.workers <= 1:
        threads = torch.get_num_threads()
        _init_worker(config, str(work_dir))
        try:
            for job in jobs:
                yield _worker_run(job)
        finally:
            torch.set_num_threads(threads)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(config.workers, initializer=_init_worker, initargs=(config, str(work_dir), True)) as pool:
        yield from pool.imap_unordered(_worker_run, jobs)


# ------------------------------------------------------------------------------------------------- the benchmark

#: Rough relative cost of a run per method (slowest first keeps the worker pool busy to the end).
_COST_ORDER = ["mona", "full", "partial1", "vpt_deep", "adapter", "adaptformer", "vpt_shallow", "lora"]


def _cost_rank(job: Job) -> tuple[int, str, str]:
    rank = _COST_ORDER.index(job.method) if job.method in _COST_ORDER else len(_COST_ORDER)
    return rank, job.task, job.method


def choose_learning_rates(rows: list[dict], config: BenchmarkConfig) -> dict[str, dict[str, dict]]:
    """Per method and task: mean validation top-1 over the seeds of each grid value, and the best (ties: lowest)."""
    chosen: dict[str, dict[str, dict]] = {}
    for method in config.methods:
        for task in config.tasks:
            grid = {}
            for lr in config.lr_grid:
                scores = [r["val_top1"] for r in rows if (r["method"], r["task"], r["lr"]) == (method, task, lr)]
                if len(scores) != len(config.seeds):
                    raise ValueError(f"{method} on {task} at lr {lr:g}: {len(scores)} runs, expected one per seed.")
                grid[repr(lr)] = sum(scores) / len(scores)
            best = max(config.lr_grid, key=lambda lr: (grid[repr(lr)], -config.lr_grid.index(lr)))
            chosen.setdefault(method, {})[task] = {"mean_validation_top1": grid, "chosen_lr": best}
    return chosen


def run_benchmark(
    config: BenchmarkConfig,
    output_dir: str | Path,
    command: str,
    plot: bool = True,
    log=print,
) -> dict:
    """Run the whole benchmark and write ``results.json``, ``results.md`` and ``results.png`` to ``output_dir``.

    Rows finished so far are appended to ``<work_dir>/rows.jsonl``; running again with the same ``work_dir``
    skips them (resume after an interruption, or a grid extended by more rates). Each invocation appends its wall
    time, run count and CPU contention to ``<work_dir>/invocations.jsonl`` (when it ran anything); the report sums
    them.
    """
    work_dir = Path(config.work_dir) if config.work_dir else Path(tempfile.mkdtemp(prefix="mona-peft-benchmark-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    rows_file = work_dir / "rows.jsonl"
    done = {_job_of(row): row for row in _read_jsonl(rows_file)}
    env = environment("cpu") | {"workers": config.workers, "torch_threads_per_worker": config.threads}
    started = time.perf_counter()
    cpu_start = cpu_snapshot()

    search = [
        Job(m, t, lr, seed)
        for t in config.tasks
        for m in config.methods
        for lr in config.lr_grid
        for seed in config.seeds
    ]
    todo = sorted((job for job in search if job not in done), key=_cost_rank)
    log(f"{len(todo)} runs ({len(search) - len(todo)} already done)")
    for row in run_jobs(todo, config, work_dir):
        done[_job_of(row)] = row
        with rows_file.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        log(
            f"[{time.perf_counter() - started:7.0f}s] {row['task']:<15} {row['method']:<12} lr {row['lr']:<7g} seed "
            f"{row['seed']}: val {row['val_top1']:.3f} test {row['top1']:.3f}, {row['train_images_per_s']:.0f} img/s, "
            f"latency x{row['infer_latency_ratio']:.2f}, run {row['run_wall_s']:.0f}s"
        )
    lrs = choose_learning_rates([done[job] for job in search], config)
    final_jobs = [
        Job(m, t, lrs[m][t]["chosen_lr"], seed) for t in config.tasks for m in config.methods for seed in config.seeds
    ]
    wall = time.perf_counter() - started
    env["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["cpu_share_used_elsewhere"] = contention(cpu_start, own_children=True)
    _record_invocation(work_dir, command, len(todo), wall, env["cpu_share_used_elsewhere"])
    results = {
        "command": command,
        "config": asdict(config) | {"work_dir": str(work_dir)},
        "environment": env,
        "schedules": {
            t: {"epochs": TASKS[t].epochs, "batch_size": TASKS[t].batch_size, "description": TASKS[t].description}
            for t in config.tasks
        },
        "peak_memory_definition": PEAK_MEMORY_DEFINITION,
        "learning_rates": lrs,
        "rows": [done[job] for job in final_jobs],
        "lr_search_rows": [done[job] for job in search],
    }
    invocations = _read_jsonl(work_dir / "invocations.jsonl")
    results |= {"wall_time_s": round(sum(i["wall_time_s"] for i in invocations), 1), "invocations": invocations}
    write_results(results, Path(output_dir), plot, log)
    return results


def _record_invocation(work_dir: Path, command: str, runs: int, wall: float, elsewhere: dict | None) -> None:
    """Append this invocation to ``<work_dir>/invocations.jsonl``, unless it ran nothing (only rewrote the report)."""
    if runs:
        record = {
            "command": command,
            "runs": runs,
            "wall_time_s": round(wall, 1),
            "cpu_share_used_elsewhere": elsewhere,
        }
        with (work_dir / "invocations.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def _job_of(row: dict) -> Job:
    return Job(row["method"], row["task"], row["lr"], row["seed"])


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_results(results: dict, output_dir: Path, plot: bool = True, log=print) -> None:
    """``results.json``, ``results.md`` and (with ``plot``) ``results.png`` in ``output_dir``."""
    from . import report

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "results.md").write_text(report.markdown(results))
    if plot:
        report.plot(results, output_dir / "results.png")
    log(f"wrote {output_dir}/results.json, results.md" + (", results.png" if plot else ""))
