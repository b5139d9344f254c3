"""Benchmark Mona's fused filter, a Mona-tuned Swin-T training step and its inference overhead (random init, offline).

    python scripts/benchmark_mona.py --output benchmarks/mona_cpu.json

Each comparison runs its two variants interleaved (the order alternates every repetition) after warm-up and
reports the ratio of the median times; the per-repetition ratios' quartiles show the spread:

1. fused / unfused ``MultiCognitiveFilter``: forward + backward of ``project(spatial(z, grid))`` on a Swin-T
   stage-1 grid (56x56, Mona's inner width 64);
2. fused / unfused training step (forward + backward + AdamW) of a Mona-tuned Swin-T at 224x224;
3. Mona-tuned / base forward latency (eval, no_grad) of that Swin-T; the base is a plain copy with the same weights;
4. (context) Mona-tuned training step / full fine-tuning of the plain copy; on CUDA also the peak memory ratio.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import SwinConfig, SwinForImageClassification

import mona_peft
from mona_peft.tuners.methods import adamw
from mona_peft.tuners.mona import MultiCognitiveFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the harness package
from harness.timing import (  # noqa: E402
    contention,
    cpu_snapshot,
    environment,
    summarize,
    timed_pair,
    training_peak_bytes,
)


def set_fused(filters: list[MultiCognitiveFilter], fused: bool) -> None:
    for module in filters:
        module.fused = fused


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    model(pixel_values=x, labels=y).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=2, help="Swin-T batch (training step and latency)")
    parser.add_argument("--filter_batch_size", type=int, default=8, help="batch of the filter-only benchmark")
    parser.add_argument("--repeats", type=int, default=25, help="timed repetitions per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per variant first")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="optional JSON file for ratios and environment")
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    env = environment(device)
    started = time.perf_counter()
    cpu_start = cpu_snapshot()
    results: dict[str, dict[str, float]] = {}
    torch.manual_seed(args.seed)

    # 1. The filter alone, on a Swin-T stage-1 grid at Mona's inner width.
    grid, width = (56, 56), 64
    conv = MultiCognitiveFilter(width).to(device)
    z = torch.randn(args.filter_batch_size, grid[0] * grid[1], width, device=device, requires_grad=True)
    grad = torch.randn_like(z)

    def filter_pass(fused: bool) -> Callable[[], None]:
        def run() -> None:
            conv.fused = fused
            conv.project(conv.spatial(z, grid)).backward(grad)
            conv.zero_grad(set_to_none=True)
            z.grad = None

        return run

    with torch.no_grad():
        outputs = []
        for fused in (True, False):
            conv.fused = fused
            outputs.append(conv.project(conv.spatial(z, grid)))
        max_diff = (outputs[0] - outputs[1]).abs().max().item()
    times = timed_pair({"fused": filter_pass(True), "unfused": filter_pass(False)}, args.warmup, args.repeats, sync)
    results["filter_fused_vs_unfused"] = summarize(times, "fused", "unfused") | {"max_abs_output_diff": max_diff}

    # Swin-T (SwinConfig defaults), random init; the plain copy keeps the same backbone weights.
    base = SwinForImageClassification(SwinConfig()).to(device)
    plain = copy.deepcopy(base)
    model = get_peft_model(base, mona_peft.MonaConfig(modules_to_save=["classifier"]))
    filters = [m for m in model.modules() if isinstance(m, MultiCognitiveFilter)]
    x = torch.randn(args.batch_size, 3, 224, 224, device=device)
    y = torch.randint(model.config.num_labels, (args.batch_size,), device=device)

    # 3. Inference latency first, while the two models still share every backbone weight.
    set_fused(filters, True)
    model.eval()
    plain.eval()

    @torch.no_grad()
    def infer(net: torch.nn.Module) -> None:
        net(pixel_values=x)

    times = timed_pair({"mona": lambda: infer(model), "base": lambda: infer(plain)}, args.warmup, args.repeats, sync)
    results["latency_mona_vs_base"] = summarize(times, "mona", "base")

    # 2. Training step with every filter fused vs unfused (the same optimizer for both).
    model.train()
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def mona_step(fused: bool) -> Callable[[], None]:
        def run() -> None:
            set_fused(filters, fused)
            train_step(model, optimizer, x, y)

        return run

    times = timed_pair({"fused": mona_step(True), "unfused": mona_step(False)}, args.warmup, args.repeats, sync)
    results["train_step_fused_vs_unfused"] = summarize(times, "fused", "unfused")

    # 4. Context: Mona-tuned (fused) training step vs full fine-tuning of the plain copy.
    plain.train()
    full_optimizer = adamw(plain.parameters(), lr=1e-4)
    variants = {"mona": mona_step(True), "full": lambda: train_step(plain, full_optimizer, x, y)}
    times = timed_pair(variants, args.warmup, args.repeats, sync)
    results["train_step_mona_vs_full_finetune"] = summarize(times, "mona", "full")
    if device.type == "cuda":
        mona_bytes = training_peak_bytes(model, optimizer, mona_step(True))
        full_bytes = training_peak_bytes(plain, full_optimizer, variants["full"])
        results["train_peak_memory_mona_vs_full_finetune"] = {
            "ratio": mona_bytes / full_bytes,
            "mona_mib": mona_bytes / 2**20,
            "full_mib": full_bytes / 2**20,
        }

    wall = time.perf_counter() - started
    labels = {
        "filter_fused_vs_unfused": f"filter fused/unfused (B={args.filter_batch_size}, 56x56x64, fwd+bwd)",
        "train_step_fused_vs_unfused": f"Swin-T train step fused/unfused (B={args.batch_size}, 224x224)",
        "latency_mona_vs_base": f"Swin-T eval latency Mona/base (B={args.batch_size}, no_grad)",
        "train_step_mona_vs_full_finetune": f"Swin-T train step Mona/full fine-tune (B={args.batch_size})",
        "train_peak_memory_mona_vs_full_finetune": "Swin-T train peak memory Mona/full fine-tune",
    }
    env["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["cpu_share_used_elsewhere"] = contention(cpu_start)
    print(f"{env['device_name']} | {env['cpu_count']} CPUs | {env['torch_threads']} threads | torch {env['torch']}")
    print(f"{args.repeats} interleaved reps after {args.warmup} warm-up; ratio of medians [per-rep ratio quartiles]")
    for key, label in labels.items():
        if key not in results:
            continue
        row = results[key]
        spread = f"[{row['paired_ratio_q1']:.3f}, {row['paired_ratio_q3']:.3f}]" if "paired_ratio_q1" in row else ""
        details = "  ".join(f"{k}={v:.1f}" for k, v in row.items() if k.endswith(("_ms", "_mib")))
        print(f"  {label:<62} {row['ratio']:.3f} {spread:<16} {details}")
    busy = env["cpu_share_used_elsewhere"]
    busy_text = "n/a" if busy is None else f"{100 * busy['other_processes']:.1f}% other processes"
    busy_text += "" if busy is None else f", {100 * busy['steal']:.1f}% steal"
    print(f"filter max |fused - unfused| output: {max_diff:.2e}; CPU used elsewhere: {busy_text}; wall {wall:.1f}s")
    if busy is not None and busy["other_processes"] + busy["steal"] > 0.05:
        print("WARNING: other work shared the CPUs during this run; the ratios are noisy. Rerun on a quiet machine.")

    if args.output is not None:
        report = {
            "command": " ".join(["python", *sys.argv]),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "environment": env,
            "results": results,
            "wall_time_s": wall,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
