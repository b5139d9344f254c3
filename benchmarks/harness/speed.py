"""Training step, peak training memory and inference latency of every method, side by side: a Swin-T classifier at
224x224 (``--speed_model swin-t``), or around a Swin-T at 512x512: UperNet (``upernet-swin-t``, the paper's
segmentation setting: 150 classes, UperNet channels 512, auxiliary head), RT-DETR (``rt-detr-swin-t``) or Mask2Former
(``mask2former-swin-t``), the detectors at transformers' COCO sizes with 80 classes and 5 random objects per image.

Random init (``SwinConfig()`` defaults: embed dim 96, depths 2-2-6-2, window 7), no downloads. Every method gets its
own copy of the same weights; the bare model is the same network without a method. All variants run interleaved in
one process (order alternating every repetition, after warm-up); the reported ratios are ratios of medians, with the
quartiles of the per-repetition ratios as the spread. Peak training memory is weights + buffers + AdamW state + the
step's peak allocation (CUDA) or peak resident-size increase (CPU; see :mod:`harness.timing`).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mona_peft.tuners.registry import methods

from .floor import measure_rates, mona_floor, mona_sites
from .timing import contention, cpu_snapshot, environment, summarize, timed_pair, training_peak_bytes

#: Mona's targets per model (ratios): train step vs full fine-tuning and vs LoRA, peak train memory vs full, latency
#: vs the bare model. Swin-T's step target vs full fine-tuning is the speed issue's 0.80 (its first table said 0.75).
MONA_TARGETS = {
    "swin-t": {
        "train_step_ratio_vs_full": 0.8,
        "train_step_ratio_vs_lora": 1.25,
        "peak_memory_ratio_vs_full": 0.8,
        "infer_latency_ratio_vs_base": 1.15,
    },
    "upernet-swin-t": {"train_step_ratio_vs_lora": 1.2, "peak_memory_ratio_vs_full": 0.6},
}


@dataclass
class SpeedConfig:
    #: Default: every declared method (``full`` and ``lora`` join any list: the ratios' references).
    methods: list[str] = field(default_factory=lambda: list(methods()))
    batch_size: int = 2
    repeats: int = 10
    warmup: int = 2
    image_size: int = 224
    model: str = "swin-t"
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    #: Also measure every variant compiled (``torch.compile``), after the eager rows.
    torch_compile: bool = False
    compile_backend: str | None = None  # torch.compile's default (inductor)
    compile_mode: str | None = None
    #: Also estimate Mona's floor (:mod:`harness.floor`) from the measured rows and this machine's
    #: measured rates (needs ``mona`` among the methods).
    floor: bool = False
    #: Forward passes under ``torch.autocast`` in bfloat16 (weights and optimizer state stay float32); default: on
    #: CUDA, off on CPU.
    bf16: bool | None = None

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = self.device == "cuda"

    def autocast(self):
        """The forward passes' autocast context (bfloat16 when ``bf16``, else a no-op)."""
        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=bool(self.bf16))


def swin_t(image_size: int = 224, seed: int = 0) -> torch.nn.Module:
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(seed)
    return SwinForImageClassification(SwinConfig(image_size=image_size))


