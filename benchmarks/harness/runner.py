"""The benchmark runner, one for every kind (:data:`harness.kinds.KINDS`): every method x task x learning rate x
seed on the shipped pretrained Swin, one recipe for all.

Each run is one call of the training core (:func:`mona_peft.training.train` with a ``RunConfig`` of ``task=...``)
with the kind's recipe and the task's fixed schedule: AdamW, the kind's weight decay and gradient clipping, 10 %
warm-up then the kind's schedule, the same learning rate for the heads and the method's parameters, times the factors
a method declares (``MethodSpec.lr_scales``: Mona's projections at 0.1). Every method runs every value of the grid
with every seed; per method and task, the rate with the best mean final validation score over the seeds is chosen,
and its runs are the result. Choosing on one seed picked rates where some seeds diverge (Mona at 1e-2: 50 +- 16 % on
digits); the mean over seeds penalises that. The test split is evaluated once per run and never chooses.

Finished rows are appended to a file in the work dir (``rows.jsonl`` for classification, ``runs.jsonl`` for the
dense kinds); running again with the same work dir skips them (resume after an interruption, or a grid extended by
more rates or seeds). Each invocation that ran anything appends its wall time, run count and CPU contention to
``<work_dir>/invocations.jsonl``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mona_peft.backbones import backbone_path
from mona_peft.data import load_task
from mona_peft.training import RunConfig, train
from mona_peft.tuners.registry import methods

from .kinds import KINDS, BenchmarkKind
from .rows import PEAK_MEMORY_DEFINITION
from .timing import contention, cpu_snapshot, environment


@dataclass
class BenchmarkConfig:
    """What to run. Empty ``methods``, ``tasks`` and ``lr_grid`` and unset ``weight_decay``/``max_grad_norm`` take
    the kind's; ``num_train_epochs`` replaces the tasks' schedule length (a longer schedule, to see the curves level
    off); ``max_train_steps`` (quick runs) cuts it short. ``latency_*``: the classification kind's latency
    measurement."""

    kind: str = "image-classification"
    methods: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    lr_grid: list[float] = field(default_factory=list)
    backbone: str = "swin"
    task_seed: int = 0
    workers: int = 2
    threads: int = 1
    warmup_fraction: float = 0.1
    weight_decay: float | None = None
    max_grad_norm: float | None = None
    max_train_steps: int | None = None
    num_train_epochs: int | None = None
    latency_batch: int = 32
    latency_warmup: int = 1
    latency_repeats: int = 5
    work_dir: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Unknown benchmark kind {self.kind!r}; available: {', '.join(KINDS)}.")
        kind = self.spec
        self.methods = list(self.methods or kind.default_methods())
        self.tasks = list(self.tasks or kind.default_tasks)
        self.lr_grid = list(self.lr_grid or kind.lr_grid)
        self.weight_decay = kind.weight_decay if self.weight_decay is None else self.weight_decay
        self.max_grad_norm = kind.max_grad_norm if self.max_grad_norm is None else self.max_grad_norm
        unknown = [m for m in self.methods if m not in methods()] + [
            t for t in self.tasks if t not in kind.offline_tasks
        ]
        if unknown:
            raise ValueError(
                f"Unknown methods or tasks {unknown}; methods: {sorted(methods())}, {self.kind} tasks: "
                f"{list(kind.offline_tasks)}."
            )
        if len(self.tasks) > 1 and not kind.several_tasks:
            raise ValueError(f"A {self.kind} benchmark runs one task, got {self.tasks}.")
        if not self.seeds or not self.lr_grid:
            raise ValueError("Need at least one seed and one learning rate.")
        if self.num_train_epochs is not None and self.num_train_epochs < 1:
            raise ValueError(f"num_train_epochs must be at least 1, got {self.num_train_epochs}.")

    @property
    def spec(self) -> BenchmarkKind:
        return KINDS[self.kind]

    def schedule(self, task: str) -> tuple[int, int, int]:
        """Epochs, steps per epoch and total steps of every run on ``task``."""
        offline = self.spec.offline_tasks[task]
        sizes = getattr(offline, "sizes", None)  # scene tasks know their sizes; classification reads its split
        train_size = sizes["train"] if sizes else len(load_task(task, self.task_seed)["train"])
        if self.spec.training_task.drop_last_train and train_size > offline.batch_size:
            per_epoch = train_size // offline.batch_size
        else:
            per_epoch = math.ceil(train_size / offline.batch_size)
        epochs = self.num_train_epochs or offline.epochs
        return epochs, per_epoch, self.max_train_steps or epochs * per_epoch

    # The one task of a dense benchmark.
    @property
    def epochs(self) -> int:
        return self.schedule(self.tasks[0])[0]

    @property
    def steps_per_epoch(self) -> int:
        return self.schedule(self.tasks[0])[1]

    @property
    def total_steps(self) -> int:
        return self.schedule(self.tasks[0])[2]


@dataclass(frozen=True)
class Job:
    method: str
    task: str
    lr: float
    seed: int


# ------------------------------------------------------------------------------------------------- one run


def run_config(job: Job, config: BenchmarkConfig, output_dir: Path) -> RunConfig:
    """The training run of ``job`` (the same recipe for every method)."""
    kind = config.spec
    epochs, _, steps = config.schedule(job.task)
    return RunConfig(
        model_name_or_path=str(backbone_path(config.backbone)),
        task=job.task,
        task_seed=config.task_seed,
        method=job.method,
        output_dir=str(output_dir),
        overwrite_output_dir=True,
        report_to="none",
        checkpointing_steps="no",
        eval_strategy=kind.eval_strategy,
        num_train_epochs=epochs,
        max_train_steps=config.max_train_steps,
        per_device_train_batch_size=kind.offline_tasks[job.task].batch_size,
        per_device_eval_batch_size=100,
        learning_rate=job.lr,
        adapter_lr_scale=1.0,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        lr_scheduler_type=kind.lr_scheduler_type,
        num_warmup_steps=max(1, round(config.warmup_fraction * steps)),
        seed=job.seed,
    )


def run_job(job: Job, config: BenchmarkConfig, work_dir: Path) -> dict:
    """Train ``job`` with the training core; returns the kind's result row (:mod:`harness.rows`)."""
    kind = config.spec
    started = time.perf_counter()
    output_dir = work_dir / job.task / job.method / f"lr{job.lr:g}" / f"seed{job.seed}"
    task = kind.training_task()
    evaluations = []  # every evaluation's scores: the validation ones, then the test
    evaluate = task.evaluate
    task.evaluate = lambda *args: evaluations.append(evaluate(*args)) or evaluations[-1]
    final = train(run_config(job, config, output_dir), task)
    row = kind.row(kind, job, config, final, evaluations, output_dir)
    row["run_wall_s"] = round(time.perf_counter() - started, 2)
    shutil.rmtree(output_dir, ignore_errors=True)
    return row


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

    for task in config.tasks:  # builds (and caches) the classification tasks' data once per worker
        config.schedule(task)
    _WORKER.update(config=config, work_dir=Path(work_dir))


