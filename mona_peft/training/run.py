"""The training core: one fine-tuning run of any task under Accelerate, in steps a reader can follow.

:func:`train` runs a :class:`~mona_peft.training.config.RunConfig` on a
:class:`~mona_peft.training.task.TrainingTask`: output dir, data, model and method, optimizer and schedule, the loop
(with adapter-only checkpoints and resumption), evaluation, outputs (weights, ``all_results.json``, model card, push).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..tuners.config_utils import AdapterMismatchError
from ..tuners.methods import (
    adamw,
    build_method,
    count_parameters,
    load_trainable,
    parameter_groups,
)
from ..tuners.registry import get_method
from .checkpoints import (
    RESULTS_FILE,
    RUN_ARGS_FILE,
    TEMPORARY_PREFIX,
    TRAINING_STATE_FILE,
    checkpoint_folders,
    describe_files,
    find_checkpoint,
    identity_of,
    new_run_id,
    prepare_output_dir,
    read_run_record,
    replace_folder,
    save_final_weights,
    save_trainable_weights,
)
from .config import RunConfig
from .task import TrainingTask

ADAPTER_FILE = "adapter_model.safetensors"
# ------------------------------------------------------------------------------------------------- the run


@dataclass
class Loaders:
    train: DataLoader
    validation: DataLoader
    test: DataLoader | None


class FineTuningRun:
    """One run; :meth:`execute` performs the steps in order. Use :func:`train` rather than this class directly."""

    def __init__(self, config: RunConfig, task: TrainingTask) -> None:
        config.task_settings = task.settings()
        config.validate()
        if config.model_name_or_path is None:
            config.model_name_or_path = task.default_model()
        if config.output_dir is None:
            config.output_dir = task.default_output_dir
        self.config, self.task, self.method = config, task, get_method(config.method)
        self.started = time.perf_counter()
        self.mimi = None
        #: The model card's fields (``render_model_card``'s keyword arguments but the task), once the card is written.
        self.card_fields: dict[str, Any] = {}
        self.completed_steps = 0
        self.train_loss = float("nan")
        self.epoch_loss = (0.0, 0)  # the current epoch's loss sum and batches (a checkpoint carries them)

    def execute(self) -> dict[str, Any]:
        """Run every step; returns the final results (also written to ``all_results.json``)."""
        self.setup()
        if self.finished is not None:
            return self.finished
        self.load_data()
        self.build_model()
        self.build_optimizer()
        self.resume()
        self.train_loop()
        return self.finish()

    # -- setup: output dir, Accelerate, seed --------------------------------------------------------------------
    def setup(self) -> None:
        config = self.config
        self.report_to = None if config.report_to == "none" else config.report_to
        self.accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            log_with=self.report_to,
            project_dir=str(config.output_dir),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
        self.output_dir = prepare_output_dir(config)
        self.finished = self._start_run()
        set_seed(config.seed)

    def _start_run(self) -> dict[str, Any] | None:
        """Choose the run id and the checkpoint, then record the run; the results of a finished run that is resumed
        (nothing else is done then)."""
        config, accelerator, output_dir = self.config, self.accelerator, self.output_dir
        identity, record = config.identity(), read_run_record(output_dir)
        # The output dir's own run, when it holds these settings (a record without run id predates run ids).
        own_run = record.get("run_id") if record is not None and identity_of(record) == identity else None
        if own_run is not None and config.resume_from_checkpoint is not None:
            results = output_dir / RESULTS_FILE
            finished = json.loads(results.read_text()) if results.is_file() else {}
            if finished.get("run_id") == own_run:
                # Training again from a checkpoint would only rewrite its results (the steps are done).
                accelerator.print(
                    f"{output_dir} holds this run already finished ({finished.get('completed_steps')} steps); "
                    f"its results ({results}) and model card are left as they are."
                )
                if config.push_to_hub and accelerator.is_main_process:
                    self.push()
                accelerator.wait_for_everyone()
                return finished
        # Every process decides (they read the same files) before the main one changes anything.
        self.checkpoint = find_checkpoint(config, own_run, accelerator.print)
        if self.checkpoint is not None:
            state = json.loads((self.checkpoint / TRAINING_STATE_FILE).read_text())
            run_id = state.get("run_id") or own_run  # resuming continues the checkpoint's run
        else:
            run_id = None  # a new start: a new run id
        if record is not None and identity_of(record) != identity and not config.overwrite_output_dir:
            accelerator.print(f"{output_dir} held a run with other settings that saved nothing: starting over.")
        accelerator.wait_for_everyone()  # all have read the output dir before the main process changes it
        if accelerator.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            for stale in output_dir.glob(f"{TEMPORARY_PREFIX}*"):  # saves that were killed
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
            if config.overwrite_output_dir and (run_id is None or run_id != own_run):
                self._remove_old_checkpoints()
            record = {**identity, "run_id": run_id or new_run_id(identity)}
            (output_dir / RUN_ARGS_FILE).write_text(json.dumps(record, indent=2))
        accelerator.wait_for_everyone()
        self.run_id = read_run_record(output_dir)["run_id"]  # the main process drew a new one
        return None

    def _remove_old_checkpoints(self) -> None:
        """--overwrite_output_dir: the replaced run's checkpoints go, so that no later resumption can pick one."""
        keep = self.checkpoint.resolve() if self.checkpoint is not None else None
        for path in checkpoint_folders(self.output_dir):
            if path.resolve() != keep:
                self.accelerator.print(f"--overwrite_output_dir: removing {path} of the replaced run")
                shutil.rmtree(path)

    # -- data -----------------------------------------------------------------------------------------------------
    def load_data(self) -> None:
        config, task = self.config, self.task
        data, self.labels = task.load_data(config)
        self.evaluated_on = task.evaluated_on(config, data)
        self.processor = task.load_processor(config)

        def loader(split: str, **kwargs: Any) -> DataLoader:
            dataset = data[split].with_transform(task.transform(self.processor, train=split == "train"))
            return DataLoader(dataset, collate_fn=task.collate, **kwargs)

        self.loaders = Loaders(
            train=loader(
                "train",
                shuffle=True,
                batch_size=config.per_device_train_batch_size,
                num_workers=config.dataloader_num_workers,
                # Its own generator: creating the iterator must not draw from the global RNG, or a resumed run
                # (which restores that RNG, then creates the iterator) would see other dropout masks.
                generator=torch.Generator().manual_seed(config.seed),
                drop_last=task.drop_last_train and len(data["train"]) > config.per_device_train_batch_size,
            ),
            validation=loader("validation", batch_size=config.per_device_eval_batch_size),
            # reported once, after training; never used to choose anything
            test=loader("test", batch_size=config.per_device_eval_batch_size) if "test" in data else None,
        )

    # -- model and method -------------------------------------------------------------------------------------------
    def method_options(self) -> dict[str, Any]:
        """The method's options: the flags given, over the task's defaults for the method."""
        return self.config.method_options(self.task.method_defaults.get(self.config.method))

    def build_model(self) -> None:
        config, accelerator = self.config, self.accelerator
        base = self.task.load_model(config, self.labels)
        self.model = build_method(base, config.method, self.task.head_modules(base), **self.method_options())
        self.trainable, self.total = count_parameters(self.model)
        accelerator.print(
            f"{config.method}: {self.trainable:,} trainable of {self.total:,} parameters "
            f"({100 * self.trainable / self.total:.2f}%)"
        )
        if config.mimi_target is not None:
            self.mimi = self._start_mimi()
        self._compile()

    def _compile(self) -> None:
        """``--torch_compile``: compile the model in place (``nn.Module.compile``), once the method is applied.

        In place rather than ``torch.compile(model)``: the model stays the same object, so Accelerate, PEFT and MiMi
        see the model they built and saved state-dict keys carry no ``_orig_mod.`` prefix.
        """
        options = self.config.compile_options()
        if options is None:
            return
        self.model.compile(**options)
        self.accelerator.print(f"torch.compile: {options or 'defaults'} (the first steps compile)")

    def _start_mimi(self):
        """MiMi's controller for ``mimi_target``; sets ``num_train_epochs`` to its total."""
        from ..mimi import MiMi, MiMiSchedule

        config, accelerator = self.config, self.accelerator
        if accelerator.num_processes > 1:
            raise SystemExit(
                "error: --mimi_target trains in one process (DDP would keep the parameters MiMi replaces)."
            )
        schedule = MiMiSchedule.from_target(
            config.mimi_target,
            rho=config.mimi_rho,
            epochs_per_cycle=config.mimi_epochs_per_cycle,
            ranking=config.mimi_ranking,
            balanced=config.mimi_balanced,
        )
        mimi = MiMi(self.model, schedule)
        config.num_train_epochs = mimi.total_epochs
        accelerator.print(
            f"MiMi: {mimi.initial_size:,} -> {mimi.target:,} {schedule.measure} in {mimi.num_cycles} cycles, "
            f"{mimi.total_epochs} epochs"
        )
        return mimi

    # -- optimizer and schedule -------------------------------------------------------------------------------------
    def build_optimizer(self) -> None:
        config, accelerator = self.config, self.accelerator
        groups = parameter_groups(self.model, config.learning_rate, config.adapter_lr_scale)
        self.optimizer = adamw(groups, weight_decay=config.weight_decay)
        batches = len(self.loaders.train)
        self.steps_per_epoch = math.ceil(batches / accelerator.num_processes / config.gradient_accumulation_steps)
        self.max_steps = config.max_train_steps or config.num_train_epochs * self.steps_per_epoch
        self.epochs = math.ceil(self.max_steps / self.steps_per_epoch)
        warmup = config.num_warmup_steps
        if config.lr_scheduler_type == "polynomial":
            # transformers' polynomial decay divides by the steps after warm-up: a warm-up of every step (the
            # default 10 with --max_train_steps 10) failed at the last step with a ZeroDivisionError
            warmup = min(warmup, self.max_steps - 1)
        self.scheduler = get_scheduler(
            config.lr_scheduler_type,
            self.optimizer,
            num_warmup_steps=warmup * accelerator.num_processes,
            num_training_steps=self.max_steps * accelerator.num_processes,
        )
        loaders = self.loaders
        self.model, self.optimizer, loaders.train, loaders.validation, self.scheduler = accelerator.prepare(
            self.model, self.optimizer, loaders.train, loaders.validation, self.scheduler
        )
        if loaders.test is not None:
            loaders.test = accelerator.prepare(loaders.test)
        self._register_adapter_only_checkpoints()
        if self.report_to:
            accelerator.init_trackers("mona_peft", config=config.scalars())

    def _register_adapter_only_checkpoints(self) -> None:
        """Checkpoints hold the trainable state (adapter + head, or what a whole-model method trains), not the
        frozen rest."""
        accelerator = self.accelerator

        def save_hook(models, weights, output_dir):
            # Accelerate calls this on every process: one writer (the main process), else under DDP every rank
            # writes the same files at once.
            for model in models:
                save_trainable_weights(accelerator.unwrap_model(model), Path(output_dir) / "adapter", accelerator)
            weights.clear()

        def load_hook(models, input_dir):
            for _ in range(len(models)):
                load_trainable(accelerator.unwrap_model(models.pop()), Path(input_dir) / "adapter")

        accelerator.register_save_state_pre_hook(save_hook)
        accelerator.register_load_state_pre_hook(load_hook)

    # -- the loop ---------------------------------------------------------------------------------------------------
    def resume(self) -> None:
        self.start_epoch, self.skip_batches = 0, 0
        if self.checkpoint is None:
            return
        self.accelerator.print(f"Resuming from {self.checkpoint}")
        try:
            self.accelerator.load_state(str(self.checkpoint))
        except AdapterMismatchError:
            raise
        except Exception as error:  # a checkpoint older than file records (those are checked before)
            raise SystemExit(
                f"error: cannot load checkpoint {self.checkpoint}: {type(error).__name__}: {error}"
            ) from error
        state = json.loads((self.checkpoint / TRAINING_STATE_FILE).read_text())
        self.completed_steps = state["completed_steps"]
        self.train_loss = state.get("train_loss", float("nan"))
        self.start_epoch = self.completed_steps // self.steps_per_epoch
        batches_done = self.completed_steps % self.steps_per_epoch
        self.skip_batches = batches_done * self.config.gradient_accumulation_steps
        if self.skip_batches:  # resumed inside an epoch: its mean loss covers the batches before the checkpoint too
            self.epoch_loss = tuple(state.get("epoch_loss", (0.0, 0)))

    def save_checkpoint(self) -> None:
        """Write ``checkpoint-N`` whole or not at all: into a temporary folder, then renamed by the main process.

        ``training_state.json`` records the run id and each file's size and hash, so that resuming can refuse a
        checkpoint of another run or one whose files were cut short.
        """
        accelerator = self.accelerator
        final = self.output_dir / f"checkpoint-{self.completed_steps}"
        temporary = self.output_dir / f"{TEMPORARY_PREFIX}{final.name}"
        if accelerator.is_main_process and temporary.exists():
            shutil.rmtree(temporary)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()  # every process has written its part (its RNG state)
        if accelerator.is_main_process:
            state = {
                "completed_steps": self.completed_steps,
                "run_id": self.run_id,
                "train_loss": self.epoch_loss[0] / self.epoch_loss[1] if self.epoch_loss[1] else self.train_loss,
                "epoch_loss": self.epoch_loss,
                "files": describe_files(temporary),
            }
            (temporary / TRAINING_STATE_FILE).write_text(json.dumps(state, indent=2))
            replace_folder(temporary, final)
        accelerator.wait_for_everyone()

    def train_loop(self) -> None:
        self.progress = tqdm(
            range(self.max_steps),
            initial=self.completed_steps,
            disable=not self.accelerator.is_local_main_process,
        )
        self.results: dict[str, float] = {}
        self.train_loop_s, self.train_samples = 0.0, 0  # the training loop alone (no evaluation), for throughput
        for epoch in range(self.start_epoch, self.epochs):
            if self.completed_steps >= self.max_steps:  # resumed from the last step's checkpoint
                break
            self.train_epoch(epoch)
            last_epoch = epoch == self.epochs - 1 or self.completed_steps >= self.max_steps
            if self.config.eval_strategy == "epoch" or last_epoch:
                self.evaluate_epoch(epoch)
            if self.mimi is not None:
                self._shrink(epoch)
            if self.config.checkpointing_steps == "epoch":
                self.save_checkpoint()
            if self.completed_steps >= self.max_steps:
                break
        if not self.results:  # resumed from the last step (killed while finishing): evaluate the restored weights
            self.evaluate_epoch(self.epochs - 1)
        if self.report_to:
            self.accelerator.end_training()

    def train_epoch(self, epoch: int) -> None:
        config, accelerator, model = self.config, self.accelerator, self.model
        model.train()
        loader = self.loaders.train
        if epoch == self.start_epoch:
            loader = accelerator.skip_first_batches(loader, self.skip_batches)
        every = int(config.checkpointing_steps) if config.checkpointing_steps.isdigit() else 0
        running, seen = self.epoch_loss if epoch == self.start_epoch else (0.0, 0)
        loop_start = time.perf_counter()
        for batch in loader:
            self.train_samples += len(batch["labels"])
            with accelerator.accumulate(model):
                loss = self.task.loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
            running, seen = running + loss.item(), seen + 1
            self.epoch_loss = (running, seen)
            if accelerator.sync_gradients:
                self.completed_steps += 1
                self.progress.update(1)
                self.progress.set_postfix(loss=f"{loss.item():.4f}")
                if self.report_to:
                    logged = {"train_loss": loss.item(), "lr": self.scheduler.get_last_lr()[0]}
                    accelerator.log(logged, step=self.completed_steps)
                if every and self.completed_steps % every == 0:
                    self.save_checkpoint()
            if self.completed_steps >= self.max_steps:
                break
        self.train_loop_s += time.perf_counter() - loop_start
        self.train_loss = running / max(seen, 1)

    # -- evaluation -------------------------------------------------------------------------------------------------
    def evaluate_epoch(self, epoch: int) -> None:
        self.results = self.task.evaluate(self.model, self.loaders.validation, self.accelerator, self.labels)
        scalars = {k: v for k, v in self.results.items() if isinstance(v, float)}  # not per-class lists
        scores = ", ".join(f"{k} {v:.4f}" for k, v in scalars.items())
        self.accelerator.print(f"epoch {epoch}: train loss {self.train_loss:.4f}, {scores}")
        if self.report_to:
            logged = {f"eval_{k}": v for k, v in scalars.items()} | {"epoch": epoch}
            self.accelerator.log(logged, step=self.completed_steps)

    def _shrink(self, epoch: int) -> None:
        shrunk = self.mimi.on_epoch_end(epoch, self.optimizer)
        if shrunk is not None:
            self.accelerator.print(
                f"MiMi cycle {shrunk['cycle']}: {shrunk['neurons']} hidden neurons, {shrunk['adapter_params']:,} "
                f"adapter parameters ({len(shrunk['removed_sites'])} adapters removed)"
            )

    # -- outputs ----------------------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        accelerator = self.accelerator
        if self.mimi is not None:
            self.trainable, self.total = count_parameters(self.model)
        test = self.loaders.test
        test_results = self.task.evaluate(self.model, test, accelerator, self.labels) if test is not None else {}
        accelerator.wait_for_everyone()
        # Under FSDP gathering the weights takes every process; the main one writes them.
        save_final_weights(accelerator.unwrap_model(self.model), self.output_dir, accelerator)
        final = {
            **{f"eval_{k}": v for k, v in self.results.items()},
            **{f"test_{k}": v for k, v in test_results.items()},
            "train_loss": self.train_loss,
            "train_samples_per_second": self.train_samples * accelerator.num_processes / max(self.train_loop_s, 1e-9),
            "train_runtime_s": round(time.perf_counter() - self.started, 1),
            "completed_steps": self.completed_steps,
            "num_processes": accelerator.num_processes,
            "trainable_params": self.trainable,
            "total_params": self.total,
            "run_id": self.run_id,
        }
        if self.mimi is not None:
            final["mimi"] = self.mimi.summary()
        if accelerator.is_main_process:
            self.write_outputs(final)
        accelerator.wait_for_everyone()
        return final

    def write_outputs(self, final: dict[str, Any]) -> None:
        """``all_results.json`` and the model card beside the saved weights; the push when asked for."""
        config, output_dir = self.config, self.output_dir
        model = self.accelerator.unwrap_model(self.model)
        whole_model = self.method.saves_whole_model
        if whole_model:  # config.json + model.safetensors + the processor: loads with transformers alone
            self.processor.save_pretrained(output_dir)
            weights_bytes = final["model_bytes"] = (output_dir / "model.safetensors").stat().st_size
        else:
            weights_bytes = final["adapter_bytes"] = (output_dir / ADAPTER_FILE).stat().st_size
        self.task.save_extras(model, self.processor, output_dir)
        self.card_fields = {
            "base_model": config.model_name_or_path,
            "method": config.method,
            "dataset": self.task.dataset_label(config),
            "evaluated_on": self.evaluated_on,
            "metrics": {k.removeprefix("eval_"): v for k, v in final.items() if k.startswith("eval_")},
            "hyperparameters": self.hyperparameters(final["num_processes"]),
            "trainable_params": self.trainable,
            "total_params": self.total,
            "adapter_bytes": weights_bytes,
            "repo_id": config.hub_model_id,
            "num_labels": model.config.num_labels if hasattr(model, "config") else None,
            "whole_model": whole_model,
        }
        self.task.write_model_card(output_dir, **self.card_fields)
        # Last, and whole or not at all: its run id marks the run finished (a resumption then changes nothing).
        temporary = output_dir / f"{TEMPORARY_PREFIX}{RESULTS_FILE}"
        temporary.write_text(json.dumps(final, indent=2))
        temporary.replace(output_dir / RESULTS_FILE)
        if config.push_to_hub:
            self.push()

    def push(self) -> None:
        from ..sharing.hub import push_to_hub

        config = self.config
        url = push_to_hub(self.output_dir, config.hub_model_id or self.output_dir.name, token=config.hub_token)
        print(f"Pushed to {url}")

    def hyperparameters(self, num_processes: int) -> dict[str, Any]:
        """The card's hyperparameter table: the recipe, then the method's own options."""
        config = self.config
        names = ["method", "learning_rate", "weight_decay", "lr_scheduler_type", "num_warmup_steps"]
        names += ["num_train_epochs", "max_train_steps", "per_device_train_batch_size", "gradient_accumulation_steps"]
        names += ["max_grad_norm", "mixed_precision", "seed"]
        table = {name: getattr(config, name) for name in names} | {"num_processes": num_processes}
        if not self.method.saves_whole_model:
            table["adapter_lr_scale"] = config.adapter_lr_scale
        table.update(self.method.resolve_options(self.method_options()))
        if config.mimi_target is not None:
            table.update({k: getattr(config, k) for k in ("mimi_target", "mimi_rho", "mimi_epochs_per_cycle")})
            if config.mimi_balanced:
                table["mimi_balanced"] = True
        return table


def train(config: RunConfig, task: TrainingTask) -> dict[str, Any]:
    """Run one fine-tuning job of ``task``; returns the final results.

    Example::

        from mona_peft.tasks.image_classification import ImageClassificationTask
        from mona_peft.training import RunConfig, train

        config = RunConfig(method="lora", max_train_steps=20, output_dir="out", report_to="none")
        results = train(config, ImageClassificationTask())
        print(results["eval_top1"])
    """
    return FineTuningRun(config, task).execute()
