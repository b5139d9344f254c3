"""Fine-tune a semantic-segmentation model (UperNet around a Swin / Swin v2 / DINOv2 backbone) with a PEFT method
under Accelerate; the flags follow transformers' run_semantic_segmentation_no_trainer.py.

Offline default (the shipped pretrained Swin in a fresh UperNet, on composed digit scenes; a few minutes on 2 cores):
    python scripts/train_semantic_segmentation.py
Local data (<dir>/images/*.png, <dir>/masks/*.png with the same stems, id2label.json beside them):
    python scripts/train_semantic_segmentation.py --train_dir data/train --validation_dir data/val --output_dir out
With a Hub backbone and dataset (needs network):
    accelerate launch scripts/train_semantic_segmentation.py \
        --model_name_or_path microsoft/swin-tiny-patch4-window7-224 --dataset_name scene_parse_150 \
        --do_reduce_labels --output_dir swin-t-mona-ade20k --push_to_hub
See `python scripts/train_semantic_segmentation.py --help` for every flag.
"""

from mona_peft.tasks.semantic_segmentation import main

if __name__ == "__main__":
    main()
