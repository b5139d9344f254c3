"""Export an adapter folder written by a training script to ONNX (classification and semantic segmentation).

    python scripts/export_onnx.py --adapter outputs/mona-digits --output mona-digits.onnx
    python scripts/export_onnx.py --adapter outputs/mona-digit-scenes --output mona-digit-scenes.onnx

The task comes from the folder's own files (``segmentation_config.json`` marks a segmentation adapter); the input
size from its ``preprocessor_config.json`` (or ``--image_size``). The graph takes ``pixel_values`` of any batch size
and returns the task's outputs (``logits``); it is checked against PyTorch in onnxruntime before the script ends.
"""

import argparse
import json
from pathlib import Path

import torch

import mona_peft  # noqa: F401  (registers the methods with PEFT)
from mona_peft.export import TASK_OUTPUTS, export_onnx, load_adapted


def image_size(folder: Path, base: str | None, given: int | None) -> tuple[int, int]:
    """``--image_size``, else the height and width of the image processor saved with the adapter (dense runs save
    theirs) or with its base model (a classification adapter)."""
    if given:
        return given, given
    base = base or json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    for candidate in (folder, Path(base)):
        processor = candidate / "preprocessor_config.json"
        size = json.loads(processor.read_text()).get("size", {}) if processor.is_file() else {}
        if "height" in size:
            return size["height"], size["width"]
    raise SystemExit(f"error: neither {folder} nor its base model records an image size: pass --image_size.")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, type=Path, help="The training run's output folder.")
    parser.add_argument("--output", required=True, type=Path, help="The .onnx file to write.")
    parser.add_argument("--base", help="Base checkpoint of a classification adapter (default: the one it records).")
    parser.add_argument("--image_size", type=int, help="Side of the traced images (default: the processor's).")
    parser.add_argument("--dynamic_size", action="store_true", help="Free height and width, where the graph allows.")
    args = parser.parse_args(argv)
    model, task = load_adapted(args.adapter, args.base)
    height, width = image_size(args.adapter, args.base, args.image_size)
    example = torch.randn(2, 3, height, width)
    path = export_onnx(model, args.output, example, output_names=TASK_OUTPUTS[task], dynamic_size=args.dynamic_size)
    print(f"{task}: {path} (checked against PyTorch in onnxruntime)")
    return path


if __name__ == "__main__":
    main()
