"""Which detector learns fastest from little data on CPU, and at which scene size: full fine-tuning of the shipped
Swin inside each detector on the offline digit-instances scenes, validation box AP after every epoch.

    python benchmarks/detection/probes/probe.py --detector conditional_detr --scene_size 32 --epochs 4 --lr 3e-4

--scene_size other than the task's (32) rescales the scenes' digit sizes with it (a variant of the task, for this
probe only).
"""

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

import mona_peft.tasks.object_detection.data as detection_data
from mona_peft.tasks.object_detection.task import DetectionArguments, ObjectDetectionTask
from mona_peft.training import train

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/: the harness package
from harness.runner import BenchmarkConfig, Job, run_config  # noqa: E402

#: The detection benchmark's recipe (weight decay, clipping, schedule), which the flags below override.
RECIPE = BenchmarkConfig(kind="object-detection", methods=["full"], tasks=["digit-instances"], seeds=[0])

parser = argparse.ArgumentParser()
parser.add_argument("--detector", default="conditional_detr")
parser.add_argument("--scene_size", type=int, default=detection_data.INSTANCE_SCENE_SIZE)
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--lr", type=float, default=3e-4)
parser.add_argument("--method", default="full")
parser.add_argument("--batch_size", type=int, default=detection_data.DETECTION_TASKS["digit-instances"].batch_size)
parser.add_argument("--weight_decay", type=float, default=RECIPE.weight_decay)
parser.add_argument("--max_grad_norm", type=float, default=RECIPE.max_grad_norm)
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
config = dataclasses.replace(
    RECIPE,
    methods=[args.method],
    num_train_epochs=args.epochs,
    weight_decay=args.weight_decay,
    max_grad_norm=args.max_grad_norm,
)
output_dir = Path(f"/tmp/detprobe/{args.detector}-{args.scene_size}-{args.lr:g}-{args.method}-{args.max_grad_norm:g}")
run = dataclasses.replace(
    run_config(Job(args.method, "digit-instances", args.lr, 0), config, output_dir),
    per_device_train_batch_size=args.batch_size,
    per_device_eval_batch_size=50,
    seed=42,  # the seed and warm-up the logs beside this probe ran with (RunConfig's defaults)
    num_warmup_steps=10,
)
results = train(run, ObjectDetectionTask(DetectionArguments(detector=args.detector, image_square_size=args.scene_size)))
print(
    f"{args}: test map {results['test_map']:.4f}, map_50 {results['test_map_50']:.4f}, "
    f"{time.perf_counter() - started:.0f} s"
)
