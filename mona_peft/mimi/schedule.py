"""MiMi's schedule: train big adapters, then shrink them by a fraction ``rho`` every cycle until a target size.

Algorithm 1 of the paper: train for ``first_epochs`` epochs; then, ``K`` times, remove the least important neurons
(so that the size falls by ``rho`` of the *initial* size's geometric path) and train ``epochs_per_cycle`` epochs.
With ``s0`` the initial size and ``s*`` the target, the ratio ``R = s0 / s*`` (the compression, ``sigma* / sigma0``
in the paper) gives

    K = ceil(log(R) / log(1 / (1 - rho)))          total epochs = first_epochs + K * epochs_per_cycle

and cycle ``k`` (1..K) shrinks to ``ceil(s0 * (1 - rho) ** k)``, the last one exactly to ``s*``. Sizes are hidden
neurons (``compression=``, e.g. 4 keeps a quarter of the neurons) or adapter parameters (``target_params=``).

Use it from a custom loop::

    mimi = MiMi(peft_model, MiMiSchedule(rho=0.5, epochs_per_cycle=2, compression=4))
    for epoch in range(mimi.total_epochs):
        train_one_epoch(peft_model, optimizer)
        mimi.on_epoch_end(epoch, optimizer)       # shrinks when a cycle ends; updates the optimizer in place

from the HF ``Trainer`` with :class:`mona_peft.mimi.MiMiCallback`, or from the training script with
``--mimi_target``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .shrink import (
    Measure,
    OptimizerState,
    Ranking,
    active_adapter_name,
    adapter_sizes,
    select_neurons,
    shrink_adapters,
    size_of,
)
from .sites import find_sites

_EPS = 1e-9


@dataclass
class MiMiSchedule:
    """When and how much MiMi shrinks.

    Args:
        rho: fraction removed per cycle (0.5 in the paper), in ``(0, 1)``.
        epochs_per_cycle: training epochs after each shrink.
        compression: target as a ratio of hidden neurons, initial / final (> 1). Exactly one of ``compression`` and
            ``target_params`` must be given.
        target_params: target as the adapters' parameter count (head excluded).
        first_epochs: epochs of the big adapters before the first shrink (default ``epochs_per_cycle``).
        ranking: ``"global"`` (MiMi: one ranking across all adapters, some disappear) or ``"local"`` (every adapter
            keeps the same fraction).
        normalize: divide each neuron's L1 norm by its parameter count (MiMi's score); ``False`` is the ablation.
        balanced: divide each kind of parameter by its mean magnitude before scoring (not in the paper; for Mona,
            whose convolutions and Linear layers live at different scales, see ``mona_peft.mimi.sites.role_scales``).
        optimizer_state: ``"slice"`` (AdamW moments carried over for the kept neurons) or ``"reset"``.
    """

    rho: float = 0.5
    epochs_per_cycle: int = 1
    compression: float | None = None
    target_params: int | None = None
    first_epochs: int | None = None
    ranking: Ranking = "global"
    normalize: bool = True
    balanced: bool = False
    optimizer_state: OptimizerState = "slice"

    def __post_init__(self) -> None:
        if not 0.0 < self.rho < 1.0:
            raise ValueError(f"rho must be in (0, 1), got {self.rho!r}.")
        if (self.compression is None) == (self.target_params is None):
            raise ValueError("Give exactly one target: compression (neurons, initial/final) or target_params.")
        if self.compression is not None and not self.compression >= 1.0:
            raise ValueError(f"compression must be >= 1, got {self.compression!r}.")
        if self.target_params is not None and self.target_params < 0:
            raise ValueError(f"target_params must be >= 0, got {self.target_params!r}.")
        if self.epochs_per_cycle < 1 or (self.first_epochs is not None and self.first_epochs < 1):
            raise ValueError("epochs_per_cycle and first_epochs must be at least 1.")
        if self.ranking not in ("global", "local"):
            raise ValueError(f"ranking must be 'global' or 'local', got {self.ranking!r}.")
        if self.optimizer_state not in ("slice", "reset"):
            raise ValueError(f"optimizer_state must be 'slice' or 'reset', got {self.optimizer_state!r}.")

    @classmethod
    def from_target(cls, target: str | float | int, **kwargs: Any) -> MiMiSchedule:
        """From ``"4x"`` (compression: keep a quarter of the neurons) or ``"20000"`` / ``"20k"`` (adapter params)."""
        text = str(target).strip().lower()
        if text.endswith("x"):
            return cls(compression=float(text[:-1]), **kwargs)
        scale = 1
        if text.endswith("k"):
            text, scale = text[:-1], 1_000
        elif text.endswith("m"):
            text, scale = text[:-1], 1_000_000
        value = float(text) * scale
        if value != int(value):
            raise ValueError(f"A parameter target must be a whole number, got {target!r} (a ratio ends with 'x').")
        return cls(target_params=int(value), **kwargs)

    @property
    def measure(self) -> Measure:
        return "neurons" if self.compression is not None else "params"

    @property
    def warmup_epochs(self) -> int:
        return self.first_epochs or self.epochs_per_cycle

    def target_size(self, initial_size: int) -> int:
        if self.compression is not None:
            return math.floor(initial_size / self.compression + _EPS)
        return int(self.target_params)

    def ratio(self, initial_size: int) -> float:
        """``R = s0 / s*`` (the compression ``sigma* / sigma0`` of the paper); infinite for a target of 0."""
        if self.compression is not None:
            return float(self.compression)
        return math.inf if self.target_params == 0 else initial_size / self.target_params

    def num_cycles(self, initial_size: int) -> int:
        """``K = ceil(log(R) / log(1 / (1 - rho)))``, 0 when the adapters already fit."""
        ratio = self.ratio(initial_size)
        if initial_size <= self.target_size(initial_size) or ratio <= 1.0:
            return 0
        if math.isinf(ratio):  # shrink to nothing: until the geometric path drops below one unit
            return max(1, math.ceil(math.log(initial_size) / -math.log(1 - self.rho) - _EPS))
        return max(1, math.ceil(math.log(ratio) / -math.log(1 - self.rho) - _EPS))

    def total_epochs(self, initial_size: int) -> int:
        """``first_epochs + K * epochs_per_cycle``."""
        return self.warmup_epochs + self.num_cycles(initial_size) * self.epochs_per_cycle

    def size_after_cycle(self, cycle: int, initial_size: int) -> int:
        """The size cycle ``cycle`` (1..K) shrinks to: ``ceil(s0 * (1 - rho) ** cycle)``, ``s*`` for the last."""
        cycles = self.num_cycles(initial_size)
        target = self.target_size(initial_size)
        if cycle >= cycles:
            return target
        return max(target, math.ceil(initial_size * (1 - self.rho) ** cycle - _EPS))

    def shrink_epochs(self, initial_size: int) -> list[int]:
        """The (0-based) epochs at whose end cycles 1..K shrink."""
        return [self.warmup_epochs + k * self.epochs_per_cycle - 1 for k in range(self.num_cycles(initial_size))]


class MiMi:
    """Runs a :class:`MiMiSchedule` on the Mona / Houlsby adapters of a ``PeftModel``.

    Built before training (it records the initial widths); ``total_epochs`` says how long to train; call
    :meth:`on_epoch_end` after every epoch (0-based), or :meth:`shrink_to` yourself. ``history`` lists the size after
    each stage (and what :meth:`log` adds, e.g. accuracies).
    """

    def __init__(self, model: nn.Module, schedule: MiMiSchedule, adapter_name: str | None = None) -> None:
        self.model = model
        self.schedule = schedule
        self.adapter_name = adapter_name or active_adapter_name(model)
        sites = find_sites(model, self.adapter_name)
        if not sites:
            from ..tuners.registry import methods

            shrinkable = ", ".join(name for name, spec in methods().items() if spec.shrinkable)
            raise ValueError(
                f"MiMi found no Mona or Houlsby adapter named '{self.adapter_name}' in {type(model).__name__}; "
                f"MiMi shrinks the adapters of these methods: {shrinkable}."
            )
        self.initial_widths = {site.key: site.size for site in sites}
        self.initial_size = size_of(sites, {}, schedule.measure)
        self.target = schedule.target_size(self.initial_size)
        self.num_cycles = schedule.num_cycles(self.initial_size)
        self.total_epochs = schedule.total_epochs(self.initial_size)
        self._shrink_at = {epoch: cycle + 1 for cycle, epoch in enumerate(schedule.shrink_epochs(self.initial_size))}
        self.cycle = 0
        self.history: list[dict[str, Any]] = [self._record(epoch=None)]

    def _record(self, epoch: int | None, **extra: Any) -> dict[str, Any]:
        sites = find_sites(self.model, self.adapter_name)
        return {
            "cycle": self.cycle,
            "epoch": epoch,
            "neurons": size_of(sites, {}, "neurons"),
            "adapter_params": size_of(sites, {}, "params"),
            "sizes": adapter_sizes(self.model, self.adapter_name),
            **extra,
        }

    def adapter_params(self) -> int:
        return size_of(find_sites(self.model, self.adapter_name), {}, "params")

    def sizes(self) -> dict[str, int]:
        """Current widths, ``{site key: neurons}`` (0 for removed adapters)."""
        return adapter_sizes(self.model, self.adapter_name)

    def shrink_to(self, size: int, optimizer: Any = None) -> dict[str, Any]:
        """Shrink the adapters to at most ``size`` (the schedule's measure); returns a record of what happened."""
        sites = find_sites(self.model, self.adapter_name)
        keep = select_neurons(
            sites,
            size,
            measure=self.schedule.measure,
            ranking=self.schedule.ranking,
            normalize=self.schedule.normalize,
            initial_widths=self.initial_widths,
            balanced=self.schedule.balanced,
        )
        result = shrink_adapters(
            self.model, keep, self.adapter_name, optimizer=optimizer, optimizer_state=self.schedule.optimizer_state
        )
        return result.as_dict()

    def on_epoch_end(self, epoch: int, optimizer: Any = None) -> dict[str, Any] | None:
        """Shrink if a cycle ends after ``epoch`` (0-based); returns the new history entry, or ``None``."""
        cycle = self._shrink_at.get(epoch)
        if cycle is None or cycle <= self.cycle:
            return None
        size = self.schedule.size_after_cycle(cycle, self.initial_size)
        report = self.shrink_to(size, optimizer)
        self.cycle = cycle
        entry = self._record(epoch, target=size, **report)
        self.history.append(entry)
        return entry

    def log(self, **values: Any) -> None:
        """Add values (e.g. an accuracy) to the latest history entry."""
        self.history[-1].update(values)

    def summary(self) -> dict[str, Any]:
        return {
            "schedule": asdict(self.schedule),
            "initial_size": self.initial_size,
            "target": self.target,
            "num_cycles": self.num_cycles,
            "total_epochs": self.total_epochs,
            "history": self.history,
        }


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def optimizer_param_count(optimizer: Any) -> int:
    """Parameters the optimizer updates (a check that a shrink was applied to it)."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return sum(p.numel() for group in optimizer.param_groups for p in group["params"])
