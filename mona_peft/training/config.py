"""The typed configuration of one fine-tuning run, shared by every task's script, the benchmark and the tests.

The scripts' flags are generated from :class:`RunConfig` by transformers' ``HfArgumentParser`` (one flag per field,
named as in transformers' ``no_trainer`` examples), and from the methods' declared options (:func:`method_flags`:
``--inner_dim``, ``--rank``, ...); the benchmark and the tests build a ``RunConfig`` directly, with the options in
``options``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from typing import Any, Literal, Optional

from ..tuners.registry import get_method, methods

#: Fields that may differ between an interrupted run and its resumption (or a moved run dir): still the same run.
# Compiling and recomputing change how the steps run, not what they compute: a run may be resumed with or without.
RESUMABLE_FIELDS = frozenset(
    {
        "output_dir",
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "push_to_hub",
        "hub_token",
        "report_to",
        "torch_compile",
        "torch_compile_backend",
        "torch_compile_mode",
    }
)


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class RunConfig:
    """Everything one fine-tuning run needs. Defaults give the offline default run of the task's script.

    Example::

        from mona_peft.training import RunConfig, train

        results = train(RunConfig(method="mona", output_dir="out", max_train_steps=10, report_to="none"))
    """

    # model and data
    model_name_or_path: str | None = field(
        default=None, metadata=_help("Hub id or local path (default: the task's shipped pretrained backbone).")
    )
    dataset_name: str | None = field(default=None, metadata=_help("Hub dataset."))
    dataset_config_name: str | None = field(default=None, metadata=_help("Configuration of --dataset_name."))
    train_dir: str | None = field(default=None, metadata=_help("Local training data (layout: see the task)."))
    validation_dir: str | None = field(default=None, metadata=_help("Local validation data, same layout."))
    validation_fraction: float = field(
        default=0.15, metadata=_help("Carved from train when there is no validation split.")
    )
    task: str | None = field(default=None, metadata=_help("An offline benchmark task (train/validation/test)."))
    task_seed: int | None = field(
        default=None, metadata=_help("Seed of the --task split (default 0), independent of --seed.")
    )
    output_dir: str | None = field(
        default=None, metadata=_help("Default: the task's (outputs/mona-digits for classification).")
    )
    overwrite_output_dir: bool = field(default=False, metadata=_help("Allow an output dir that holds a different run."))
    # method
    method: str = field(default="mona", metadata=_help("Fine-tuning method (see mona_peft.tuners.registry)."))
    # The method's options as given (``{"inner_dim": 16}``); unset ones take the task's, then the method's defaults.
    # On the command line each has a flag of its own (method_flags), so this field has none.
    options: dict[str, Any] = field(default_factory=dict, metadata={"help": argparse.SUPPRESS})
    # The task's own flags (``--image_size``, ``--detector``, ...), filled in by the run from the task
    # (``TrainingTask.settings``): they change what trains, so they enter the run's identity like the fields above.
    task_settings: dict[str, Any] = field(default_factory=dict, metadata={"help": argparse.SUPPRESS})
    adapter_lr_scale: float = field(
        default=2.0, metadata=_help("Adapter lr = this x --learning_rate (2 in the paper).")
    )
    mimi_target: str | None = field(
        default=None,
        metadata=_help(
            "MiMi: shrink the adapters to this size, '4x' (a quarter of the hidden neurons) or a number of adapter "
            "parameters ('20000', '20k'); --num_train_epochs becomes MiMi's total."
        ),
    )
    mimi_rho: float = field(default=0.5, metadata=_help("MiMi: fraction removed per cycle."))
    mimi_epochs_per_cycle: int = field(
        default=1, metadata=_help("MiMi: epochs before the first shrink and after each.")
    )
    mimi_ranking: Literal["global", "local"] = field(default="global", metadata=_help("MiMi: neuron ranking."))
    mimi_balanced: bool = field(
        default=False,
        metadata=_help("MiMi ablation: score each kind of parameter against its mean magnitude (not in the paper)."),
    )
    # optimisation
    num_train_epochs: int = field(default=3, metadata=_help("Training epochs."))
    max_train_steps: int | None = field(default=None, metadata=_help("Overrides --num_train_epochs."))
    per_device_train_batch_size: int = field(default=32, metadata=_help("Training batch per process."))
    per_device_eval_batch_size: int = field(default=64, metadata=_help("Evaluation batch per process."))
    learning_rate: float = field(default=1e-3, metadata=_help("Base learning rate (the head's)."))
    weight_decay: float = field(default=0.05, metadata=_help("AdamW weight decay."))
    max_grad_norm: float = field(default=5.0, metadata=_help("Gradient clipping (0: none)."))
    lr_scheduler_type: str = field(default="cosine", metadata=_help("transformers scheduler name."))
    num_warmup_steps: int = field(default=10, metadata=_help("Warm-up steps."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("Batches per optimizer step."))
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(default=None, metadata=_help("Accelerate's."))
    seed: int = field(default=42, metadata=_help("Training seed."))
    torch_compile: bool = field(
        default=False,
        metadata=_help("Compile the model with torch.compile once the method is applied (as transformers' flag)."),
    )
    torch_compile_backend: str | None = field(
        default=None, metadata=_help("torch.compile backend (default 'inductor'); setting it implies --torch_compile.")
    )
    torch_compile_mode: str | None = field(
        default=None,
        metadata=_help("torch.compile mode ('default', 'reduce-overhead', 'max-autotune'); implies --torch_compile."),
    )
    # checkpoints, evaluation, logging, sharing
    checkpointing_steps: str = field(default="epoch", metadata=_help("'epoch', a number of steps, or 'no'."))
    eval_strategy: Literal["epoch", "end"] = field(
        default="epoch", metadata=_help("Evaluate after every epoch or at the end.")
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata=_help("A checkpoint folder, or 'latest' in --output_dir.")
    )
    report_to: str = field(default="tensorboard", metadata=_help("Accelerate tracker ('tensorboard', 'all', 'none')."))
    push_to_hub: bool = field(default=False, metadata=_help("Upload the result with its model card."))
    hub_model_id: str | None = field(default=None, metadata=_help("Repository id (default: the output dir's name)."))
    hub_token: str | None = field(default=None, metadata=_help("Hub token."))
    dataloader_num_workers: int = field(default=0, metadata=_help("DataLoader worker processes."))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the flag for a setting no run can use."""
        if self.method not in methods():
            raise ValueError(f"unknown --method {self.method!r}; available: {', '.join(sorted(methods()))}.")
        steps = str(self.checkpointing_steps)
        if steps not in ("epoch", "no") and not (steps.isdigit() and int(steps) > 0):
            raise ValueError(
                f"--checkpointing_steps must be 'epoch', 'no' or a positive number of steps, got "
                f"{self.checkpointing_steps!r}."
            )
        # Zero steps would save an untrained adapter and a model card as if training had finished.
        if self.max_train_steps is not None and self.max_train_steps < 1:
            raise ValueError(f"--max_train_steps must be at least 1, got {self.max_train_steps}.")
        if self.max_train_steps is None and self.num_train_epochs < 1:
            raise ValueError(
                f"--num_train_epochs must be at least 1 (or give --max_train_steps), got {self.num_train_epochs}."
            )
        spec = get_method(self.method)
        for option in sorted(set(self.options) - set(spec.options)):
            flag = next((flag for flag in method_flags().values() if flag.option == option), None)
            accepted = ", ".join(sorted(f"--{spec.flag(name)}" for name in spec.options)) or "no options"
            raise ValueError(
                f"--{flag.name if flag else option} does not apply to --method {self.method} (it takes {accepted})."
            )
        if self.mimi_target is not None:
            if not spec.shrinkable:
                shrinkable = " and ".join(name for name, other in methods().items() if other.shrinkable)
                raise ValueError(f"--mimi_target shrinks {shrinkable} adapters, not {self.method}.")
            if self.max_train_steps is not None or self.resume_from_checkpoint is not None:
                raise ValueError(
                    "--mimi_target sets the number of epochs itself and cannot resume a run (the adapter shrinks); "
                    "drop --max_train_steps / --resume_from_checkpoint."
                )

    def compile_options(self) -> dict[str, Any] | None:
        """``torch.compile``'s keyword arguments when the run compiles the model, else ``None``.

        As in transformers' ``TrainingArguments``, a backend or a mode implies ``torch_compile``.

        Example::

            >>> RunConfig(torch_compile_backend="aot_eager").compile_options()
            {'backend': 'aot_eager'}
        """
        if not (self.torch_compile or self.torch_compile_backend or self.torch_compile_mode):
            return None
        options = {"backend": self.torch_compile_backend, "mode": self.torch_compile_mode}
        return {name: value for name, value in options.items() if value is not None}

    def method_options(self, task_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
        """The method's options as given, over ``task_defaults`` (a task's defaults for this method); unset ones take
        the method's defaults."""
        return dict(task_defaults or {}) | dict(self.options)

    def data_sources(self) -> dict[str, Any]:
        """The keyword arguments of the tasks' data loaders (Hub dataset, local folders, validation split)."""
        names = ("dataset_name", "dataset_config_name", "train_dir", "validation_dir", "validation_fraction", "seed")
        return {name: getattr(self, name) for name in names}

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same run (recorded in the output dir; resumption must match it)."""
        values = {k: v for k, v in sorted(asdict(self).items()) if k not in RESUMABLE_FIELDS | {"task_settings"}}
        resumable = get_method(self.method).resumable_options if self.method in methods() else ()
        values["options"] = {k: v for k, v in sorted(self.options.items()) if k not in resumable}
        clashing = sorted(set(self.task_settings) & set(values))
        if clashing:
            raise ValueError(f"The task's settings {clashing} have the names of run settings; rename them.")
        values.update(sorted(self.task_settings.items()))  # by their flag names, so a refusal names the flag
        return json.loads(json.dumps(values))

    def scalars(self) -> dict[str, int | float | str | bool]:
        """The settings a tracker (TensorBoard) can record."""
        settings = {f.name: getattr(self, f.name) for f in fields(self)} | self.options | self.task_settings
        return {name: value for name, value in settings.items() if isinstance(value, (int, float, str, bool))}


@dataclass(frozen=True)
class MethodFlag:
    """The command-line flag of a method option (``--inner_dim``), shared by the methods whose option it sets."""

    name: str
    option: str
    type: type
    help: str
    defaults: dict[str, Any]

    @property
    def methods(self) -> list[str]:
        return list(self.defaults)


def method_flags() -> dict[str, MethodFlag]:
    """Every method option's flag by name, from the declarations (``MethodSpec.options``, ``option_help``,
    ``option_flags``); raises if two methods give one flag different options or types."""
    flags: dict[str, MethodFlag] = {}
    for name, spec in methods().items():
        for option, default in spec.options.items():
            flag = spec.flag(option)
            known = flags.get(flag)
            if known is None:
                flags[flag] = MethodFlag(flag, option, type(default), spec.option_help[option], {name: default})
            elif (known.option, known.type) != (option, type(default)):
                raise ValueError(
                    f"--{flag} would set {known.option!r} ({known.type.__name__}) of {known.methods} and {option!r} "
                    f"({type(default).__name__}) of {name!r}: give one of them another flag (option_flags)."
                )
            else:
                known.defaults[name] = default
    return flags


def _method_flags_dataclass(flags: dict[str, MethodFlag]) -> type:
    """A dataclass with one optional field per method flag, for ``HfArgumentParser``."""
    specs = []
    for flag in flags.values():
        defaults = ", ".join(f"{method} {default}" for method, default in flag.defaults.items())
        help_text = f"{flag.help} Methods: {', '.join(flag.methods)} (defaults: {defaults})."
        specs.append((flag.name, Optional[flag.type], field(default=None, metadata={"help": help_text})))  # noqa: UP045
    return make_dataclass("MethodOptionFlags", specs)


def parse_args(
    argv: list[str] | None = None,
    description: str | None = None,
    extra: type | None = None,
    defaults: dict[str, Any] | None = None,
):
    """A :class:`RunConfig` from command-line flags; a setting no run can use exits with ``error: ...``.

    ``defaults`` replace ``RunConfig``'s defaults (a task's recipe). With ``extra`` (a dataclass of a task's own
    flags), returns ``(RunConfig, extra instance)``.
    """
    from transformers import HfArgumentParser

    flags = method_flags()
    parser = HfArgumentParser(
        [RunConfig, _method_flags_dataclass(flags)] + ([extra] if extra else []), description=description
    )
    parser.set_defaults(**(defaults or {}))
    config, given, *rest = parser.parse_args_into_dataclasses(args=argv)
    flag_options = {flag.option: getattr(given, flag.name) for flag in flags.values()}
    config.options = {option: value for option, value in flag_options.items() if value is not None}
    try:
        config.validate()
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    return (config, *rest) if extra else config
