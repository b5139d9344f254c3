"""A floor for Mona's cost: the arithmetic and memory traffic Mona cannot avoid, at this machine's measured rates.

Mona's extra work in a network is counted from the model itself (one forward with hooks on every Mona's down
projection gives its tokens, width and inner width): per token, the down projection ``C x d``, the fused depthwise
filter ``d x k^2``, the 1x1 projection ``d x d`` and the up projection ``d x C`` multiply-adds (a training step does
each three times: forward, input gradient, weight gradient), and the memory traffic no implementation avoids: reading
the stream and adding Mona's output to it (``3C`` floats per token forward; ``4C`` more backward: the incoming
gradient, the saved input, the outgoing gradient read and written), plus the filter's input and output at the inner
width (``2d``; ``5d`` backward), the one step a GEMM cannot absorb. Everything else (the scaled norm, GELU, dropout,
biases) could be fused into those passes, so the floor leaves it out.

The floor time is ``flops / GEMM rate + bytes / memory rate``, both measured here, at two GEMM rates: the
machine's peak (a large square product) and the rate of Mona's own skinny products (``tokens x C`` by ``C x d`` and
back), which is what a perfect implementation with this machine's kernels would get. Mona's floor ratios put that
time on top of the measured network without Mona: the bare model for inference, LoRA's step for training (a frozen
backbone's backward plus LoRA's small products; an upper bound on a frozen backbone's step).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .timing import timed_pair

FLOAT_BYTES = 4


@dataclass(frozen=True)
class MonaSite:
    """One Mona in a forward pass: ``tokens`` in the batch (prefix tokens included), ``grid_tokens`` of them on the
    patch grid, the stream width ``channels``, the inner width and the fused filter's kernel size."""

    tokens: int
    grid_tokens: int
    channels: int
    inner_dim: int
    kernel_size: int

    def multiply_adds(self) -> int:
        """Forward multiply-adds: down, filter, 1x1 projection, up."""
        linear = self.tokens * (2 * self.channels * self.inner_dim + self.inner_dim**2)
        return linear + self.grid_tokens * self.inner_dim * self.kernel_size**2

    def floor_bytes(self, training: bool) -> int:
        """The traffic no implementation avoids (see the module's docstring), in float32 bytes."""
        stream, inner = self.tokens * self.channels, self.grid_tokens * self.inner_dim
        floats = 3 * stream + 2 * inner
        if training:
            floats += 4 * stream + 5 * inner
        return floats * FLOAT_BYTES


