"""Benchmark the fine-tuning methods offline (logic in ``mona_peft.benchmarking``).

Downstream accuracy and costs, every method x task x seed on the shipped pretrained Swin (about 30 min on 2 CPUs):
    python scripts/benchmark.py                     # -> benchmarks/results.json, results.md, results.png
Smoke run (seconds):
    python scripts/benchmark.py --quick --output_dir /tmp/bench
Training step, peak memory and inference latency ratios on a Swin-T at 224x224 (random init):
    python scripts/benchmark.py --speed             # -> benchmarks/speed.json
"""

from mona_peft.benchmarking.cli import main

if __name__ == "__main__":
    main()
