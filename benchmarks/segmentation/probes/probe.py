"""Learnability probe of composed digit scenes: full fine-tuning (or --method) of UperNet on the shipped Swin with a
plain loop, validation per-class IoU every --every steps. It made the logs beside it (see ../README.md). The scenes
are the library's (``compose_scene``) with this probe's sizes, digits and contrast set on the data module, so they do
not depend on the shipped task's constants; the scores are the task's own ``evaluate``."""

import argparse
import time

import numpy as np
import torch
from accelerate import Accelerator
from transformers import AutoImageProcessor, SegformerImageProcessorPil, get_scheduler

from mona_peft.backbones import backbone_path
from mona_peft.tasks.semantic_segmentation import data as seg
from mona_peft.tasks.semantic_segmentation.model import build_upernet
from mona_peft.tasks.semantic_segmentation.task import SemanticSegmentationTask
from mona_peft.tuners.architectures import head_modules
from mona_peft.tuners.methods import adamw, build_method, parameter_groups

torch.set_num_threads(1)
p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=32)
p.add_argument("--dmin", type=int, default=10)
p.add_argument("--dmax", type=int, default=20)
p.add_argument("--ndig", default="3,5")
p.add_argument("--digits", default="0,1,2,3,4")
p.add_argument("--steps", type=int, default=300)
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--head_scale", type=float, default=1.0)
p.add_argument("--method", default="full")
p.add_argument("--bs", type=int, default=16)
p.add_argument("--ntrain", type=int, default=400)
p.add_argument("--hidden", type=int, default=64)
p.add_argument("--every", type=int, default=50)
p.add_argument("--sched", default="const")
p.add_argument("--contrast", type=float, default=0)
p.add_argument("--clip", type=float, default=5.0)
a = p.parse_args()
# The library composes the scenes from these module constants (read at call time): this probe's variant of the task.
digs = tuple(int(d) for d in a.digits.split(","))
seg.SCENE_SIZE, seg.SCENE_DIGITS = a.size, digs
seg.DIGIT_SIZES, seg.DIGITS_PER_SCENE = (a.dmin, a.dmax), tuple(map(int, a.ndig.split(",")))
seg.MIN_CONTRAST = a.contrast  # 0: digits keep their random colour
classes = ["background"] + [f"digit {d}" for d in digs]


def split(name, n):
    ds = seg.scene_split(name, n, 0)
    return ds


tr, va = split("train", a.ntrain), split("validation", 100)
bb = AutoImageProcessor.from_pretrained(backbone_path("swin"))
proc = SegformerImageProcessorPil(
    size={"height": a.size, "width": a.size}, image_mean=bb.image_mean, image_std=bb.image_std
)


def enc(ds):
    e = proc(
        [im.convert("RGB") for im in ds["image"]],
        segmentation_maps=[np.asarray(m) for m in ds["label"]],
        return_tensors="pt",
    )
    return e["pixel_values"], e["labels"]


Xtr, Ytr = enc(tr)
Xva, Yva = enc(va)
print("fg share", float((Ytr > 0).float().mean()), flush=True)
torch.manual_seed(0)
model = build_upernet(str(backbone_path("swin")), classes, hidden_size=a.hidden)
heads = head_modules(model)
model = build_method(model, a.method, heads)
groups = parameter_groups(model, a.lr, 2.0)
if a.head_scale != 1.0:
    hp = [p for n, p in model.named_parameters() if p.requires_grad and "backbone" not in n]
    ids = {id(p) for p in hp}
    groups = [{"params": [p for p in g["params"] if id(p) not in ids], "lr": g["lr"]} for g in groups]
    groups = [g for g in groups if g["params"]] + [{"params": hp, "lr": a.lr * a.head_scale}]
opt = adamw(groups, weight_decay=0.01)

sch = get_scheduler(
    {"const": "constant_with_warmup", "poly": "polynomial", "cos": "cosine"}[a.sched],
    opt,
    num_warmup_steps=10,
    num_training_steps=a.steps,
)
g = torch.Generator().manual_seed(0)


task = SemanticSegmentationTask()
accelerator = Accelerator(cpu=True)


def evaluate():
    batches = [{"pixel_values": Xva[i : i + 50], "labels": Yva[i : i + 50]} for i in range(0, len(Xva), 50)]
    scores = task.evaluate(model, batches, accelerator, classes)
    model.train()
    return scores["mean_iou"], np.array(scores["per_category_iou"])


t0 = time.time()
model.train()
losses = []
for step in range(1, a.steps + 1):
    idx = torch.randint(len(Xtr), (a.bs,), generator=g)
    out = model(pixel_values=Xtr[idx], labels=Ytr[idx])
    out.loss.backward()
    if a.clip:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], a.clip)
    opt.step()
    sch.step()
    opt.zero_grad()
    losses.append(out.loss.item())
    if step % a.every == 0:
        m, iou = evaluate()
        print(
            f"step {step} loss {np.mean(losses[-a.every :]):.3f} miou {m:.3f} iou {np.round(iou, 2).tolist()} "
            f"t {time.time() - t0:.0f}s",
            flush=True,
        )
