"""What the configs of mona_peft's PEFT methods (Mona, VPT, Houlsby adapter, AdaptFormer) share.

- :class:`WrappingConfig` records the backbone an adapter was made for (``base_model_type``), so loading it onto
  another architecture fails with both names instead of PEFT's "no target module matched" or, worse, a silent load
  (a ViT adapter on a DeiT), and refuses a local ``adapter_model.safetensors`` that cannot be read, naming the file.
- :class:`BottleneckConfig` adds the fields of the methods that put bottleneck adapters at chosen modules (Mona,
  Houlsby adapter, AdaptFormer): the modules, the bottleneck widths and the modules trained in full, checked in one
  place.
- The ``check_*`` helpers validate one field each in ``__post_init__``, with a message naming the config, the field,
  the value and what is expected. A value of the wrong type raises :class:`ConfigTypeError`, which is a
  ``TypeError`` and, like PEFT's own config errors, a ``ValueError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from peft.config import PeftConfig
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors import SafetensorError, safe_open


class ConfigTypeError(TypeError, ValueError):
    """A config field of the wrong type (a ``ValueError`` too, so code catching PEFT's config errors catches it)."""


class AdapterMismatchError(ValueError):
    """A saved adapter does not fit the model it is loaded onto (architecture, modules, tensor names or shapes)."""


def _expected(owner: str, name: str, value: Any, what: str) -> str:
    return f"{owner}.{name} must be {what}, got {value!r} ({type(value).__name__})."


def check_int(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is an integer (not a bool) ``>= minimum``; else ``ConfigTypeError`` / ``ValueError``."""
    what = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigTypeError(_expected(owner, name, value, what))
    if value < minimum:
        raise ValueError(_expected(owner, name, value, what))
    return value


def check_fraction(owner: str, name: str, value: Any) -> float:
    """``value`` as a float if it is a real number in ``[0, 1)`` (a probability such as dropout)."""
    what = "in [0, 1) (a number)"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigTypeError(_expected(owner, name, value, what))
    if not 0.0 <= value < 1.0:
        raise ValueError(_expected(owner, name, value, what))
    return float(value)


def check_number(owner: str, name: str, value: Any) -> float:
    """``value`` as a float if it is a finite real number (not a bool or a string)."""
    what = "a finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigTypeError(_expected(owner, name, value, what))
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(_expected(owner, name, value, what))
    return float(value)


def check_bool(owner: str, name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ConfigTypeError(_expected(owner, name, value, "True or False"))
    return value


def check_choice(owner: str, name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        error = ValueError if isinstance(value, str) else ConfigTypeError
        names = [repr(choice) for choice in choices]
        what = " or ".join(names) if len(names) == 2 else "one of " + ", ".join(names)
        raise error(_expected(owner, name, value, what))
    return value


def check_target_modules(owner: str, name: str, value: Any) -> Any:
    """``value`` if it is ``None``, a regex or a list of module names (strings); lists come back as lists."""
    if isinstance(value, (list, tuple, set)) and all(isinstance(v, str) for v in value):
        return list(value)
    if value is not None and not isinstance(value, str):
        raise ConfigTypeError(_expected(owner, name, value, "a regex, a list of module names or None"))
    return value


def validate_inner_dims(name: str, inner_dim: Any, inner_dim_pattern: Any, allow_absent: bool = False) -> None:
    """Raise ``ValueError`` unless the bottleneck widths are positive integers.

    With ``allow_absent``, ``inner_dim_pattern`` may also hold 0: no adapter at those modules (MiMi's removed ones).
    """
    check_int(name, "inner_dim", inner_dim)
    if inner_dim_pattern is not None:
        if not isinstance(inner_dim_pattern, dict):
            raise ValueError(f"{name}.inner_dim_pattern must be a dict of regex -> width, got {inner_dim_pattern!r}.")
        smallest = 0 if allow_absent else 1
        bad = {
            k: v for k, v in inner_dim_pattern.items() if not isinstance(v, int) or isinstance(v, bool) or v < smallest
        }
        if bad:
            what = "non-negative integers (0: no adapter there)" if allow_absent else "positive integers"
            raise ValueError(f"{name}.inner_dim_pattern widths must be {what}, got {bad}.")


def check_safetensors_file(path: str | os.PathLike) -> None:
    """Raise ``AdapterMismatchError`` naming ``path`` if it is not a complete safetensors file.

    Reads only the header and the file size (safetensors checks that the tensors cover the file exactly), so a
    truncated or overwritten file is caught before PEFT's loader fails on it without naming it.
    """
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as error:
        raise AdapterMismatchError(
            f"{path} is not a complete safetensors file ({error}); it may have been cut short while being written "
            "or copied. Save or download the adapter again."
        ) from error


@dataclass
class WrappingConfig(PeftConfig):
    """Base of the configs of mona_peft's methods.

    Args:
        base_model_type: ``config.model_type`` of the backbone the adapter was made for (``"swin"``, ``"vit"``,
            ...). Recorded when the adapter is added to a model; loading the adapter onto another architecture
            raises :class:`AdapterMismatchError` naming both.

    Example (every method's config is used this way; each config's own example shows its arguments):

        ```py
        >>> import mona_peft
        >>> from peft import get_peft_model
        >>> from transformers import ViTConfig, ViTForImageClassification
        >>> model = ViTForImageClassification(ViTConfig(num_labels=10))
        >>> model = get_peft_model(model, mona_peft.MonaConfig(modules_to_save=["classifier"]))
        >>> model.print_trainable_parameters()  # doctest: +SKIP
        ```
    """

    base_model_type: str | None = field(
        default=None,
        metadata={"help": "model_type of the backbone the adapter was made for; recorded when it is created."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base_model_type is not None and not isinstance(self.base_model_type, str):
            raise ConfigTypeError(
                _expected(type(self).__name__, "base_model_type", self.base_model_type, "a model_type string or None")
            )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any
    ) -> WrappingConfig:
        """PEFT's ``from_pretrained``; for a local folder also checks that its weights file is complete."""
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        weights = Path(pretrained_model_name_or_path, subfolder or "", SAFETENSORS_WEIGHTS_NAME)
        if weights.is_file():
            check_safetensors_file(weights)
        return config


@dataclass
class BottleneckConfig(WrappingConfig):
    """Base of the configs of the methods that put bottleneck adapters at chosen modules (Mona, Houlsby adapter,
    AdaptFormer). Each method redeclares ``target_modules`` with its own help (which modules it adapts by default).

    Args:
        target_modules: modules to adapt, as a regex or a list of name suffixes; ``None``: the method's default.
        exclude_modules: modules not to adapt (same syntax as PEFT's).
        inner_dim: bottleneck width.
        inner_dim_pattern: per-module widths overriding ``inner_dim``: ``{regex: width}``, matched against the end of
            the module name as LoRA's ``rank_pattern``. Where ``allows_absent_adapters``, a width of 0 means no
            adapter there (MiMi's removed ones).
        modules_to_save: modules trained and saved in full, e.g. ``["classifier"]``.
    """

    #: Whether ``inner_dim_pattern`` may hold 0: no adapter at those modules.
    allows_absent_adapters: ClassVar[bool] = True

    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Modules to adapt (regex or name suffixes); default: the method's."}
    )
    exclude_modules: list[str] | str | None = field(default=None, metadata={"help": "Modules not to adapt."})
    inner_dim: int = field(default=64, metadata={"help": "Bottleneck width."})
    inner_dim_pattern: dict[str, int] | None = field(
        default=None, metadata={"help": "Per-module bottleneck widths, {regex: width}, overriding inner_dim."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained and saved in full, e.g. ['classifier']."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        self.target_modules = check_target_modules(owner, "target_modules", self.target_modules)
        self.exclude_modules = check_target_modules(owner, "exclude_modules", self.exclude_modules)
        validate_inner_dims(owner, self.inner_dim, self.inner_dim_pattern, allow_absent=self.allows_absent_adapters)
