"""The semantic-segmentation benchmark: methods x learning rates x seeds of UperNet on the shipped Swin, offline.

    python scripts/benchmark_segmentation.py --work_dir runs/segmentation --output_dir benchmarks/segmentation

Interrupted? Run the same command again: finished runs are kept in <work_dir>/runs.jsonl. See
mona_peft/benchmarking/segmentation.py for the protocol.
"""

import argparse
import shlex
import sys

from mona_peft.benchmarking.segmentation import (
    SEGMENTATION_LR_GRID,
    SEGMENTATION_METHODS,
    SegmentationBenchmarkConfig,
    run_segmentation_benchmark,
    write_results,
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=SEGMENTATION_METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--lr_grid", nargs="+", type=float, default=SEGMENTATION_LR_GRID)
    parser.add_argument("--task", default="digit-scenes")
    parser.add_argument("--workers", type=int, default=2, help="Processes; each trains one run at a time.")
    parser.add_argument("--threads", type=int, default=1, help="Torch threads per process.")
    parser.add_argument("--max_train_steps", type=int, default=None, help="Cut runs short (quick checks).")
    parser.add_argument("--work_dir", default="runs/segmentation")
    parser.add_argument("--output_dir", default="benchmarks/segmentation")
    args = parser.parse_args(argv)
    config = SegmentationBenchmarkConfig(
        methods=args.methods,
        task=args.task,
        seeds=args.seeds,
        lr_grid=args.lr_grid,
        workers=args.workers,
        threads=args.threads,
        max_train_steps=args.max_train_steps,
    )
    results = run_segmentation_benchmark(config, args.work_dir)
    results["command"] = shlex.join(["python", "scripts/benchmark_segmentation.py", *(argv or sys.argv[1:])])
    write_results(results, args.output_dir)
    return results


if __name__ == "__main__":
    main()
