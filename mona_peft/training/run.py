"""The training core: one fine-tuning run of any task under Accelerate, in steps a reader can follow.

:func:`train` runs a :class:`~mona_peft.training.config.RunConfig` on a
:class:`~mona_peft.training.task.TrainingTask`: output dir, data, model and method, optimizer and schedule, the loop
(with adapter-only checkpoints and resumption), evaluation, outputs (weights, ``all_results.json``, model card, push).
"""

from __future__ import annotations

import json
import math
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

from ..methods import adamw, build_method, count_parameters, load_trainable, parameter_groups, save_trainable
from ..registration import get_method
from .config import RunConfig
from .task import TrainingTask

ADAPTER_FILE = "adapter_model.safetensors"
RUN_ARGS_FILE = "run_args.json"
TRAINING_STATE_FILE = "training_state.json"


# ------------------------------------------------------------------------------------------------- output dir


def prepare_output_dir(config: RunConfig) -> Path:
    """Refuse to mix two different runs in one output dir, unless ``overwrite_output_dir``."""
    output_dir = Path(config.output_dir)
    record = output_dir / RUN_ARGS_FILE
    if record.exists() and not config.overwrite_output_dir:
        previous, current = json.loads(record.read_text()), config.identity()
        if previous != current:
            changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            raise SystemExit(
                f"error: {output_dir} already holds a different run (differs in {', '.join(changed)}); "
                "pass --overwrite_output_dir to replace it, or choose another --output_dir."
            )
    elif output_dir.exists() and any(output_dir.iterdir()) and not record.exists() and not config.overwrite_output_dir:
        raise SystemExit(f"error: {output_dir} is not empty and holds no mona_peft run; pass --overwrite_output_dir.")
    return output_dir


