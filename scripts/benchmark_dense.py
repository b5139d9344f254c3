"""The dense-task benchmarks: methods x learning rates x seeds around the shipped Swin, offline.

    python scripts/benchmark_dense.py --work_dir runs/segmentation --output_dir benchmarks/segmentation
    python scripts/benchmark_dense.py --kind object-detection --work_dir runs/detection \
        --output_dir benchmarks/detection

Interrupted? Run the same command again: finished runs are kept in <work_dir>/runs.jsonl. See
benchmarks/harness/kinds.py for each kind's recipe and learning-rate grid, benchmarks/harness/runner.py for the
protocol.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the harness package
from harness.cli import dense_main as main  # noqa: E402

if __name__ == "__main__":
    main()
