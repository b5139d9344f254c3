"""The one place that registers mona_peft's methods with PEFT.

PEFT keeps its method names in the closed enum ``peft.utils.PeftType`` and
``register_peft_method`` refuses names that are not members of it. We therefore add a
real ``str`` enum member at import time, then register normally. Both steps are idempotent
(re-importing or reloading ``mona_peft`` is harmless) and fail loudly if a PEFT release
ships a method of the same name or prefix, because silently shadowing it would load the
wrong adapters.
"""

from __future__ import annotations

import enum

from peft.mapping import (
    PEFT_TYPE_TO_CONFIG_MAPPING,
    PEFT_TYPE_TO_PREFIX_MAPPING,
    PEFT_TYPE_TO_TUNER_MAPPING,
)
from peft.utils import PeftType, register_peft_method

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
                "Pin peft to a tested version (see mona_peft.registration.TESTED_PEFT_VERSIONS) or report this."
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


def register_method(name: str, config_cls: type, model_cls: type) -> None:
    """Register one method with PEFT under ``name`` and the prefix ``name + "_"``, idempotently."""
    prefix = f"{name}_"
    for other_type, other_prefix in PEFT_TYPE_TO_PREFIX_MAPPING.items():
        if other_prefix == prefix and other_type != name.upper():
            raise RuntimeError(f"PEFT method {other_type} already uses the prefix {prefix!r}; mona_peft cannot use it.")
    peft_type = add_peft_type(name)
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
    """Register every method of mona_peft with PEFT."""
    from .mona import MonaConfig, MonaModel

    register_method("mona", MonaConfig, MonaModel)

    from .adaptformer import AdaptFormerConfig, AdaptFormerModel
    from .houlsby import HoulsbyConfig, HoulsbyModel

    register_method("houlsby", HoulsbyConfig, HoulsbyModel)
    register_method("adaptformer", AdaptFormerConfig, AdaptFormerModel)

    from .vpt import VPTConfig, VPTModel

    register_method("vpt", VPTConfig, VPTModel)