def _worker_run(job: Job) -> dict:
    return run_job(job, _WORKER["config"], _WORKER["work_dir"])


def run_jobs(jobs: list[Job], config: BenchmarkConfig, work_dir: Path) -> Iterable[dict]:
    """Run ``jobs`` (in ``config.workers`` spawned processes, or in this one for 1 worker); yields rows as they end."""
    if config.workers <= 1:
        threads = torch.get_num_threads()
        _init_worker(config, str(work_dir))
        try:
            yield from map(_worker_run, jobs)
        finally:
            torch.set_num_threads(threads)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(config.workers, initializer=_init_worker, initargs=(config, str(work_dir), True)) as pool:
        yield from pool.imap_unordered(_worker_run, jobs)


# ------------------------------------------------------------------------------------------------- the grid


def _job_of(row: dict, config: BenchmarkConfig) -> Job:
    """The job of a row (a dense kind's rows name no task: its one task)."""
    return Job(row["method"], row.get("task", config.tasks[0]), row["lr"], row["seed"])


def grid_jobs(config: BenchmarkConfig) -> list[Job]:
    """Every job of the grid, seed by seed (an interrupted benchmark has whole seeds of every method), the slowest
    methods first within a seed (``MethodSpec.step_cost``: keeps the worker pool busy to the end)."""
    cost = {name: spec.step_cost for name, spec in methods().items()}
    jobs = [
        Job(m, t, lr, s) for s in config.seeds for t in config.tasks for m in config.methods for lr in config.lr_grid
    ]
    return sorted(jobs, key=lambda job: (config.seeds.index(job.seed), -cost[job.method]))


