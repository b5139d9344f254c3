"""Which detector learns fastest from little data on CPU, and at which scene size: full fine-tuning of the shipped
Swin inside each detector on the offline digit-instances scenes, validation box AP after every epoch.

    python benchmarks/detection/probes/probe.py --detector conditional_detr --scene_size 32 --epochs 4 --lr 3e-4

--scene_size other than the task's (32) rescales the scenes' digit sizes with it (a variant of the task, for this
probe only).
"""

import argparse
import dataclasses
import time

import torch

import mona_peft.tasks.object_detection.data as detection_data
from mona_peft.tasks.object_detection.task import DetectionArguments, ObjectDetectionTask
from mona_peft.training import RunConfig, train

parser = argparse.ArgumentParser()
parser.add_argument("--detector", default="conditional_detr")
parser.add_argument("--scene_size", type=int, default=detection_data.INSTANCE_SCENE_SIZE)
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--lr", type=float, default=3e-4)
parser.add_argument("--method", default="full")
parser.add_argument("--batch_size", type=int, default=16)
parser.add_argument("--weight_decay", type=float, default=1e-4)
parser.add_argument("--max_grad_norm", type=float, default=0.1)
args = parser.parse_args()
torch.set_num_threads(1)
if args.scene_size != detection_data.INSTANCE_SCENE_SIZE:
    scale = args.scene_size / detection_data.INSTANCE_SCENE_SIZE
    low, high = detection_data.INSTANCE_DIGIT_SIZES
    detection_data.INSTANCE_LAYOUT = dataclasses.replace(
        detection_data.INSTANCE_LAYOUT,
        size=args.scene_size,
        digit_sizes=(round(low * scale), round(high * scale)),
        min_visible=round(detection_data.MIN_INSTANCE_AREA * scale**2),
    )
    detection_data.INSTANCE_SCENE_SIZE = args.scene_size
started = time.perf_counter()
results = train(
    RunConfig(
        task="digit-instances",
        method=args.method,
        output_dir=f"/tmp/detprobe/{args.detector}-{args.scene_size}-{args.lr:g}-{args.method}-{args.max_grad_norm:g}",
        overwrite_output_dir=True,
        report_to="none",
        checkpointing_steps="no",
        eval_strategy="epoch",
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=50,
        learning_rate=args.lr,
        adapter_lr_scale=1.0,
        weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm,
        lr_scheduler_type="cosine",
    ),
    ObjectDetectionTask(DetectionArguments(detector=args.detector, image_square_size=args.scene_size)),
)
print(
    f"{args}: test map {results['test_map']:.4f}, map_50 {results['test_map_50']:.4f}, "
    f"{time.perf_counter() - started:.0f} s"
)
