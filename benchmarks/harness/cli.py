"""Command lines of ``scripts/benchmark.py`` (the classification benchmark, ``--quick`` and ``--speed``) and of
``scripts/benchmark_dense.py`` (the dense kinds); both run :func:`harness.runner.run_benchmark`."""

from __future__ import annotations

import argparse
import shlex
import sys

from mona_peft.data import TASKS
from mona_peft.tuners.registry import methods

from .kinds import DENSE_KINDS, LR_GRID, dense_methods
from .runner import BenchmarkConfig, run_benchmark
from .speed import SPEED_MODELS

QUICK = {"methods": ["linear", "mona"], "tasks": ["digits-fewshot"], "seeds": [0], "lr_grid": [3e-3, 1e-2]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark the fine-tuning methods: downstream accuracy and costs (default), or Swin-T speed "
        "(--speed)."
    )
    add = parser.add_argument
    add("--output_dir", default="benchmarks", help="Where results.json/.md/.png (or speed.json) go.")
    add("--quick", action="store_true", help="Smoke run: linear and mona, digits-fewshot, 1 seed, 2 steps.")
    add("--speed", action="store_true", help="Swin-T 224x224 step time, peak memory and latency ratios instead.")
    add(
        "--methods",
        nargs="+",
        default=None,
        help=f"Default: all ({' '.join(methods())}). --speed also takes variants with options, "
        "e.g. mona:gradient_checkpointing=true.",
    )
    add("--tasks", nargs="+", default=None, choices=sorted(TASKS), help="Default: all.")
    add("--seeds", nargs="+", type=int, default=None, help="Training seeds (default 0 1 2).")
    grid = " ".join(map(str, LR_GRID))
    add("--lr_grid", nargs="+", type=float, default=None, help=f"Rates every method tries (default {grid}).")
    add("--workers", type=int, default=None, help="Worker processes (default 2; 1 runs in this process).")
    add("--threads", type=int, default=1, help="torch threads per worker.")
    add("--max_train_steps", type=int, default=None, help="Cap every run's steps (default: the task schedules).")
    add("--work_dir", default=None, help="Run folders and rows.jsonl; rerun with the same one to resume.")
    add("--no_plot", action="store_true")
    # --speed
    add("--batch_size", type=int, default=2, help="--speed: Swin-T batch.")
    add("--repeats", type=int, default=10, help="--speed: timed interleaved repetitions.")
    add("--warmup", type=int, default=2, help="--speed: untimed calls per variant first.")
    add("--image_size", type=int, default=None, help="--speed: input resolution (224 for swin-t, else 512).")
    add(
        "--speed_model",
        nargs="+",
        default=["swin-t"],
        choices=list(SPEED_MODELS),
        help="--speed: the networks, measured one after the other (several: <output_dir>/speed_<model>.json each).",
    )
    add("--device", default="cpu", choices=["cpu", "cuda"], help="--speed: device.")
    add(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--speed: forward passes under bfloat16 autocast (default: on CUDA, off on CPU).",
    )
    add("--speed_threads", type=int, default=None, help="--speed: torch threads (default: torch's).")
    add(
        "--torch_compile",
        action="store_true",
        help="--speed: also measure every method compiled (torch.compile), beside the eager rows.",
    )
    add("--torch_compile_backend", default=None, help="--speed: torch.compile backend (default inductor).")
    add("--torch_compile_mode", default=None, help="--speed: torch.compile mode (e.g. max-autotune).")
    add("--floor", action="store_true", help="--speed: also estimate Mona's floor ratios (needs mona).")
    add("--speed_output", default=None, help="--speed: output file (default <output_dir>/speed.json).")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """``scripts/benchmark.py``: the classification benchmark, or (``--speed``) the speed benchmark."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = shlex.join(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    if args.speed:
        return _speed(parser, args, command)
    defaults = dict(QUICK) if args.quick else {}
    config = BenchmarkConfig(
        kind="image-classification",
        methods=args.methods or defaults.get("methods", []),
        tasks=args.tasks or defaults.get("tasks", []),
        seeds=args.seeds or defaults.get("seeds", [0, 1, 2]),
        lr_grid=args.lr_grid or defaults.get("lr_grid", []),
        workers=args.workers or (1 if args.quick else 2),
        threads=args.threads,
        max_train_steps=args.max_train_steps or (2 if args.quick else None),
        latency_repeats=3 if args.quick else 5,
        work_dir=args.work_dir,
    )
    return run_benchmark(config, output_dir=args.output_dir, command=command, plot=not args.no_plot)


def _speed(parser: argparse.ArgumentParser, args: argparse.Namespace, command: str) -> dict:
    """``--speed``: one report per ``--speed_model`` (several: ``speed_<model>.json`` each, returned by model)."""
    from .speed import SpeedConfig, run_speed

    several = len(args.speed_model) > 1
    if several and args.speed_output:
        parser.error("--speed_output names one file; with several --speed_model, use --output_dir.")
    reports = {}
    for model in args.speed_model:
        config = SpeedConfig(
            methods=args.methods or list(methods()),
            batch_size=args.batch_size,
            repeats=args.repeats,
            warmup=args.warmup,
            image_size=args.image_size or (224 if model == "swin-t" else 512),
            model=model,
            device=args.device,
            threads=args.speed_threads,
            torch_compile=args.torch_compile or bool(args.torch_compile_backend or args.torch_compile_mode),
            compile_backend=args.torch_compile_backend,
            compile_mode=args.torch_compile_mode,
            bf16=args.bf16,
            floor=args.floor,
        )
        name = f"speed_{model}.json" if several else "speed.json"
        reports[model] = run_speed(config, args.speed_output or f"{args.output_dir}/{name}", command)
    return reports if several else reports[model]


def build_dense_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="The dense-task benchmarks: methods x learning rates x seeds around the shipped Swin, offline. "
        "Interrupted? Run the same command again: finished runs are kept in <work_dir>/runs.jsonl."
    )
    add = parser.add_argument
    add("--kind", choices=DENSE_KINDS, default="semantic-segmentation")
    add("--methods", nargs="+", default=None, help=f"Default: {' '.join(dense_methods())} (MethodSpec.dense).")
    add("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add("--lr_grid", nargs="+", type=float, default=[], help="Default: the kind's grid.")
    add("--task", default="", help="An offline task of the kind (default: the kind's).")
    add("--workers", type=int, default=2, help="Processes; each trains one run at a time.")
    add("--threads", type=int, default=1, help="Torch threads per process.")
    add("--num_train_epochs", type=int, default=None, help="Schedule length (default: the task's epochs).")
    add("--max_train_steps", type=int, default=None, help="Cut runs short (quick checks).")
    add("--report_only", action="store_true", help="Train nothing: report the runs in --work_dir.")
    add("--work_dir", default=None, help="Default: runs/<the kind's folder> (runs/detection, ...).")
    add("--output_dir", default=None, help="Default: benchmarks/<the kind's folder> (benchmarks/detection, ...).")
    return parser


#: Each dense kind's folder under benchmarks/ (its committed results) and runs/ (its default work dir): a run of one
#: kind never writes into another's.
DENSE_FOLDERS = {
    "semantic-segmentation": "segmentation",
    "object-detection": "detection",
    "instance-segmentation": "instance_segmentation",
}


def dense_main(argv: list[str] | None = None) -> dict:
    """``scripts/benchmark_dense.py``: one dense kind's benchmark, written to ``--output_dir``."""
    args = build_dense_parser().parse_args(argv)
    config = BenchmarkConfig(
        kind=args.kind,
        methods=args.methods or [],
        tasks=[args.task] if args.task else [],
        seeds=args.seeds,
        lr_grid=args.lr_grid,
        workers=args.workers,
        threads=args.threads,
        max_train_steps=args.max_train_steps,
        num_train_epochs=args.num_train_epochs,
        work_dir=args.work_dir or f"runs/{DENSE_FOLDERS[args.kind]}",
    )
    command = shlex.join(["python", "scripts/benchmark_dense.py", *(sys.argv[1:] if argv is None else argv)])
    output_dir = args.output_dir or f"benchmarks/{DENSE_FOLDERS[args.kind]}"
    return run_benchmark(config, output_dir=output_dir, command=command, report_only=args.report_only)