def pending_jobs(config: BenchmarkConfig, done: list[dict]) -> list[Job]:
    """The jobs of the grid that no row of ``done`` ran."""
    finished = {_job_of(row, config) for row in done}
    return [job for job in grid_jobs(config) if job not in finished]


def choose_learning_rates(rows: list[dict], config: BenchmarkConfig) -> dict[str, dict]:
    """Per method (and task, for a kind of several tasks): the mean final validation score of each rate, and the
    rate with the best one (ties: the earliest in the grid). The rates are compared on the seeds they all ran, so
    that more seeds at one rate, run after the choice, do not change it; a kind with ``every_seed`` requires every
    seed of the config at every rate instead."""
    kind = config.spec
    chosen: dict[str, dict] = {}
    for method in config.methods:
        for task in config.tasks:
            by_lr = {lr: {} for lr in config.lr_grid}
            for row in rows:
                job = _job_of(row, config)
                if kind.every_seed and job.seed not in config.seeds:
                    continue  # a work dir may hold more seeds than this benchmark asks for
                if (job.method, job.task) == (method, task) and job.lr in by_lr:
                    by_lr[job.lr][job.seed] = row[kind.val_key]
            choice = _choose(by_lr, config, f"{method} on {task}")
            if choice is None:
                continue
            if kind.several_tasks:  # classification's results: per method, then per task
                chosen.setdefault(method, {})[task] = choice
            else:
                chosen[method] = choice
    return chosen


def _choose(by_lr: dict[float, dict[int, float]], config: BenchmarkConfig, what: str) -> dict | None:
    """The choice among the rates of ``by_lr`` (rate -> seed -> validation score), or None if no rate ran."""
    kind = config.spec
    if kind.every_seed:
        for lr, scores in by_lr.items():
            if sorted(scores) != sorted(config.seeds):
                raise ValueError(f"{what} at lr {lr:g}: {len(scores)} runs, expected one per seed.")
    ran = [scores for scores in by_lr.values() if scores]
    common = set.intersection(*(set(scores) for scores in ran)) if ran else set()
    means = {lr: statistics.fmean(scores[s] for s in common) for lr, scores in by_lr.items() if scores and common}
    if not means:
        return None
    choice = {kind.grid_key: {f"{lr:g}": mean for lr, mean in means.items()}, "chosen_lr": max(means, key=means.get)}
    return choice | {"choice_seeds": sorted(common)}


# ------------------------------------------------------------------------------------------------- the benchmark


