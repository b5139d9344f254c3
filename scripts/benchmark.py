"""Benchmark the fine-tuning methods offline (the harness, outside the wheel, is ``benchmarks/harness``).

Downstream accuracy and costs, every method x task x seed on the shipped pretrained Swin (about 30 min on 2 CPUs):
    python scripts/benchmark.py                     # -> benchmarks/results.json, results.md, results.png
Smoke run (seconds):
    python scripts/benchmark.py --quick --output_dir /tmp/bench
Training step, peak memory and inference latency ratios on a Swin-T at 224x224 (random init):
    python scripts/benchmark.py --speed             # -> benchmarks/speed.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the harness package
from harness.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
