"""Learnability probe of composed digit scenes: full fine-tuning (or --method) of UperNet on the shipped Swin with a
plain loop, validation per-class IoU every --every steps. It made the logs beside it (see ../README.md); it recomposes
scenes with its own sizes, so it does not depend on the shipped task's constants."""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from transformers import AutoImageProcessor, SegformerImageProcessorPil, get_scheduler

from mona_peft.backbones import backbone_path
from mona_peft.tasks.semantic_segmentation import data as seg
from mona_peft.tasks.semantic_segmentation.model import build_upernet
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
seg.SCENE_SIZE = a.size
digs = tuple(int(d) for d in a.digits.split(","))
seg.SCENE_DIGITS = digs
lo, hi = map(int, a.ndig.split(","))
classes = ["background"] + [f"digit {d}" for d in digs]


def _lum(c):
    return float(np.dot(c, [0.299, 0.587, 0.114]))


def compose(rng, photographs, band, digits):
    S = a.size
    photo = photographs[rng.integers(len(photographs))]
    left, right = int(band[0] * photo.shape[1]), int(band[1] * photo.shape[1])
    top = rng.integers(0, photo.shape[0] - S + 1)
    x0 = rng.integers(left, right - S + 1)
    image = photo[top : top + S, x0 : x0 + S].astype(np.float32)
    mask = np.zeros((S, S), dtype=np.uint8)
    for _ in range(rng.integers(lo, hi + 1)):
        digit = int(rng.choice(digs))
        scans = digits[digit]
        scan = scans[rng.integers(len(scans))]
        size = int(rng.integers(a.dmin, a.dmax + 1))
        ink = np.asarray(PILImage.fromarray(scan).resize((size, size), PILImage.Resampling.BILINEAR)).clip(0, 1)
        y, x = rng.integers(0, S - size + 1, size=2)
        colour = rng.integers(0, 256, size=3).astype(np.float32)
        region = image[y : y + size, x : x + size]
        if a.contrast:
            bg = _lum(region.reshape(-1, 3).mean(0))
            if abs(_lum(colour) - bg) < a.contrast:
                colour = 255 - colour
                if abs(_lum(colour) - bg) < a.contrast:
                    colour = np.full(3, 0.0 if bg > 127 else 255.0, dtype=np.float32)
        region[:] = region * (1 - ink[..., None]) + colour * ink[..., None]
        mask[y : y + size, x : x + size][ink > 0.5] = 1 + digs.index(digit)
    return image.round().astype(np.uint8), mask


seg.compose_scene = compose


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


def evaluate():
    model.eval()
    inter = np.zeros(len(classes))
    union = np.zeros(len(classes))
    with torch.no_grad():
        for i in range(0, len(Xva), 50):
            lg = model(pixel_values=Xva[i : i + 50]).logits
            lg = F.interpolate(lg, size=Yva.shape[-2:], mode="bilinear", align_corners=False)
            pr = lg.argmax(1)
            y = Yva[i : i + 50]
            for c in range(len(classes)):
                inter[c] += ((pr == c) & (y == c)).sum().item()
                union[c] += ((pr == c) | (y == c)).sum().item()
    model.train()
    iou = inter / np.maximum(union, 1)
    return iou.mean(), iou


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
