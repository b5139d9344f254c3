"""Timing and memory helpers shared by the benchmarks (``scripts/benchmark.py``, ``scripts/benchmark_mona.py``).

Timing: variants run interleaved (the order alternates every repetition) after warm-up, and comparisons are ratios
of medians, so slow drifts of a shared machine hit every variant alike. Memory on the CPU: the peak resident set
size (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident size at the start, after
``malloc_trim`` returned freed heap pages to the system; on CUDA, ``torch.cuda``'s peak allocation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def timed_pair(
    variants: dict[str, Callable[[], None]], warmup: int, repeats: int, sync: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
    """Seconds per call of each variant, interleaved (order alternating each repetition) after ``warmup`` calls.

    Works for any number of variants (the name is historical).
    """
    for _ in range(warmup):
        for run in variants.values():
            run()
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            sync()
            start = time.perf_counter()
            variants[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def summarize(times: dict[str, list[float]], numerator: str, denominator: str) -> dict[str, float]:
    """Ratio of medians, quartiles of the per-repetition ratios, and the medians in milliseconds."""
    paired = [a / b for a, b in zip(times[numerator], times[denominator], strict=True)]
    q1, q3 = (statistics.quantiles(paired, n=4)[i] for i in (0, 2)) if len(paired) > 1 else (paired[0], paired[0])
    return {
        "ratio": statistics.median(times[numerator]) / statistics.median(times[denominator]),
        "paired_ratio_q1": q1,
        "paired_ratio_q3": q3,
        f"{numerator}_median_ms": 1e3 * statistics.median(times[numerator]),
        f"{denominator}_median_ms": 1e3 * statistics.median(times[denominator]),
    }


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def model_state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Weights and buffers of ``model`` plus the tensors of ``optimizer``'s state."""
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return tensor_bytes(list(model.parameters()) + list(model.buffers())) + tensor_bytes(state)


def training_peak_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: Callable[[], None]) -> int:
    """Weights + optimizer state + the step's peak on top of everything resident (call after a warm-up step).

    CUDA: ``torch.cuda``'s peak allocation. CPU: the peak resident set size of this process during the step above
    the resident size before it (:class:`PeakRSS`); ``ValueError`` where that cannot be measured.
    """
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return model_state_bytes(model, optimizer) + torch.cuda.max_memory_allocated() - resident
    with PeakRSS() as peak:
        step()
    if peak.bytes is None:
        raise ValueError("peak memory needs Linux's /proc/self/status and /proc/self/clear_refs")
    return model_state_bytes(model, optimizer) + peak.bytes


# --------------------------------------------------------------------------------------------- CPU peak memory

_LIBC = None


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc ``malloc_trim``), where possible."""
    global _LIBC
    gc.collect()
    if _LIBC is None:
        name = ctypes.util.find_library("c")
        _LIBC = ctypes.CDLL(name) if name else False
    if _LIBC and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS (Linux >= 4.0)
    except OSError:
        return False
    return True


class PeakRSS:
    """Context manager: ``.bytes`` = peak resident set size inside the block minus the resident size at its start.

    Linux only (``None`` elsewhere). It counts every allocation of the process (tensors, autograd buffers, Python
    objects), so other threads of the same process add to it; freed memory that the allocator keeps is released
    first (:func:`release_free_memory`) so that it is not reused invisibly.
    """

    def __init__(self) -> None:
        self.bytes: int | None = None
        self.start_kib: int | None = None

    def __enter__(self) -> PeakRSS:
        release_free_memory()
        self.start_kib = _status_kib("VmRSS") if _reset_peak_rss() else None
        return self

    def __exit__(self, *exc) -> None:
        peak = _status_kib("VmHWM")
        if self.start_kib is not None and peak is not None:
            self.bytes = max(peak - self.start_kib, 0) * 1024


# --------------------------------------------------------------------------------------------- environment


def cpu_snapshot() -> tuple[list[int], float] | None:
    """The aggregate ``cpu`` line of ``/proc/stat`` (Linux) and this process's CPU seconds."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return None
    times = os.times()
    return [int(v) for v in stat.read_text().splitlines()[0].split()[1:9]], times.user + times.system


def contention(start: tuple[list[int], float] | None, own_children: bool = False) -> dict[str, float] | None:
    """Shares of all CPU time since ``start`` taken by other processes and by the hypervisor (steal).

    ``own_children``: count this process's finished child processes (workers) as its own.
    """
    end = cpu_snapshot()
    if start is None or end is None:
        return None
    own = end[1] - start[1]
    if own_children:
        times = os.times()
        own += times.children_user + times.children_system
    delta = [b - a for a, b in zip(start[0], end[0], strict=True)]
    ticks = os.sysconf("SC_CLK_TCK")
    total_s = max(sum(delta), 1) / ticks
    busy_s = (sum(delta) - delta[3] - delta[4] - delta[7]) / ticks  # minus idle, iowait and steal
    return {"other_processes": max(busy_s - own, 0.0) / total_s, "steal": delta[7] / ticks / total_s}


def git_state() -> str | None:
    """``HEAD`` of the checkout the benchmark runs from, marked ``-dirty`` when ``mona_peft/`` has local edits."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "mona_peft"], cwd=REPO_ROOT, check=False)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if diff.returncode else "")


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return name or platform.processor() or platform.machine()


def environment(device: torch.device | str = "cpu") -> dict[str, object]:
    """Hardware and library versions of a benchmark run."""
    import peft
    import transformers

    import mona_peft

    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "device": str(device),
        "device_name": name,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "mona_peft": mona_peft.__version__,
        "git": git_state(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
