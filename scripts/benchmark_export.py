"""Latency of a Mona-adapted Swin-T exported to ONNX against the bare Swin-T (onnxruntime and PyTorch, CPU), and of
one backbone serving 4 Mona adapters in one mixed batch against one batch per adapter, and onnxruntime's profile of
both graphs by operator type.

    python scripts/benchmark_export.py --output benchmarks/export.json
    python scripts/benchmark_export.py --output benchmarks/export.json --part export --model upernet_swin_t --batch 1

Random weights (offline); Swin-T at 224 px (or UperNet around it at 512 px, export part only) with eager attention
(transformers' SDPA Swin does not export at that size). Run it on an idle machine: the variants of each part run
interleaved, at 1 and at 2 threads. ``--part`` measures one part and keeps the other's results (and their command)
in the output file.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from harness.export_speed import measure_export, measure_serving, profile_onnx  # noqa: E402
from harness.timing import environment  # noqa: E402


def swin_t(image_size: int):
    from transformers import SwinConfig, SwinForImageClassification

    return lambda: SwinForImageClassification(SwinConfig(image_size=image_size, attn_implementation="eager"))


def upernet_swin_t(image_size: int):
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    stages = ["stage1", "stage2", "stage3", "stage4"]
    backbone = SwinConfig(image_size=image_size, out_features=stages, attn_implementation="eager")
    return lambda: UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, num_labels=150))


#: The models measured: builder, default image size, the heads that train beside Mona.
MODELS = {
    "swin_t": (swin_t, 224, ["classifier"]),
    "upernet_swin_t": (upernet_swin_t, 512, ["decode_head", "auxiliary_head"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("benchmarks/export.json"))
    parser.add_argument("--model", choices=sorted(MODELS), default="swin_t")
    parser.add_argument("--image_size", type=int, help="Default: 224 for swin_t, 512 for upernet_swin_t.")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--part", choices=["all", "export", "serving", "profile"], default="all")
    args = parser.parse_args()
    if args.model != "swin_t" and args.part != "export":
        parser.error(f"--model {args.model} is measured with --part export only")
    builder, default_size, head = MODELS[args.model]
    size = args.image_size or default_size
    result = json.loads(args.output.read_text()) if args.part != "all" and args.output.exists() else {}
    measured = {"command": "python " + " ".join(sys.argv), "environment": environment()}
    if args.part in ("all", "export"):
        with tempfile.TemporaryDirectory() as folder:
            rows = measure_export(builder(size), size, Path(folder), head, batch=args.batch, repeats=args.repeats)
        # Swin-T's rows sit beside the file's command; another model's carry their own
        result |= {**measured, "swin_t": rows} if args.model == "swin_t" else {args.model: {**measured, **rows}}
    if args.part in ("all", "serving"):
        rows = measure_serving(builder(size), size, head, repeats=args.repeats)
        result["serving"] = {**measured, "swin_t": rows}
    if args.part in ("all", "profile"):
        with tempfile.TemporaryDirectory() as folder:
            rows = profile_onnx(builder(size), size, Path(folder), head, repeats=args.repeats)
        result["onnxruntime_profile"] = {**measured, "swin_t": rows}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