def run_benchmark(
    config: BenchmarkConfig,
    work_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    command: str = "",
    plot: bool = True,
    log: Callable[[str], None] = print,
    report_only: bool = False,
) -> dict:
    """Run every pending job of the grid (resuming the work dir: ``work_dir``, else ``config.work_dir``, else a new
    temporary one), choose the rates on validation; returns the results and, with ``output_dir``, writes them
    (:func:`write_results`). ``report_only``: train nothing, report the runs done (seeds run at a chosen rate only,
    for instance)."""
    work_dir = Path(work_dir or config.work_dir or tempfile.mkdtemp(prefix="mona-peft-benchmark-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    rows_file = work_dir / config.spec.rows_file
    rows = _read_jsonl(rows_file)
    jobs = [] if report_only else pending_jobs(config, rows)
    _refuse_other_schedule(config, rows, rows_file, jobs)
    env = environment("cpu") | {"workers": config.workers, "torch_threads_per_worker": config.threads}
    started, cpu_start = time.perf_counter(), cpu_snapshot()
    log(f"{len(jobs)} runs ({len(rows)} already done)")
    with rows_file.open("a") as sink:
        for row in run_jobs(jobs, config, work_dir):
            rows.append(row)
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            log(f"[{time.perf_counter() - started:7.0f}s] {_describe(row, config)}")
    env["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["cpu_share_used_elsewhere"] = contention(cpu_start, own_children=True)
    _record_invocation(work_dir, command, len(jobs), time.perf_counter() - started, env["cpu_share_used_elsewhere"])
    invocations = _read_jsonl(work_dir / "invocations.jsonl")
    results = {
        "command": command,
        "config": asdict(config) | {"work_dir": str(work_dir)} | _schedule_of_one_task(config),
        "environment": env,
        **_kind_results(config, rows),
        "wall_time_s": round(sum(i["wall_time_s"] for i in invocations), 1),
        "invocations": invocations,
    }
    if output_dir is not None:
        write_results(results, output_dir, plot, log)
    return results


def _kind_results(config: BenchmarkConfig, rows: list[dict]) -> dict:
    """What the kind's results hold besides the run's description: the chosen rates and the rows, and what its
    report needs. Classification: the rows at the chosen rates (all of them under ``lr_search_rows``); the dense
    kinds: every row, and their one task."""
    lrs = choose_learning_rates(rows, config)
    if not config.spec.several_tasks:
        return {"task": asdict(config.spec.offline_tasks[config.tasks[0]]), "learning_rates": lrs, "rows": rows}
    by_job = {_job_of(row, config): row for row in rows}
    search = [
        Job(m, t, lr, s) for t in config.tasks for m in config.methods for lr in config.lr_grid for s in config.seeds
    ]
    chosen = [Job(m, t, lrs[m][t]["chosen_lr"], s) for t in config.tasks for m in config.methods for s in config.seeds]
    tasks = {t: config.spec.offline_tasks[t] for t in config.tasks}
    return {
        "schedules": {
            t: {"epochs": x.epochs, "batch_size": x.batch_size, "description": x.description} for t, x in tasks.items()
        },
        "peak_memory_definition": PEAK_MEMORY_DEFINITION,
        "learning_rates": lrs,
        "rows": [by_job[job] for job in chosen],
        "lr_search_rows": [by_job[job] for job in search],
    }


def _schedule_of_one_task(config: BenchmarkConfig) -> dict:
    """A dense kind's config in its results also names its one task and the steps its runs train."""
    if config.spec.several_tasks:
        return {}
    return {"task": config.tasks[0], "steps_per_epoch": config.steps_per_epoch, "total_steps": config.total_steps}


def _refuse_other_schedule(config: BenchmarkConfig, rows: list[dict], rows_file: Path, jobs: list[Job]) -> None:
    """A dense work dir holds one schedule length: its curves end at the step count its runs trained."""
    ran = sorted({row["curve"][-1]["step"] for row in rows if "curve" in row} - {config.total_steps})
    if jobs and ran and not config.spec.several_tasks:
        raise ValueError(
            f"{rows_file} holds runs of {ran} steps; this benchmark trains {config.total_steps} "
            "(another schedule length). Give it its own --work_dir."
        )


def _describe(row: dict, config: BenchmarkConfig) -> str:
    job = _job_of(row, config)
    kind = config.spec
    text = f"{job.task:<15} {job.method:<12} lr {job.lr:<7g} seed {job.seed}: val {kind.label} {row[kind.val_key]:.3f}"
    if "top1" in row:
        text += (
            f" test {row['top1']:.3f}, {row['train_images_per_s']:.0f} img/s, latency x{row['infer_latency_ratio']:.2f}"
        )
    return text + f", run {row['run_wall_s']:.0f}s"


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


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_results(results: dict, output_dir: str | Path, plot: bool = True, log: Callable[[str], None] = print) -> None:
    """``results.json``, ``results.md`` and (with ``plot``) ``results.png`` in ``output_dir``, for any kind."""
    from . import report

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output_dir / "results.md").write_text(report.markdown(results))
    if plot:
        report.plot(results, output_dir / "results.png")
    log(f"wrote {output_dir}/results.json, results.md" + (", results.png" if plot else ""))
