"""Latency of an exported Mona-adapted model against its bare backbone, side by side in one run.

For one model builder (Swin-T at 224 px by default; random weights, eager attention, which transformers' Swin needs
to export at that size): the bare model and the same model with Mona (randomised adapter weights), each exported to
ONNX (``mona_peft.export.export_onnx``) and run in onnxruntime, and each run in PyTorch eager, Mona in its inference
form (``mona_peft.prepare_for_inference``). The variants of one runtime run interleaved after warm-up
(:func:`harness.timing.timed_pair`), at each thread count; ratios are of medians.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from .timing import summarize, timed_pair


def _mona(bare: torch.nn.Module, head: list[str]) -> torch.nn.Module:
    from peft import get_peft_model

    import mona_peft

    model = get_peft_model(copy.deepcopy(bare), mona_peft.MonaConfig(modules_to_save=head)).eval()
    _trained_looking(model, torch.Generator().manual_seed(1))
    return mona_peft.prepare_for_inference(model)


def _trained_looking(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Seeded noise on every Mona parameter: a fresh Mona is near the identity, a trained one is not."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "mona_" in name:
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def _exported_pair(
    build: Callable[[], torch.nn.Module], image_size: int, batch: int, folder: Path, head: list[str]
) -> tuple[dict[str, torch.nn.Module], torch.Tensor, dict[str, Path]]:
    """The bare model and its Mona-adapted copy (inference form), the seeded images they are traced on, and their ONNX
    files in ``folder`` (``bare.onnx``, ``mona.onnx``)."""
    from mona_peft.export import export_onnx

    bare = build().eval()
    models = {"bare": bare, "mona": _mona(bare, head)}
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    return models, x, {name: export_onnx(model, folder / f"{name}.onnx", x) for name, model in models.items()}


def measure_export(
    build: Callable[[], torch.nn.Module],
    image_size: int,
    folder: Path,
    head: list[str],
    batch: int = 2,
    threads: tuple[int, ...] = (1, 2),
    warmup: int = 3,
    repeats: int = 10,
) -> dict[str, object]:
    """Latency ratios Mona / bare in onnxruntime and in PyTorch, onnxruntime / PyTorch for the Mona model, and the
    ONNX file sizes, at each of ``threads``."""
    import onnxruntime

    models, x, files = _exported_pair(build, image_size, batch, folder, head)
    rows = {
        "image_size": image_size,
        "batch": batch,
        # the graph and its weights, which the exporter writes beside it (`<name>.onnx.data`) for models this size
        "file_mb": {
            n: round(sum(f.stat().st_size for f in folder.glob(f"{p.name}*")) / 2**20, 2) for n, p in files.items()
        },
    }
    feed = {"pixel_values": x.numpy()}
    for count in threads:
        torch.set_num_threads(count)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = count, 1
        sessions = {
            n: onnxruntime.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
            for n, p in files.items()
        }
        runs = {f"ort_{n}": (lambda s=s: s.run(None, feed)) for n, s in sessions.items()}

        def eager(model: torch.nn.Module) -> Callable[[], None]:
            def run() -> None:
                with torch.inference_mode():
                    model(pixel_values=x)

            return run

        runs |= {f"torch_{n}": eager(m) for n, m in models.items()}
        times = timed_pair(runs, warmup, repeats)
        rows[f"threads_{count}"] = {
            "onnxruntime_mona_over_bare": summarize(times, "ort_mona", "ort_bare"),
            "torch_mona_over_bare": summarize(times, "torch_mona", "torch_bare"),
            "mona_onnxruntime_over_torch": summarize(times, "ort_mona", "torch_mona"),
        }
    return rows


def measure_serving(
    build: Callable[[], torch.nn.Module],
    image_size: int,
    head: list[str],
    adapters: int = 4,
    images_per_adapter: int = 2,
    threads: tuple[int, ...] = (1, 2),
    warmup: int = 2,
    repeats: int = 10,
) -> dict[str, object]:
    """One frozen backbone serving ``adapters`` Mona adapters (randomised, PyTorch eager): a mixed batch of
    ``adapters * images_per_adapter`` images routed with ``adapter_names=`` against the same images run as one batch
    per adapter (``set_adapter`` before each), and the bare backbone on the whole batch; the throughput ratio mixed /
    separate is the inverse of their latency ratio."""
    from peft import get_peft_model

    import mona_peft

    bare = build().eval()
    model = get_peft_model(copy.deepcopy(bare), mona_peft.MonaConfig(modules_to_save=head), adapter_name="adapter_0")
    names = [f"adapter_{index}" for index in range(adapters)]
    for name in names[1:]:
        model.add_adapter(name, mona_peft.MonaConfig(modules_to_save=head))
    generator = torch.Generator().manual_seed(1)
    _trained_looking(model, generator)
    model.eval()
    x = torch.randn(adapters * images_per_adapter, 3, image_size, image_size, generator=generator)
    routing = names * images_per_adapter  # interleaved: every adapter's rows are scattered through the batch
    rows = {name: [i for i, routed in enumerate(routing) if routed == name] for name in names}

    def mixed() -> None:
        with torch.inference_mode():
            model(pixel_values=x, adapter_names=routing)

    def separate() -> None:
        with torch.inference_mode():
            for name in names:
                model.set_adapter(name)
                model(pixel_values=x[rows[name]])

    def backbone() -> None:
        with torch.inference_mode():
            bare(pixel_values=x)

    result: dict[str, object] = {"image_size": image_size, "adapters": adapters, "images": len(routing)}
    for count in threads:
        torch.set_num_threads(count)
        times = timed_pair({"separate": separate, "mixed": mixed, "bare": backbone}, warmup, repeats)
        result[f"threads_{count}"] = {
            "mixed_over_separate_latency": summarize(times, "mixed", "separate"),
            "mixed_over_bare_latency": summarize(times, "mixed", "bare"),
        }
    return result


def profile_onnx(
    build: Callable[[], torch.nn.Module],
    image_size: int,
    folder: Path,
    head: list[str],
    batch: int = 2,
    repeats: int = 10,
    top: int = 8,
    warmup: int = 3,
) -> dict[str, object]:
    """Where the Mona graph spends its extra time: onnxruntime's own profile (one thread) of the bare and the Mona
    graph, ``repeats`` runs each after ``warmup`` runs, kernel time summed per operator type in milliseconds per run;
    ``top`` types by the Mona graph's excess over the bare one. The profiled runs' median wall time is reported
    beside it (profiling adds a timer per node, and the Mona graph has more nodes)."""
    import json

    import onnxruntime

    _, x, files = _exported_pair(build, image_size, batch, folder, head)
    per_op: dict[str, dict[str, float]] = {}
    wall: dict[str, float] = {}
    for name, path in files.items():
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        options.enable_profiling, options.profile_file_prefix = True, str(folder / f"profile_{name}")
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(warmup + repeats):
            session.run(None, {"pixel_values": x.numpy()})
        events = json.loads(Path(session.end_profiling()).read_text())
        runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
        warmup_end = runs[warmup - 1]["ts"] + runs[warmup - 1]["dur"]
        wall[name] = statistics.median(run["dur"] / 1e3 for run in runs[warmup:])
        totals: dict[str, float] = {}
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] > warmup_end:
                op = event.get("args", {}).get("op_name", "?")
                totals[op] = totals.get(op, 0.0) + event["dur"] / 1e3 / repeats
        per_op[name] = totals
    ops = set(per_op["bare"]) | set(per_op["mona"])
    excess = {op: per_op["mona"].get(op, 0.0) - per_op["bare"].get(op, 0.0) for op in ops}
    ranked = sorted(ops, key=lambda op: -excess[op])[:top]
    return {
        "image_size": image_size,
        "batch": batch,
        "threads": 1,
        "kernel_total_ms": {name: round(sum(totals.values()), 2) for name, totals in per_op.items()},
        "profiled_run_median_ms": {name: round(ms, 2) for name, ms in wall.items()},
        "by_operator_ms": [
            {
                "op": op,
                "bare": round(per_op["bare"].get(op, 0.0), 2),
                "mona": round(per_op["mona"].get(op, 0.0), 2),
                "excess": round(excess[op], 2),
            }
            for op in ranked
        ],
    }
