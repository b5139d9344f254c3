"""Latency of a Mona-adapted Swin-T exported to ONNX against the bare Swin-T (onnxruntime and PyTorch, CPU).

    python scripts/benchmark_export.py --output benchmarks/export.json

Random weights (offline); Swin-T at 224 px with eager attention (transformers' SDPA Swin does not export at that
size). Run it on an idle machine: the variants of each runtime run interleaved, at 1 and at 2 threads.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from harness.export_speed import measure_export  # noqa: E402
from harness.timing import environment  # noqa: E402


def swin_t(image_size: int):
    from transformers import SwinConfig, SwinForImageClassification

    return lambda: SwinForImageClassification(SwinConfig(image_size=image_size, attn_implementation="eager"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/export.json"))
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = measure_export(
            swin_t(args.image_size), args.image_size, Path(folder), ["classifier"], repeats=args.repeats
        )
    result = {"command": "python " + " ".join(sys.argv), "environment": environment(), "swin_t": rows}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