def upernet_swin_t(image_size: int = 512, seed: int = 0, num_labels: int = 150) -> torch.nn.Module:
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    torch.manual_seed(seed)
    backbone = SwinConfig(image_size=image_size, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = UperNetConfig(backbone_config=backbone, hidden_size=512, num_labels=num_labels, use_auxiliary_head=True)
    return UperNetForSemanticSegmentation(config)


def _around_swin_t(
    build: Callable[[str, list[str]], torch.nn.Module], image_size: int, seed: int, num_labels: int = 80
) -> torch.nn.Module:
    """The library's task model ``build(backbone checkpoint, labels)`` (a detector, Mask2Former) around a randomly
    initialised Swin-T, saved to a temporary checkpoint as the library takes backbones."""
    from transformers import SwinConfig, SwinModel

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(seed)
        SwinModel(SwinConfig(image_size=image_size)).save_pretrained(folder)
        torch.manual_seed(seed)
        return build(folder, [f"class {i}" for i in range(num_labels)])


def rt_detr_swin_t(image_size: int = 512, seed: int = 0) -> torch.nn.Module:
    """RT-DETR at transformers' COCO defaults (300 queries, 100 denoising queries) around a Swin-T, 80 classes."""
    from mona_peft.tasks.object_detection.model import build_detector

    return _around_swin_t(lambda folder, labels: build_detector("rt_detr", folder, labels), image_size, seed)


def mask2former_swin_t(image_size: int = 512, seed: int = 0) -> torch.nn.Module:
    """Mask2Former at transformers' COCO defaults (width 256, 100 queries) around a Swin-T, 80 classes."""
    from mona_peft.tasks.instance_segmentation.model import build_mask2former

    return _around_swin_t(build_mask2former, image_size, seed)


def _class_targets(model: torch.nn.Module, x: torch.Tensor, generator: torch.Generator) -> dict:
    return {"labels": torch.randint(model.config.num_labels, x.shape[:1], generator=generator)}


def _pixel_targets(model: torch.nn.Module, x: torch.Tensor, generator: torch.Generator) -> dict:
    return {"labels": torch.randint(model.config.num_labels, x.shape[:1] + x.shape[2:], generator=generator)}


def _random_boxes(count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` boxes (center x, center y, width, height; fractions of the image) inside the image."""
    size = 0.05 + 0.3 * torch.rand(count, 2, generator=generator)
    center = size / 2 + (1 - size) * torch.rand(count, 2, generator=generator)
    return torch.cat([center, size], dim=1)


def _box_targets(model: torch.nn.Module, x: torch.Tensor, generator: torch.Generator, objects: int = 5) -> dict:
    labels = [
        {
            "class_labels": torch.randint(model.config.num_labels, (objects,), generator=generator),
            "boxes": _random_boxes(objects, generator),
        }
        for _ in range(len(x))
    ]
    return {"labels": labels}


def _mask_targets(model: torch.nn.Module, x: torch.Tensor, generator: torch.Generator, objects: int = 5) -> dict:
    """Rectangular instance masks (the boxes of :func:`_box_targets`) at the image's size, and their classes."""
    height, width = x.shape[2:]
    rows, columns = torch.arange(height)[:, None] / height, torch.arange(width)[None, :] / width
    masks, classes = [], []
    for _ in range(len(x)):
        cx, cy, w, h = _random_boxes(objects, generator).T[..., None, None]
        inside = ((columns - cx).abs() <= w / 2) & ((rows - cy).abs() <= h / 2)
        masks.append(inside.float())
        classes.append(torch.randint(model.config.num_labels, (objects,), generator=generator))
    return {"mask_labels": masks, "class_labels": classes}


@dataclass(frozen=True)
class SpeedModel:
    """A network of the speed benchmark: its builder (image size, seed), the training call's random targets for a
    batch of images, and its description in the report."""

    build: Callable[[int, int], torch.nn.Module]
    targets: Callable[[torch.nn.Module, torch.Tensor, torch.Generator], dict]
    description: str


SPEED_MODELS = {
    "swin-t": SpeedModel(swin_t, _class_targets, "SwinForImageClassification(SwinConfig()) (Swin-T), random init"),
    "upernet-swin-t": SpeedModel(
        upernet_swin_t,
        _pixel_targets,
        "UperNetForSemanticSegmentation around SwinConfig() (Swin-T), hidden 512, 150 classes, auxiliary head, "
        "random init",
    ),
    "rt-detr-swin-t": SpeedModel(
        rt_detr_swin_t,
        _box_targets,
        "RT-DETR (mona_peft.tasks.object_detection.build_detector, transformers' COCO sizes: 300 queries, 100 "
        "denoising) around SwinConfig() (Swin-T), 80 classes, 5 boxes per image, random init",
    ),
    "mask2former-swin-t": SpeedModel(
        mask2former_swin_t,
        _mask_targets,
        "Mask2Former (mona_peft.tasks.instance_segmentation.build_mask2former, transformers' COCO sizes) around "
        "SwinConfig() (Swin-T), 80 classes, 5 masks per image, random init",
    ),
}


def parse_variant(variant: str) -> tuple[str, dict[str, Any]]:
    """A method and its options from ``"method"`` or ``"method:option=value,..."`` (values read as JSON, else kept as
    text), so that one run can set a method beside itself with other options.

    Example::

        >>> parse_variant("mona:gradient_checkpointing=true,inner_dim=32")
        ('mona', {'gradient_checkpointing': True, 'inner_dim': 32})
    """
    method, _, listed = variant.partition(":")
    options = {}
    for item in filter(None, listed.split(",")):
        name, equals, text = item.partition("=")
        if not equals or not name:
            raise ValueError(f"Cannot read the option {item!r} of {variant!r}: write method:option=value,...")
        try:
            options[name] = json.loads(text)
        except json.JSONDecodeError:
            options[name] = text
    return method, options


def build_models(config: SpeedConfig) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
    """The bare model (eval) and one copy per method variant (see :func:`parse_variant`), all with the same
    weights."""
    from mona_peft.tuners.architectures import head_modules
    from mona_peft.tuners.methods import build_method

    if config.model not in SPEED_MODELS:
        raise ValueError(f"Unknown speed model {config.model!r}; available: {', '.join(SPEED_MODELS)}.")
    device = torch.device(config.device)
    base = SPEED_MODELS[config.model].build(config.image_size, config.seed).to(device)
    heads = head_modules(base)
    models = {}
    for variant in config.methods:
        method, options = parse_variant(variant)
        torch.manual_seed(config.seed)
        models[variant] = build_method(copy.deepcopy(base), method, heads, **options)
    return base.eval(), models


def _to_device(value, device: torch.device):
    """``value`` (tensors, in lists and dicts) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_device(item, device) for item in value]
    return value


MODES = ("eager", "compiled")


def run_speed(config: SpeedConfig, output: str | Path | None, command: str, log=print) -> dict:
    """Measure and write ``speed.json``; returns the report. ``full`` (and ``lora``) join the methods for the ratios.

    With ``config.torch_compile`` every variant is measured eager first, then compiled in place
    (``nn.Module.compile``) and measured again: rows carry ``"mode": "eager"`` or ``"compiled"``, ratios compare
    variants of the same mode, and each compiled row reports its compile time (``compile_s``) on its own.

    Example::

        >>> report = run_speed(SpeedConfig(methods=["mona"], torch_compile=True), "speed.json", "doc")  # doctest: +SKIP
        >>> [(row["method"], row["mode"]) for row in report["rows"]][-1]  # doctest: +SKIP
        ('mona', 'compiled')
    """
    config.methods = list(dict.fromkeys(["full", "lora", *config.methods]))
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    env = environment(device)
    started, cpu_start = time.perf_counter(), cpu_snapshot()
    bare, models = build_models(config)
    x, targets = _inputs(config, bare, device)
    if config.floor and "mona" not in models:
        raise ValueError("The floor estimate is Mona's: add mona to the methods.")
    sites = mona_sites(models["mona"], x) if config.floor else None  # counted eager, before any compiling

    rows, bare_ms = [], {}
    for mode in MODES if config.torch_compile else MODES[:1]:
        mode_rows, bare_ms[mode] = _measure_mode(config, mode, bare, models, x, targets, sync, log)
        rows += mode_rows
    wall = time.perf_counter() - started
    env["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["cpu_share_used_elsewhere"] = contention(cpu_start)
    mona_targets = MONA_TARGETS.get(config.model, {})
    meets = _meets_targets(rows, bare_ms, mona_targets)
    report = {
        "command": command,
        "config": asdict(config),
        "model": f"{SPEED_MODELS[config.model].description}, at {config.image_size}x{config.image_size}",
        "environment": env,
        "bare_infer_median_ms": bare_ms["eager"],
        "mona_targets": mona_targets,
        "mona_meets_targets": meets["eager"],
        "rows": rows,
        "wall_time_s": round(wall, 1),
    }
    if sites is not None:
        report["mona_floor"] = _floor(sites, rows, bare_ms["eager"], device, log)
    if config.torch_compile:
        report["bare_infer_median_ms_compiled"] = bare_ms["compiled"]
        report["mona_meets_targets_compiled"] = meets["compiled"]
    _log_rows(rows, env, log)
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {output}; wall {wall:.0f}s")
    return report


def _inputs(config: SpeedConfig, bare: torch.nn.Module, device: torch.device) -> tuple[torch.Tensor, dict]:
    """The seeded batch of images and the model's random training targets for it, on ``device``."""
    generator = torch.Generator().manual_seed(config.seed)
    x = torch.randn(config.batch_size, 3, config.image_size, config.image_size, generator=generator)
    targets = _to_device(SPEED_MODELS[config.model].targets(bare, x, generator), device)
    return x.to(device), targets


def _meets_targets(rows: list[dict], bare_ms: dict[str, float], targets: dict[str, float]) -> dict[str, dict | None]:
    """Per mode: whether Mona's row meets each of its targets (None without a Mona row)."""
    meets = {}
    for mode in bare_ms:
        mona = next((row for row in rows if row["method"] == "mona" and row["mode"] == mode), None)
        meets[mode] = None if mona is None else {key: mona[key] <= target for key, target in targets.items()}
    return meets


def _floor(sites: list, rows: list[dict], bare_ms: float, device: torch.device, log) -> dict:
    """Mona's floor (:mod:`harness.floor`) from the eager rows and this machine's measured rates."""
    eager = {row["method"]: row for row in rows if row["mode"] == "eager"}
    step_ms = {method: eager[method]["train_step_median_ms"] for method in ("full", "lora")}
    floor = mona_floor(sites, measure_rates(sites, device), bare_ms, step_ms["lora"], step_ms["full"])
    for name, at in floor["floors"].items():
        log(
            f"mona floor at {name} GEMM rate: latency x{at['infer_latency_ratio_vs_base']:.3f} of bare, "
            f"train step x{at['train_step_ratio_vs_full']:.3f} of full x{at['train_step_ratio_vs_lora']:.3f} of lora"
        )
    return floor


def _log_rows(rows: list[dict], env: dict, log) -> None:
    for row in rows:
        compiled = f", compile {row['compile_s']['total']:.0f}s" if row["mode"] == "compiled" else ""
        log(
            f"{row['method']:<12} {row['mode']:<8} train step x{row['train_step_ratio_vs_full']:.2f} of full "
            f"x{row['train_step_ratio_vs_lora']:.2f} of lora ({row['train_step_median_ms']:.0f} ms), "
            f"peak memory x{row['peak_memory_ratio_vs_full']:.2f}, latency x{row['infer_latency_ratio_vs_base']:.2f} "
            f"of bare{compiled}"
        )
    busy = env["cpu_share_used_elsewhere"]
    if busy is not None and busy["other_processes"] + busy["steal"] > 0.05:
        log(f"WARNING: other processes used {100 * busy['other_processes']:.0f}% of the CPU time; ratios are noisy.")


def _measure_mode(
    config: SpeedConfig,
    mode: str,
    bare: torch.nn.Module,
    models: dict[str, torch.nn.Module],
    x: torch.Tensor,
    targets: dict,
    sync,
    log,
) -> tuple[list[dict], float]:
    """The rows of one mode (``"eager"``, or ``"compiled"``: compiles every variant in place first) and the bare
    model's median latency in ms."""
    from mona_peft.tuners.methods import adamw

    compile_s: dict[str, dict[str, float]] = {}

    def first_call(name: str, stage: str, run) -> None:
        """Compiled mode: the first call compiles (train and eval are separate graphs), timed on its own."""
        if mode == "compiled":
            sync()
            start = time.perf_counter()
            run()
            sync()
            compile_s.setdefault(name, {})[stage] = time.perf_counter() - start

    if mode == "compiled":
        options = {k: v for k, v in (("backend", config.compile_backend), ("mode", config.compile_mode)) if v}
        for net in (bare, *models.values()):
            net.compile(**options)  # in place: the same modules, so the eager weights and optimizer state carry over
        log(f"compiling {len(models) + 1} variants ({options or 'inductor'}); first calls are timed as compile_s")

    # Inference first: eval mode, no_grad, the bare backbone as one more variant.
    for model in models.values():
        model.eval()
    variants = {"__bare__": _infer(bare, x, config)} | {m: _infer(models[m], x, config) for m in config.methods}
    for name, run in variants.items():
        first_call(name, "inference", run)
    log(f"{mode} inference: {len(variants)} variants x {config.repeats} interleaved reps")
    infer_times = timed_pair(variants, config.warmup, config.repeats, sync)

    # Training steps: forward + backward + AdamW step, every method interleaved.
    steps = {}
    for method, model in models.items():
        model.train()
        optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        steps[method] = (optimizer, _train_step(model, optimizer, x, targets, config))
    for method in config.methods:
        first_call(method, "training", steps[method][1])
    log(f"{mode} training: {len(models)} methods x {config.repeats} interleaved reps")
    train_times = timed_pair({m: steps[m][1] for m in config.methods}, config.warmup, config.repeats, sync)

    # Peak training memory, one method at a time (after the warm-up steps above created the optimizer state).
    peaks = {m: training_peak_bytes(models[m], *steps[m]) for m in config.methods}
    rows = [_row(m, mode, models[m], train_times, infer_times, peaks, compile_s) for m in config.methods]
    return rows, 1e3 * sorted(infer_times["__bare__"])[len(infer_times["__bare__"]) // 2]


def _infer(net: torch.nn.Module, x: torch.Tensor, config: SpeedConfig):
    def run() -> None:
        with torch.no_grad(), config.autocast():
            net(pixel_values=x)

    return run


def _train_step(model: torch.nn.Module, optimizer, x: torch.Tensor, targets: dict, config: SpeedConfig):
    def run() -> None:
        with config.autocast():
            loss = model(pixel_values=x, **targets).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def _row(
    method: str,
    mode: str,
    model: torch.nn.Module,
    train_times: dict[str, list[float]],
    infer_times: dict[str, list[float]],
    peaks: dict[str, int],
    compile_s: dict[str, dict[str, float]],
) -> dict:
    """One method's row of one mode: its ratios to full fine-tuning, LoRA and the bare model, and its medians."""
    from mona_peft.tuners.methods import count_parameters

    step = summarize(train_times, method, "full")
    latency = summarize(infer_times, method, "__bare__")
    trainable, total = count_parameters(model)
    row = {
        "method": method,
        "mode": mode,
        "train_step_ratio_vs_full": step["ratio"],
        "train_step_ratio_vs_full_q1_q3": [step["paired_ratio_q1"], step["paired_ratio_q3"]],
        "train_step_ratio_vs_lora": summarize(train_times, method, "lora")["ratio"],
        "peak_memory_ratio_vs_full": peaks[method] / peaks["full"],
        "infer_latency_ratio_vs_base": latency["ratio"],
        "infer_latency_ratio_vs_base_q1_q3": [latency["paired_ratio_q1"], latency["paired_ratio_q3"]],
        "train_step_median_ms": step[f"{method}_median_ms"] if method != "full" else step["full_median_ms"],
        "infer_median_ms": latency[f"{method}_median_ms"],
        "peak_memory_bytes": peaks[method],
        "trainable_params": trainable,
        "total_params": total,
    }
    if mode == "compiled":  # first calls (compile included) of this method; the bare model's is its own
        seconds = compile_s[method]
        row["compile_s"] = {**seconds, "total": seconds["inference"] + seconds["training"]}
        row["bare_compile_s"] = compile_s["__bare__"]["inference"]
    return row
