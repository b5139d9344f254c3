"""Export an adapter folder written by a training script to ONNX (any of the four tasks).

    python scripts/export_onnx.py --adapter outputs/mona-digits --output mona-digits.onnx
    python scripts/export_onnx.py --adapter outputs/mona-digit-scenes --output mona-digit-scenes.onnx
    python scripts/export_onnx.py --adapter outputs/mona-digit-instances --output mona-digit-instances.onnx
    python scripts/export_onnx.py --adapter outputs/mona-digit-instances-masks --output mona-digit-masks.onnx

The task comes from the folder's own files (``segmentation_config.json``, ``detection_config.json`` or
``instance_segmentation_config.json`` mark a dense adapter); the input size from its ``preprocessor_config.json`` (or
``--image_size``). The graph takes ``pixel_values`` of any batch size and returns the task's outputs
(``mona_peft.export.output_names``); it is checked against PyTorch in onnxruntime before the script ends.
"""

import argparse
import json
from pathlib import Path

import torch

import mona_peft  # noqa: F401  (registers the methods with PEFT)
from mona_peft.export import export_onnx, load_adapted, output_names


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
        if "shortest_edge" in size:  # EoMT's processor: square windows of that side
            return size["shortest_edge"], size["shortest_edge"]
    raise SystemExit(f"error: neither {folder} nor its base model records an image size: pass --image_size.")


def example_images(folder: Path, images: Path) -> torch.Tensor:
    """The images of the folder ``images`` as the processor saved beside the adapter prepares them."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from mona_peft.data.images import IMAGE_SUFFIXES

    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"error: {images} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    pictures = [Image.open(path).convert("RGB") for path in paths]
    return AutoImageProcessor.from_pretrained(folder)(images=pictures, return_tensors="pt")["pixel_values"]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, type=Path, help="The training run's output folder.")
    parser.add_argument("--output", required=True, type=Path, help="The .onnx file to write.")
    parser.add_argument("--base", help="Base checkpoint of a classification adapter (default: the one it records).")
    parser.add_argument("--image_size", type=int, help="Side of the traced images (default: the processor's).")
    parser.add_argument("--dynamic_size", action="store_true", help="Free height and width, where the graph allows.")
    parser.add_argument(
        "--images",
        type=Path,
        help="A folder of images to trace and check with, through the adapter's processor (default: random pixels; "
        "give real ones for a detector, whose proposals can tie on noise).",
    )
    args = parser.parse_args(argv)
    model, task = load_adapted(args.adapter, args.base)
    height, width = image_size(args.adapter, args.base, args.image_size)
    example = example_images(args.adapter, args.images) if args.images else torch.randn(2, 3, height, width)
    outputs = output_names(model, task)
    path = export_onnx(model, args.output, example, output_names=outputs, dynamic_size=args.dynamic_size)
    print(f"{task}: {path} (checked against PyTorch in onnxruntime)")
    return path


if __name__ == "__main__":
    main()