def mona_sites(model: nn.Module, pixel_values: torch.Tensor) -> list[MonaSite]:
    """Every Mona the forward pass of ``model`` on ``pixel_values`` runs (one per adapter, block and site).

    Example::

        >>> sites = mona_sites(get_peft_model(swin, MonaConfig()), torch.randn(2, 3, 224, 224))  # doctest: +SKIP
        >>> sites[0]  # doctest: +SKIP
        MonaSite(tokens=6272, grid_tokens=6272, channels=96, inner_dim=64, kernel_size=7)
    """
    from mona_peft.tuners.mona.layer import SITES, MonaLayer

    sites: list[MonaSite] = []
    handles = []
    for layer in model.modules():
        if not isinstance(layer, MonaLayer):
            continue
        prefix = layer.architecture.num_prefix_tokens
        for site in SITES:
            for adapter, down in getattr(layer, f"mona_{site}_down").items():
                kernel = max(getattr(layer, f"mona_{site}_filter")[adapter].kernel_sizes)

                def record(module, args, output, kernel=kernel, prefix=prefix):
                    batch, tokens, channels = args[0].shape
                    grid_tokens = batch * (tokens - prefix)
                    sites.append(MonaSite(batch * tokens, grid_tokens, channels, output.shape[-1], kernel))

                handles.append(down.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(pixel_values=pixel_values)
    finally:
        for handle in handles:
            handle.remove()
    if not sites:
        raise ValueError(f"{type(model).__name__} has no Mona layers: nothing to count.")
    return sites


def _median_seconds(run, repeats: int, sync) -> float:
    return statistics.median(timed_pair({"run": run}, 1, repeats, sync)["run"])


def measure_rates(
    sites: list[MonaSite], device: str | torch.device = "cpu", repeats: int = 5, square: int | None = None
) -> dict[str, float]:
    """This machine's float32 rates on ``device`` (CPU: torch's current threads): peak GEMM (a ``square``-sized
    product), Mona's own products (its down and up projections at every distinct shape, as one batch of work), and
    the memory rate of an out-of-place addition at every distinct stream shape (three accesses per element; small
    stages run from cache, as Mona's own passes would)."""
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    square = square or (8192 if device.type == "cuda" else 1024)  # a GPU needs a larger product to reach its peak

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device)

    a, b = randn(square, square), randn(square, square)
    peak = 2 * square**3 / _median_seconds(lambda: torch.mm(a, b), repeats, sync)

    shapes = sorted({(s.tokens, s.channels, s.inner_dim) for s in sites})
    operands = [(randn(n, c), randn(c, d), randn(n, d), randn(d, c)) for n, c, d in shapes]

    def mona_products() -> None:
        for x, down, z, up in operands:
            torch.mm(x, down)
            torch.mm(z, up)

    mona_flops = sum(2 * 2 * n * c * d for n, c, d in shapes)
    skinny = mona_flops / _median_seconds(mona_products, repeats, sync)

    streams = [(randn(n, c), randn(n, c)) for n, c in sorted({(s.tokens, s.channels) for s in sites})]

    def additions() -> None:
        for x, y in streams:
            torch.add(x, y)

    added = 3 * sum(x.numel() for x, _ in streams) * FLOAT_BYTES
    bandwidth = added / _median_seconds(additions, repeats, sync)
    return {"gemm_peak_flops_per_s": peak, "gemm_mona_shapes_flops_per_s": skinny, "bandwidth_bytes_per_s": bandwidth}


def floor_seconds(sites: list[MonaSite], rates: dict[str, float], training: bool, gemm_rate: str) -> float:
    """Mona's least added time per forward (``training``: per training step) at ``rates[gemm_rate]``."""
    passes = 3 if training else 1
    flops = sum(2 * passes * site.multiply_adds() for site in sites)
    moved = sum(site.floor_bytes(training) for site in sites)
    return flops / rates[gemm_rate] + moved / rates["bandwidth_bytes_per_s"]


def mona_floor(
    sites: list[MonaSite], rates: dict[str, float], bare_ms: float, lora_step_ms: float, full_step_ms: float
) -> dict:
    """Mona's floor ratios (latency vs the bare model, step vs LoRA and vs full fine-tuning) at both GEMM rates,
    beside the counts they come from."""
    floors = {}
    for name, rate in (("peak", "gemm_peak_flops_per_s"), ("mona_shapes", "gemm_mona_shapes_flops_per_s")):
        infer_ms = 1e3 * floor_seconds(sites, rates, training=False, gemm_rate=rate)
        train_ms = 1e3 * floor_seconds(sites, rates, training=True, gemm_rate=rate)
        floors[name] = {
            "added_infer_ms": infer_ms,
            "added_train_step_ms": train_ms,
            "infer_latency_ratio_vs_base": (bare_ms + infer_ms) / bare_ms,
            "train_step_ratio_vs_lora": (lora_step_ms + train_ms) / lora_step_ms,
            "train_step_ratio_vs_full": (lora_step_ms + train_ms) / full_step_ms,
        }
    return {
        "monas": len(sites),
        "forward_multiply_adds": sum(site.multiply_adds() for site in sites),
        "floor_bytes_infer": sum(site.floor_bytes(False) for site in sites),
        "floor_bytes_train": sum(site.floor_bytes(True) for site in sites),
        "rates": rates,
        "measured_ms": {"bare_infer": bare_ms, "lora_train_step": lora_step_ms, "full_train_step": full_step_ms},
        "floors": floors,
        "sites": [asdict(site) for site in sites],
    }
