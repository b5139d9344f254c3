"""Fine-tune an instance-segmentation model (Mask2Former around a Swin / Swin v2 backbone) with a PEFT method under
Accelerate; the flags follow transformers' run_instance_segmentation.py.

Offline default (the shipped pretrained Swin in a fresh Mask2Former, on composed digit scenes with instance masks):
    python scripts/train_instance_segmentation.py
Local data (<dir>/*.png|jpg and one COCO JSON, e.g. annotations.json, with file names relative to <dir>; every
annotation needs a mask: polygons or RLE):
    python scripts/train_instance_segmentation.py --train_dir data/train --validation_dir data/val --output_dir out
With a Hub backbone and dataset (needs network; the dataset in run_instance_segmentation.py's layout):
    accelerate launch scripts/train_instance_segmentation.py \
        --model_name_or_path microsoft/swin-tiny-patch4-window7-224 --dataset_name qubvel-hf/ade20k-mini \
        --do_reduce_labels --output_dir swin-t-mona-ade20k-mini --push_to_hub
See `python scripts/train_instance_segmentation.py --help` for every flag.
"""

from mona_peft.tasks.instance_segmentation import main

if __name__ == "__main__":
    main()
