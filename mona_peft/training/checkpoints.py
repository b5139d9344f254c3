"""A run's output dir and checkpoints: who owns the folder, atomic checkpoints that record their run and files, which
checkpoint ``--resume_from_checkpoint`` may take, and saving weights from one process (gathered first under FSDP2).

Used by :mod:`mona_peft.training.run`; kept apart so the run itself reads as its steps.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import save_file
from torch import nn

from ..tuners.methods import TRAINABLE_FILE, save_trainable
from .config import RunConfig

RUN_ARGS_FILE = "run_args.json"
TRAINING_STATE_FILE = "training_state.json"
RESULTS_FILE = "all_results.json"
CHECKPOINT_NAME = re.compile(r"checkpoint-\d+")
#: A checkpoint is written under this prefix, then renamed: ``checkpoint-N`` only ever names a whole one.
TEMPORARY_PREFIX = ".incomplete-"


# ------------------------------------------------------------------------------------------------- output dir


def read_run_record(output_dir: Path) -> dict[str, Any] | None:
    """``run_args.json`` of ``output_dir`` (the run's identity and ``run_id``), or None when there is none."""
    record = output_dir / RUN_ARGS_FILE
    return json.loads(record.read_text()) if record.is_file() else None


def identity_of(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "run_id"}


def identity_hash(identity: dict[str, Any]) -> str:
    """A short hash of a run's settings (``RunConfig.identity``): the first part of every run id."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def new_run_id(identity: dict[str, Any]) -> str:
    """The settings' hash plus a nonce: two starts of the same settings (say after ``--overwrite_output_dir``
    with other data in the same folder) are still two runs."""
    return f"{identity_hash(identity)}-{uuid.uuid4().hex[:12]}"


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, highest ``N`` first."""
    found = [p for p in output_dir.glob("checkpoint-*") if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def _has_saved_anything(output_dir: Path) -> bool:
    """Whether the run recorded in ``output_dir`` finished or wrote a whole checkpoint (else nothing is lost by
    replacing it: a run that failed on its data or model must not poison its folder)."""
    if (output_dir / RESULTS_FILE).is_file():
        return True
    return any((path / TRAINING_STATE_FILE).is_file() for path in checkpoint_folders(output_dir))


def prepare_output_dir(config: RunConfig) -> Path:
    """Refuse to mix two different runs in one output dir, unless ``overwrite_output_dir``."""
    output_dir = Path(config.output_dir)
    previous = read_run_record(output_dir)
    if previous is not None and not config.overwrite_output_dir and _has_saved_anything(output_dir):
        previous, current = identity_of(previous), config.identity()
        if previous != current:
            changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            raise SystemExit(
                f"error: {output_dir} already holds a different run (differs in {', '.join(changed)}); "
                "pass --overwrite_output_dir to replace it, or choose another --output_dir."
            )
    elif previous is None and output_dir.exists() and any(output_dir.iterdir()) and not config.overwrite_output_dir:
        raise SystemExit(f"error: {output_dir} is not empty and holds no mona_peft run; pass --overwrite_output_dir.")
    return output_dir


class CheckpointProblem(Exception):
    """Why a checkpoint folder cannot be resumed from (incomplete, corrupt, or of another run)."""


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_files(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under ``folder`` (recorded in ``training_state.json`` when saving)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != TRAINING_STATE_FILE)
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _file_digest(p)} for p in files}


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's ``training_state.json`` after checking that every file it records is there, whole and
    unchanged; raises :class:`CheckpointProblem` naming the file otherwise."""
    state_file = path / TRAINING_STATE_FILE
    if not state_file.is_file():
        raise CheckpointProblem(f"it is incomplete (no {TRAINING_STATE_FILE}: its save did not finish)")
    try:
        state = json.loads(state_file.read_text())
        int(state["completed_steps"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointProblem(f"{state_file} is corrupt ({type(error).__name__}: {error})") from None
    for name, recorded in state.get("files", {}).items():  # checkpoints older than run ids record no files
        file = path / name
        if not file.is_file():
            raise CheckpointProblem(f"{file} is missing")
        if file.stat().st_size != recorded["bytes"]:
            raise CheckpointProblem(
                f"{file} is truncated or overwritten ({file.stat().st_size} bytes, {recorded['bytes']} were saved)"
            )
        if _file_digest(file) != recorded["sha256"]:
            raise CheckpointProblem(f"{file} is corrupt (its SHA-256 differs from the one recorded when saved)")
    return state


def latest_checkpoint(output_dir: Path, run_id: str, say: Callable[[str], None] = print) -> Path:
    """The highest ``checkpoint-N`` of run ``run_id`` that is complete and intact; every other one passed over is
    named with the reason."""
    skipped = []
    for path in checkpoint_folders(output_dir):
        try:
            state = verify_checkpoint(path)
            if state.get("run_id") != run_id:
                other = state.get("run_id") or "none recorded"
                raise CheckpointProblem(f"it belongs to another run (run id {other}, this run is {run_id})")
        except CheckpointProblem as problem:
            skipped.append(f"{path.name}: {problem}")
            say(f"--resume_from_checkpoint latest: skipping {path}: {problem}")
            continue
        return path
    reasons = "".join(f"\n  {line}" for line in skipped)
    raise SystemExit(
        f"error: --resume_from_checkpoint latest: no usable checkpoint of this run in {output_dir}"
        + (f"; skipped:{reasons}" if skipped else " (no checkpoint-* folder).")
    )


def find_checkpoint(config: RunConfig, run_id: str | None, say: Callable[[str], None] = print) -> Path | None:
    """The checkpoint ``resume_from_checkpoint`` names (``latest``: the highest usable one of ``run_id`` in the
    output dir); an explicitly named one must be intact and have been written with the same settings."""
    if config.resume_from_checkpoint is None:
        return None
    if config.resume_from_checkpoint == "latest":
        if not checkpoint_folders(Path(config.output_dir)):
            raise SystemExit(f"error: --resume_from_checkpoint latest: no checkpoint-* folder in {config.output_dir}.")
        if run_id is None:
            raise SystemExit(
                f"error: --resume_from_checkpoint latest: {config.output_dir} holds no run with these settings "
                f"to resume (no {RUN_ARGS_FILE} of them there)."
            )
        return latest_checkpoint(Path(config.output_dir), run_id, say)
    path = Path(config.resume_from_checkpoint)
    if not (path / TRAINING_STATE_FILE).is_file():
        raise SystemExit(
            f"error: --resume_from_checkpoint {path} is not a checkpoint (no {TRAINING_STATE_FILE} there)."
        )
    try:
        state = verify_checkpoint(path)
    except CheckpointProblem as problem:
        raise SystemExit(f"error: --resume_from_checkpoint {path}: {problem}.") from None
    written_by = state.get("run_id")
    if written_by is not None and written_by.split("-")[0] != identity_hash(config.identity()):
        raise SystemExit(
            f"error: --resume_from_checkpoint {path} was written by a run with other settings (run id {written_by}); "
            "resume with the settings it was trained with."
        )
    return path


def replace_folder(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, replacing a ``target`` of an earlier attempt (a rename cannot overwrite a
    folder that holds files)."""
    if target.exists():
        old = target.with_name(f"{TEMPORARY_PREFIX}old-{target.name}")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        source.rename(target)
        shutil.rmtree(old)
    else:
        source.rename(target)


