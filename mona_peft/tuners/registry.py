"""The one place that registers mona_peft's methods: with PEFT, and as fine-tuning methods of the scripts.

Each method package declares itself at the bottom of its own ``__init__`` (as PEFT's methods do):

- :func:`register_method` adds its ``PeftType`` and registers its config and tuner with PEFT;
- :func:`declare_method` declares the fine-tuning method(s) the scripts, model cards, the benchmark and MiMi know
  it by: a :class:`MethodSpec` (builder, card text, accepted options, what it saves, its parameters).

PEFT keeps its method names in the closed enum ``peft.utils.PeftType`` and ``register_peft_method`` refuses names
that are not members of it. We therefore add a real ``str`` enum member at import time, then register normally.
Both steps are idempotent (re-importing or reloading ``mona_peft`` is harmless) and fail loudly if a PEFT release
ships a method of the same name or prefix, because silently shadowing it would load the wrong adapters.

This module imports no method package: ``mona_peft/tuners/__init__.py`` imports them, and importing one registers it.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from peft.mapping import (
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
)
from peft.utils import PeftType, register_peft_method
from torch import nn

# Marks enum members created by this module, so re-registration can tell ours from PEFT's.
_OWNER_ATTRIBUTE = "_mona_peft_owned"

#: PEFT releases whose internals (enum layout, mappings, tuner hooks) this module was tested with.
TESTED_PEFT_VERSIONS = ("0.21",)


def add_peft_type(name: str) -> PeftType:
    """Return ``PeftType[name]``, creating it as a proper ``str`` enum member if needed.

    Raises ``RuntimeError`` if PEFT itself already defines ``name``.
    """
    value = name.upper()
    existing = PeftType.__members__.get(value)
    if existing is not None:
        if not getattr(existing, _OWNER_ATTRIBUTE, False):
            raise RuntimeError(
                f"PEFT now ships its own PeftType.{value}; mona_peft would shadow it. "
                "Pin peft to a tested version (see mona_peft.tuners.registry.TESTED_PEFT_VERSIONS) or report this."
            )
        return existing
    if not issubclass(PeftType, str) or not issubclass(PeftType, enum.Enum):
        raise RuntimeError("peft.utils.PeftType is no longer a str Enum; mona_peft cannot register its methods.")

    member = str.__new__(PeftType, value)
    member._name_ = value
    member._value_ = value
    member.__objclass__ = PeftType
    setattr(member, _OWNER_ATTRIBUTE, True)
    PeftType._member_map_[value] = member
    PeftType._value2member_map_[value] = member
    PeftType._member_names_.append(value)
    type.__setattr__(PeftType, value, member)
    return member


#: name -> (config class, tuner class) of every PEFT type registered here, for :func:`register_all`.
_PEFT_TYPES: dict[str, tuple[type, type]] = {}


def register_method(name: str, config_cls: type, model_cls: type) -> None:
    """Register one method with PEFT under ``name`` and the prefix ``name + "_"``, idempotently."""
    prefix = f"{name}_"
    for other_type, other_prefix in PEFT_TYPE_TO_PREFIX_MAPPING.items():
        if other_prefix == prefix and other_type != name.upper():
            raise RuntimeError(f"PEFT method {other_type} already uses the prefix {prefix!r}; mona_peft cannot use it.")
    peft_type = add_peft_type(name)
    _PEFT_TYPES[name] = (config_cls, model_cls)
    registered = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if registered is not None:
        if registered.__module__ != config_cls.__module__ or registered.__qualname__ != config_cls.__qualname__:
            raise RuntimeError(f"PEFT type {peft_type} is already registered to {registered!r}.")
        # Same class from a reloaded module: point PEFT at the fresh objects.
        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type] = config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[peft_type] = model_cls
        return
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)


def register_all() -> None:
    """Register again, with PEFT, every PEFT type the method packages registered (idempotent)."""
    for name, (config_cls, model_cls) in list(_PEFT_TYPES.items()):
        register_method(name, config_cls, model_cls)


# ------------------------------------------------------------------------------------------ fine-tuning methods


def _in_modules(parameter_name: str, module_names: list[str]) -> bool:
    """Whether the parameter lies inside one of ``module_names`` (matched on whole name parts, as PEFT does)."""
    return any(f".{module}." in f".{parameter_name}" for module in module_names)


@dataclass(frozen=True)
class MethodSpec:
    """What the scripts, model cards, the benchmark and MiMi need to know of one fine-tuning method.

    A method is either a PEFT method (``peft_config`` builds its config; ``save_pretrained`` writes an adapter) or
    one that only chooses which of the model's own parameters train (``trains``; the whole model is saved).

    Args:
        name: the ``--method`` value, e.g. ``"mona"``.
        display_name: how model cards and reports name it, e.g. ``"Mona"``.
        summary: one or two sentences for the model card.
        options: the options the method accepts, with their defaults (``{"inner_dim": 64}``). Each becomes a flag of
            the training scripts (:func:`mona_peft.training.config.method_flags`), named as the option unless
            ``option_flags`` says otherwise; methods that share an option name share its flag.
        option_help: one line of help per option, for its flag (every option needs one).
        option_flags: option -> flag name where they differ (Mona's ``gradient_checkpointing`` is
            ``--mona_gradient_checkpointing``, apart from the model's own gradient checkpointing).
        resumable_options: options that change how the steps run, not what they compute: an interrupted run may
            resume with another value (Mona's ``gradient_checkpointing``).
        peft_config: ``(model, head, **options) -> PeftConfig`` of a PEFT method; ``head`` is ``modules_to_save``.
        trains: ``(model) -> (parameter_name -> bool)``: which backbone parameters a whole-model method trains (the
            head always trains).
        parameter_markers: name fragments of the parameters the method adds inside the backbone (they get the
            training script's ``--adapter_lr_scale``).
        lr_scales: name fragment -> factor: those of the method's parameters train at ``factor`` times the adapter
            learning rate (see :func:`mona_peft.tuners.methods.parameter_groups`); the function is unchanged.
        site: the :class:`~mona_peft.tuners.sites.AdapterSite` subclass through which MiMi finds, scores and shrinks
            the method's adapters; ``None``: MiMi cannot shrink them.
        dense: whether the dense benchmarks (segmentation, detection, instance segmentation) run it by default. VPT
            does not: its prompts were never part of the dense comparisons.
        step_cost: its training step's time relative to full fine-tuning's (Swin-T at 224, eager,
            ``benchmarks/speed.json``); the benchmark starts the slowest jobs first.

    Example::

        declare_method(
            MethodSpec("bitfit", "BitFit", "Trains the bias terms.", trains=lambda model: lambda n: n.endswith(".bias"))
        )
    """

    name: str
    display_name: str
    summary: str
    options: Mapping[str, Any] = field(default_factory=dict)
    option_help: Mapping[str, str] = field(default_factory=dict)
    option_flags: Mapping[str, str] = field(default_factory=dict)
    resumable_options: tuple[str, ...] = ()
    peft_config: Callable[..., Any] | None = None
    trains: Callable[[nn.Module], Callable[[str], bool]] | None = None
    parameter_markers: tuple[str, ...] = ()
    lr_scales: Mapping[str, float] = field(default_factory=dict)
    site: type | None = None
    dense: bool = True
    step_cost: float = 1.0

    def __post_init__(self) -> None:
        if (self.peft_config is None) == (self.trains is None):
            raise ValueError(f"Method {self.name!r} needs exactly one of peft_config (a PEFT method) and trains.")
        for what, names in (("option_help", set(self.option_help)), ("option_flags", set(self.option_flags))):
            if names - set(self.options):
                raise ValueError(
                    f"Method {self.name!r}: {what} names {sorted(names - set(self.options))}, not options."
                )
        if set(self.options) - set(self.option_help):
            raise ValueError(
                f"Method {self.name!r}: options {sorted(set(self.options) - set(self.option_help))} need help."
            )
        for name in ("options", "option_help", "option_flags"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        object.__setattr__(self, "lr_scales", MappingProxyType(dict(self.lr_scales)))

    @property
    def shrinkable(self) -> bool:
        """Whether MiMi can shrink the method's adapters (it declares a ``site``)."""
        return self.site is not None

    @property
    def saves_whole_model(self) -> bool:
        """Whether ``save_pretrained`` writes the whole model (``True``) or a PEFT adapter (``False``)."""
        return self.peft_config is None

    def flag(self, option: str) -> str:
        """The command-line flag (without ``--``) of ``option``."""
        return self.option_flags.get(option, option)

    def resolve_options(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The defaults updated with ``options``; an option the method does not accept raises ``ValueError``."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            accepted = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"Method {self.name!r} does not accept the option(s) {unknown}; it accepts: {accepted}.")
        return {**self.options, **options}

    def build(self, model: nn.Module, head: list[str], **options: Any) -> nn.Module:
        """Apply the method to ``model``; the modules named in ``head`` always train.

        Returns a ``PeftModel`` for a PEFT method, else ``model`` itself with only its chosen parameters trainable.
        """
        options = self.resolve_options(options)
        if not any(_in_modules(name, head) for name, _ in model.named_parameters()):
            raise ValueError(f"{type(model).__name__} has no head module named {head} to train.")
        if self.peft_config is not None:
            from peft import get_peft_model

            config = self.peft_config(model, head, **options)
            with warnings.catch_warnings():
                # The targets come from the architecture registry; PEFT's generic warning about a target type it has
                # no layer for (LN tuning's LayerNorms) tells the user nothing.
                warnings.filterwarnings("ignore", message="Unsupported layer type .*LayerNorm")
                return get_peft_model(model, config)
        trains = self.trains(model)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(_in_modules(name, head) or trains(name))
        return model

    def is_own_parameter(self, name: str) -> bool:
        """Whether the parameter ``name`` is one the method added inside the backbone."""
        return any(marker in name for marker in self.parameter_markers)

    def lr_scale(self, name: str) -> float:
        """The factor on the adapter learning rate of the method's parameter ``name`` (1.0 unless ``lr_scales``)."""
        return next((factor for marker, factor in self.lr_scales.items() if marker in name), 1.0)


_METHODS: dict[str, MethodSpec] = {}


def declare_method(spec: MethodSpec) -> MethodSpec:
    """Declare a fine-tuning method (idempotent for the same name); returns ``spec``."""
    _METHODS[spec.name] = spec
    return spec


def methods() -> Mapping[str, MethodSpec]:
    """Every declared fine-tuning method by name, in declaration order (read-only)."""
    return MappingProxyType(_METHODS)


def get_method(name: str) -> MethodSpec:
    """The declared method ``name``; an unknown name raises ``ValueError`` listing the available ones."""
    if name not in _METHODS:
        raise ValueError(f"Unknown method {name!r}; available: {', '.join(sorted(_METHODS))}.")
    return _METHODS[name]
