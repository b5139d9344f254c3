"""The dense-task benchmarks: methods x learning rates x seeds around the shipped Swin, offline.

    python scripts/benchmark_dense.py --work_dir runs/segmentation --output_dir benchmarks/segmentation
    python scripts/benchmark_dense.py --kind object-detection --work_dir runs/detection \
        --output_dir benchmarks/detection

Interrupted? Run the same command again: finished runs are kept in <work_dir>/runs.jsonl. See
mona_peft/benchmarking/dense.py for the protocol and each kind's recipe and learning-rate grid.
"""

import argparse
import shlex
import sys

from mona_peft.benchmarking.dense import DENSE_METHODS, KINDS, DenseBenchmarkConfig, run_dense_benchmark, write_results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=list(KINDS), default="semantic-segmentation")
    parser.add_argument("--methods", nargs="+", default=DENSE_METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--lr_grid", nargs="+", type=float, default=[], help="Default: the kind's grid.")
    parser.add_argument("--task", default="", help="An offline task of the kind (default: the kind's).")
    parser.add_argument("--workers", type=int, default=2, help="Processes; each trains one run at a time.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads per process.")
    parser.add_argument(
        "--num_train_epochs", type=int, default=None, help="Schedule length (default: the task's epochs)."
    )
    parser.add_argument("--max_train_steps", type=int, default=None, help="Cut runs short (quick checks).")
    parser.add_argument("--report_only", action="store_true", help="Train nothing: report the runs in --work_dir.")
    parser.add_argument("--work_dir", default="runs/segmentation")
    parser.add_argument("--output_dir", default="benchmarks/segmentation")
    args = parser.parse_args(argv)
    config = DenseBenchmarkConfig(
        kind=args.kind,
        methods=args.methods,
        task=args.task,
        seeds=args.seeds,
        lr_grid=args.lr_grid,
        workers=args.workers,
        threads=args.threads,
        max_train_steps=args.max_train_steps,
        num_train_epochs=args.num_train_epochs,
    )
    results = run_dense_benchmark(config, args.work_dir, report_only=args.report_only)
    results["command"] = shlex.join(["python", "scripts/benchmark_dense.py", *(argv or sys.argv[1:])])
    write_results(results, args.output_dir)
    return results


if __name__ == "__main__":
    main()