# ------------------------------------------------------------------------------------------------- sharded weights


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 (``torch.distributed.fsdp.fully_shard``) shards ``model`` or one of its submodules."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state of an FSDP2-sharded ``model`` on the CPU of the main process (empty elsewhere).

    A collective: every process must call it. PEFT's ``save_pretrained`` cannot read sharded parameters itself
    ("invalid python storage").
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_trainable_weights(model: nn.Module, directory: Path, accelerator: Any) -> None:
    """``methods.save_trainable`` from the main process only, gathering the weights first under FSDP2.

    Every process must call it (``accelerator``: anything with ``is_main_process``).
    """
    if not is_sharded(model):
        if accelerator.is_main_process:
            save_trainable(model, directory)
        return
    state = full_state_dict(model)
    if not accelerator.is_main_process:
        return
    if isinstance(model, PeftModel):
        model.save_pretrained(directory, state_dict=state)
        return
    directory.mkdir(parents=True, exist_ok=True)
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    save_file({name: state[name].contiguous() for name in trainable}, directory / TRAINABLE_FILE)


def save_final_weights(model: nn.Module, output_dir: Path, accelerator: Any) -> None:
    """``save_pretrained`` (the adapter, or the whole model) from the main process, gathered first under FSDP2.

    Every process must call it.
    """
    state = full_state_dict(model) if is_sharded(model) else None
    if accelerator.is_main_process:
        model.save_pretrained(output_dir, **({"state_dict": state} if state is not None else {}))
