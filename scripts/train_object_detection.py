"""Fine-tune an object detector (a DETR-family detector around a Swin / Swin v2 backbone) with a PEFT method under
Accelerate; the flags follow transformers' run_object_detection.py.

Offline default (the shipped pretrained Swin in a fresh RT-DETR, on composed digit scenes with boxes):
    python scripts/train_object_detection.py
Local data (<dir>/*.png|jpg and one COCO JSON, e.g. annotations.json, with file names relative to <dir>):
    python scripts/train_object_detection.py --train_dir data/train --validation_dir data/val --output_dir out
With a Hub backbone and dataset (needs network):
    accelerate launch scripts/train_object_detection.py \
        --model_name_or_path microsoft/swin-tiny-patch4-window7-224 --dataset_name cppe-5 \
        --output_dir swin-t-mona-cppe5 --push_to_hub
See `python scripts/train_object_detection.py --help` for every flag (--detector chooses the detector).
"""

from mona_peft.tasks.object_detection import main

if __name__ == "__main__":
    main()
