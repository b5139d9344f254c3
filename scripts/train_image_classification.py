"""Fine-tune an image classifier with Mona under Accelerate.

Offline default (the shipped pretrained Swin on scikit-learn's digits):
    python scripts/train_image_classification.py
With a Hub model and dataset (needs network):
    accelerate launch scripts/train_image_classification.py \
        --model_name_or_path microsoft/swin-base-patch4-window7-224 \
        --dataset_name timm/oxford-iiit-pet --output_dir swin-b-mona-pets --push_to_hub
See `python scripts/train_image_classification.py --help` for every flag.
"""

from mona_peft.tasks.image_classification import main

if __name__ == "__main__":
    main()