def find_checkpoint(config: RunConfig) -> Path | None:
    """The checkpoint ``resume_from_checkpoint`` names (``latest``: the highest ``checkpoint-N`` in the output dir)."""
    if config.resume_from_checkpoint is None:
        return None
    if config.resume_from_checkpoint == "latest":
        candidates = sorted(Path(config.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        if not candidates:
            raise SystemExit(f"error: --resume_from_checkpoint latest: no checkpoint-* folder in {config.output_dir}.")
        return candidates[-1]
    path = Path(config.resume_from_checkpoint)
    if not (path / TRAINING_STATE_FILE).is_file():
        raise SystemExit(
            f"error: --resume_from_checkpoint {path} is not a checkpoint (no {TRAINING_STATE_FILE} there)."
        )
    return path


# ------------------------------------------------------------------------------------------------- the run


@dataclass
class Loaders:
    train: DataLoader
    validation: DataLoader
    test: DataLoader | None


class FineTuningRun:
    """One run; :meth:`execute` performs the steps in order. Use :func:`train` rather than this class directly."""

    def __init__(self, config: RunConfig, task: TrainingTask) -> None:
        config.validate()
        if config.model_name_or_path is None:
            config.model_name_or_path = task.default_model()
        if config.output_dir is None:
            config.output_dir = task.default_output_dir
        self.config, self.task, self.method = config, task, get_method(config.method)
        self.started = time.perf_counter()
        self.mimi = None
        self.completed_steps = 0

    def execute(self) -> dict[str, Any]:
        """Run every step; returns the final results (also written to ``all_results.json``)."""
        self.setup()
        self.load_data()
        self.build_model()
        self.build_optimizer()
        self.resume()
        self.train_loop()
        return self.finish()

    # -- setup: output dir, Accelerate, seed --------------------------------------------------------------------
    def setup(self) -> None:
        config = self.config
        self.output_dir = prepare_output_dir(config)
        self.checkpoint = find_checkpoint(config)
        self.report_to = None if config.report_to == "none" else config.report_to
        self.accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            log_with=self.report_to,
            project_dir=str(self.output_dir),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
        set_seed(config.seed)
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / RUN_ARGS_FILE).write_text(json.dumps(config.identity(), indent=2))
        self.accelerator.wait_for_everyone()

    # -- data -----------------------------------------------------------------------------------------------------
    def load_data(self) -> None:
        config, task = self.config, self.task
        data, self.labels = task.load_data(config)
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
            ),
            validation=loader("validation", batch_size=config.per_device_eval_batch_size),
            # reported once, after training; never used to choose anything
            test=loader("test", batch_size=config.per_device_eval_batch_size) if "test" in data else None,
        )

    # -- model and method -------------------------------------------------------------------------------------------
    def build_model(self) -> None:
        config, accelerator = self.config, self.accelerator
        base = self.task.load_model(config, self.labels)
        self.model = build_method(base, config.method, self.task.head_modules(base), **config.method_options())
        self.trainable, self.total = count_parameters(self.model)
        accelerator.print(
            f"{config.method}: {self.trainable:,} trainable of {self.total:,} parameters "
            f"({100 * self.trainable / self.total:.2f}%)"
        )
        if config.mimi_target is not None:
            self.mimi = self._start_mimi()

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
        self.scheduler = get_scheduler(
            config.lr_scheduler_type,
            self.optimizer,
            num_warmup_steps=config.num_warmup_steps * accelerator.num_processes,
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
            for model in models:
                save_trainable(accelerator.unwrap_model(model), Path(output_dir) / "adapter")
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
        self.accelerator.load_state(str(self.checkpoint))
        self.completed_steps = json.loads((self.checkpoint / TRAINING_STATE_FILE).read_text())["completed_steps"]
        self.start_epoch = self.completed_steps // self.steps_per_epoch
        batches_done = self.completed_steps % self.steps_per_epoch
        self.skip_batches = batches_done * self.config.gradient_accumulation_steps

    def save_checkpoint(self) -> None:
        path = self.output_dir / f"checkpoint-{self.completed_steps}"
        self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process:
            (path / TRAINING_STATE_FILE).write_text(json.dumps({"completed_steps": self.completed_steps}))

    def train_loop(self) -> None:
        self.progress = tqdm(
            range(self.max_steps),
            initial=self.completed_steps,
            disable=not self.accelerator.is_local_main_process,
        )
        self.results: dict[str, float] = {}
        self.train_loss = float("nan")
        self.train_loop_s, self.train_samples = 0.0, 0  # the training loop alone (no evaluation), for throughput
        for epoch in range(self.start_epoch, self.epochs):
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
        if self.report_to:
            self.accelerator.end_training()

    def train_epoch(self, epoch: int) -> None:
        config, accelerator, model = self.config, self.accelerator, self.model
        model.train()
        loader = self.loaders.train
        if epoch == self.start_epoch:
            loader = accelerator.skip_first_batches(loader, self.skip_batches)
        every = int(config.checkpointing_steps) if config.checkpointing_steps.isdigit() else 0
        running, seen = 0.0, 0
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
        }
        if self.mimi is not None:
            final["mimi"] = self.mimi.summary()
        if accelerator.is_main_process:
            self.write_outputs(final)
        accelerator.wait_for_everyone()
        return final

    def write_outputs(self, final: dict[str, Any]) -> None:
        """The trained weights, ``all_results.json`` and the model card; the push when asked for."""
        config, output_dir = self.config, self.output_dir
        model = self.accelerator.unwrap_model(self.model)
        model.save_pretrained(output_dir)
        whole_model = self.method.saves_whole_model
        if whole_model:  # config.json + model.safetensors + the processor: loads with transformers alone
            self.processor.save_pretrained(output_dir)
            weights_bytes = final["model_bytes"] = (output_dir / "model.safetensors").stat().st_size
        else:
            weights_bytes = final["adapter_bytes"] = (output_dir / ADAPTER_FILE).stat().st_size
        (output_dir / "all_results.json").write_text(json.dumps(final, indent=2))
        self.task.save_extras(model, self.processor, output_dir)
        self.task.write_model_card(
            output_dir,
            base_model=config.model_name_or_path,
            method=config.method,
            dataset=self.task.dataset_label(config),
            metrics={k.removeprefix("eval_"): v for k, v in final.items() if k.startswith("eval_")},
            hyperparameters=self.hyperparameters(final["num_processes"]),
            trainable_params=self.trainable,
            total_params=self.total,
            adapter_bytes=weights_bytes,
            repo_id=config.hub_model_id,
            num_labels=model.config.num_labels if hasattr(model, "config") else None,
            whole_model=whole_model,
        )
        if config.push_to_hub:
            from ..hub import push_to_hub

            url = push_to_hub(output_dir, config.hub_model_id or output_dir.name, token=config.hub_token)
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
        table.update(self.method.resolve_options(config.method_options()))
        if config.mimi_target is not None:
            table.update({k: getattr(config, k) for k in ("mimi_target", "mimi_rho", "mimi_epochs_per_cycle")})
        return table


def train(config: RunConfig, task: TrainingTask | None = None) -> dict[str, Any]:
    """Run one fine-tuning job of ``task`` (default: image classification); returns the final results.

    Example::

        from mona_peft.training import RunConfig, train

        results = train(RunConfig(method="lora", max_train_steps=20, output_dir="out", report_to="none"))
        print(results["eval_top1"])
    """
    if task is None:
        from .image_classification import ImageClassificationTask

        task = ImageClassificationTask()
    return FineTuningRun(config, task).execute()
