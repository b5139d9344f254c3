"""MiMi in the HF ``Trainer``: a ``TrainerCallback`` that shrinks the adapters when a cycle ends."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from .schedule import MiMi


class MiMiCallback(TrainerCallback):
    """Shrinks the adapters at the end of the epochs :class:`MiMi` names, and updates the Trainer's optimizer.

    Set ``num_train_epochs`` to ``mimi.total_epochs``::

        mimi = MiMi(peft_model, MiMiSchedule(rho=0.5, epochs_per_cycle=2, compression=4))
        args = TrainingArguments(..., num_train_epochs=mimi.total_epochs, remove_unused_columns=False)
        Trainer(model=peft_model, args=args, ..., callbacks=[MiMiCallback(mimi)]).train()

    The optimizer's param groups are updated in place (new parameter objects; AdamW moments sliced to the kept
    neurons, or reset, as the schedule says), so the learning-rate scheduler keeps working. Single-process training
    only: a DDP/FSDP wrapper holds the old parameters.
    """

    def __init__(self, mimi: MiMi) -> None:
        self.mimi = mimi

    def on_train_begin(self, args, state, control, **kwargs: Any):
        if args.world_size > 1:
            raise ValueError("MiMiCallback supports single-process training only (DDP/FSDP keep the old parameters).")
        if args.max_steps <= 0 and round(args.num_train_epochs) != self.mimi.total_epochs:
            raise ValueError(
                f"MiMi's schedule trains {self.mimi.total_epochs} epochs; set TrainingArguments(num_train_epochs="
                f"{self.mimi.total_epochs}) (got {args.num_train_epochs})."
            )

    def on_epoch_end(self, args, state, control, optimizer=None, **kwargs: Any):
        epoch = round(state.epoch) - 1
        entry = self.mimi.on_epoch_end(epoch, optimizer)
        if entry is not None:
            state.log_history.append(
                {
                    "epoch": state.epoch,
                    "step": state.global_step,
                    "mimi_neurons": entry["neurons"],
                    "mimi_adapter_params": entry["adapter_params"],
                }
            )
