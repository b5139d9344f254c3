"""Why does Mona stop training at high learning rates? Per-step traces of its parameters and the residual stream.

Trains the benchmark's recipe with one learning rate for every parameter (shipped Swin, task ``digits``: batch 32,
2 epochs = 38 steps, AdamW weight decay 0.05, 10 % linear warm-up then cosine, gradient clipping 5) in one process
with one torch thread, and records per step: the loss, how far ``gammax`` (multiplies the residual stream at every
site) and ``gamma`` (scales the normed input) have moved, the norm of the residual stream that enters the final
LayerNorm, and the norm of Mona's added output.

A variant multiplies the learning rate (and optionally drops the weight decay) of one kind of Mona parameter, so
each suspect can be switched off on its own: if a variant trains where the default does not, that kind is the cause.

    OMP_NUM_THREADS=1 python benchmarks/stability/diagnose.py --lr 0.02 --variants default scales_lr0.1 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification, get_scheduler

import mona_peft  # noqa: F401  (registers the methods)
from mona_peft.backbones import backbone_path
from mona_peft.tuners.methods import adamw, build_method

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the harness package
from harness.rows import pixel_batch  # noqa: E402
from harness.runner import BenchmarkConfig  # noqa: E402

#: The classification benchmark's recipe on ``digits`` (schedule, weight decay, clipping, warm-up share).
RECIPE = BenchmarkConfig(methods=["mona"], tasks=["digits"], seeds=[0])

#: kind -> regex on the parameter name (Mona's pieces).
KINDS = {
    "gammax": r"\.gammax$",
    "gamma": r"\.gamma$",
    "norm_affine": r"mona_\w+_norm\.\w+\.(weight|bias)$",
    "down": r"mona_\w+_down\.",
    "filter": r"mona_\w+_filter\.",
    "up": r"mona_\w+_up\.",
}

#: variant -> {kind: (lr multiplier, weight decay or None for the default)}.
VARIANTS = {
    "default": {},
    "scales_lr0.1": {"gammax": (0.1, None), "gamma": (0.1, None)},
    "scales_frozen": {"gammax": (0.0, 0.0), "gamma": (0.0, 0.0)},
    "gammax_frozen": {"gammax": (0.0, 0.0)},
    "scales_no_wd": {"gammax": (1.0, 0.0), "gamma": (1.0, 0.0)},
    "filter_lr0.1": {"filter": (0.1, None)},
    "up_lr0.1": {"up": (0.1, None)},
    "down_lr0.1": {"down": (0.1, None)},
    "proj_lr0.1": {"up": (0.1, None), "down": (0.1, None)},
    "up_filter_lr0.1": {"up": (0.1, None), "filter": (0.1, None)},
    "up_lr0.03": {"up": (0.03, None)},
}


def kind_of(name: str) -> str | None:
    if ".mona_" not in name:
        return None
    return next(kind for kind, pattern in KINDS.items() if re.search(pattern, name))


def tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole ``split`` of ``digits``, processed as the benchmark processes it."""
    return pixel_batch("digits", RECIPE, 10**6, split)


def run(lr: float, variant: str, seed: int, weight_decay: float = RECIPE.weight_decay) -> dict:
    x_train, y_train = tensors("train")
    x_val, y_val = tensors("validation")
    torch.manual_seed(seed)
    base = AutoModelForImageClassification.from_pretrained(
        str(backbone_path("swin")), num_labels=10, ignore_mismatched_sizes=True
    )
    model = build_method(base, "mona", ["classifier"])
    overrides = VARIANTS[variant]
    groups: dict[tuple[float, float], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        scale, decay = overrides.get(kind_of(name), (1.0, None))
        if scale == 0.0:
            parameter.requires_grad_(False)
            continue
        groups.setdefault((lr * scale, weight_decay if decay is None else decay), []).append(parameter)
    optimizer = adamw([{"params": p, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), p in groups.items()])
    batch_size = RECIPE.spec.offline_tasks["digits"].batch_size
    _, per_epoch, steps = RECIPE.schedule("digits")
    warmup = max(1, round(RECIPE.warmup_fraction * steps))
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=warmup, num_training_steps=steps)

    named = dict(model.named_parameters())
    gammax = [p for n, p in named.items() if n.endswith(".gammax")]
    gamma = [p for n, p in named.items() if n.endswith(".gamma")]
    stream, added = {}, []
    final_norm = model.base_model.model.swin.layernorm
    final_norm.register_forward_pre_hook(lambda m, a: stream.__setitem__("rms", a[0].pow(2).mean().sqrt().item()))
    for name, module in model.named_modules():
        if re.search(r"mona_\w+_up\.default$", name):
            module.register_forward_hook(lambda m, a, out: added.append(out.pow(2).mean().sqrt().item()))

    generator = torch.Generator().manual_seed(seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trace = []
    model.train()
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(len(y_train), generator=generator)
        start = (step % per_epoch) * batch_size
        index = order[start : start + batch_size]
        added.clear()
        loss = model(pixel_values=x_train[index], labels=y_train[index]).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, RECIPE.max_grad_norm).item()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            site_means = torch.stack([p.abs().mean() for p in gammax])
            max_dev = max((p - 1).abs().max() for p in gammax)
            trace.append(
                {
                    "step": step,
                    "loss": round(loss.item(), 4),
                    "grad_norm": round(grad_norm, 3),
                    "gammax_max_dev": round(max_dev.item(), 4),
                    # product over the sites of the mean |gammax|: how much the skip paths alone scale the stream
                    "gammax_stream_gain": round(site_means.prod().item(), 4),
                    "gamma_mean_abs": round(torch.stack([p.abs().mean() for p in gamma]).mean().item(), 5),
                    "stream_rms": round(stream["rms"], 3),
                    "mona_out_rms_max": round(max(added), 3),
                }
            )
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(pixel_values=x_val[i : i + 100]).logits.argmax(-1) for i in range(0, 200, 100)])
    return {
        "lr": lr,
        "variant": variant,
        "seed": seed,
        "val_top1": (predictions == y_val).float().mean().item(),
        "trace": trace,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lr", type=float, nargs="+", default=[0.02])
    parser.add_argument("--variants", nargs="+", default=["default"], choices=sorted(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--output", default=None, help="JSON lines file to append the runs to.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for lr in args.lr:
        for variant in args.variants:
            for seed in args.seeds:
                result = run(lr, variant, seed)
                last = result["trace"][-1]
                peak = max(t["stream_rms"] for t in result["trace"])
                print(
                    f"lr={lr:g} {variant:14s} seed={seed} val_top1={result['val_top1']:.3f}"
                    f" final_loss={last['loss']:.3f}"
                    f" gammax_gain={last['gammax_stream_gain']:.3f} gammax_max_dev={last['gammax_max_dev']:.3f}"
                    f" gamma={last['gamma_mean_abs']:.4f} stream_rms_peak={peak:.1f}"
                    f" mona_out_rms_max={max(t['mona_out_rms_max'] for t in result['trace']):.2f}",
                    flush=True,
                )
                if args.output:
                    with open(args.output, "a") as file:
                        file.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
