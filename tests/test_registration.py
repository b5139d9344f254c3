"""Registration with PEFT: a real enum member, idempotent, loud on conflicts and on PEFT changes."""

import enum

import peft
import pytest
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType

import mona_peft
from mona_peft.tuners import registry as registration


def test_peft_version_is_one_we_tested():
    # mona_peft extends PEFT's closed enum and leans on its mappings: a new PEFT minor must be checked first.
    assert peft.__version__.startswith(registration.TESTED_PEFT_VERSIONS), peft.__version__


def test_peft_internals_we_rely_on_still_exist():
    assert issubclass(PeftType, str) and issubclass(PeftType, enum.Enum)
    for attribute in ("_member_map_", "_value2member_map_", "_member_names_"):
        assert hasattr(PeftType, attribute)
    from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer

    for hook in ("_pre_injection_hook", "_create_and_replace", "_unload_and_optionally_merge", "_check_merge_allowed"):
        assert hasattr(BaseTuner, hook)
    assert hasattr(BaseTunerLayer, "_move_adapter_to_device_of_base_layer")


def test_mona_is_a_real_peft_type():
    assert PeftType.MONA == "MONA"
    assert PeftType("MONA") is PeftType.MONA is PeftType["MONA"]
    assert PeftType.MONA in list(PeftType)
    assert isinstance(PeftType.MONA, str) and PeftType.MONA.name == "MONA"
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.MONA] is mona_peft.MonaConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.MONA] is mona_peft.MonaModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.MONA] == "mona_"


def test_registration_is_idempotent():
    members = len(PeftType)
    registration.register_all()
    registration.register_all()
    assert len(PeftType) == members
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.MONA] is mona_peft.MonaConfig


def test_a_peft_owned_member_of_the_same_name_is_refused(monkeypatch):
    foreign = PeftType.LORA  # stands in for a MONA that a future PEFT ships itself
    monkeypatch.setitem(PeftType._member_map_, "FUTURE", foreign)
    with pytest.raises(RuntimeError, match="PEFT now ships its own PeftType.FUTURE"):
        registration.add_peft_type("future")


def test_a_prefix_taken_by_another_method_is_refused(monkeypatch):
    monkeypatch.setitem(PEFT_TYPE_TO_PREFIX_MAPPING, PeftType.LORA, "probe_")
    with pytest.raises(RuntimeError, match="already uses the prefix 'probe_'"):
        registration.register_method("probe", mona_peft.MonaConfig, mona_peft.MonaModel)
    assert "PROBE" not in PeftType.__members__  # refused before touching the enum
