"""Push a saved adapter folder (weights, PEFT config, model card, results) to the Hugging Face Hub.

``PeftModel.push_to_hub`` is not used: it re-runs ``save_pretrained``, which rewrites README.md into PEFT's thin
placeholder card. ``push_to_hub`` uploads the folder as it is on disk, with ``huggingface_hub.HfApi``, so the card
written by ``mona_peft.sharing.model_card.write_model_card`` is the one the Hub shows. Training leftovers in the folder
(checkpoints, tracker logs, run arguments) are not uploaded. The baselines that train part of the backbone
(``full``, ``linear``, ``bitfit``, ``partial1``) save whole transformers models; those folders are pushed the same
way, with their ``config.json``, ``model.safetensors`` and image processor.

The Hub address comes from ``HF_ENDPOINT`` (read by huggingface_hub at import time) and the token from ``token=``,
``HF_TOKEN`` or ``hf auth login``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .labels import LABELS_FILE

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_CONFIG_FILE = "config.json"
MODEL_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CARD_FILE = "README.md"

# Top-level files only: a pattern is matched against the path relative to the folder, and "*" also matches "/",
# hence the ignore pattern for everything in a subfolder (checkpoints/, runs/, logs/, ...).
ALLOW_PATTERNS = [
    *WEIGHT_FILES,
    MODEL_CONFIG_FILE,
    *MODEL_WEIGHT_FILES,
    # adapter_config.json, preprocessor_config.json, and the task model a dense adapter was trained in, whatever the
    # task names it (its ``save_extras``: segmentation_config.json, detection_config.json, ...)
    "*_config.json",
    LABELS_FILE,  # a classifier's class names
    CARD_FILE,
    "*results.json",
]
IGNORE_PATTERNS = ["*/*", "checkpoint*", "*.log", "events.out.tfevents*"]


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
) -> str:
    """Create ``repo_id`` (if needed) and upload the adapter (or whole model) in ``folder`` to it in one commit.

    Uploaded: ``adapter_config.json`` and ``adapter_model.safetensors`` (or ``.bin``), or for a whole model
    ``config.json``, ``model.safetensors`` (or ``pytorch_model.bin``) and ``preprocessor_config.json``; then
    ``labels.json`` (class names), ``README.md`` and the ``*results.json`` files at the top of ``folder``. Subfolders
    (checkpoints, logs) and everything else stay local.
    ``revision`` names a branch, created from the default branch when missing. ``private`` only applies when the
    repository is created.

    Returns the URL of the commit (or of the latest commit when nothing changed).

    Raises:
        FileNotFoundError: ``folder`` is not a directory, or holds neither a complete adapter nor a whole model.

    Example::

        from mona_peft.sharing.hub import push_to_hub

        push_to_hub("outputs/mona-digits", "your-name/mona-digits")  # token from HF_TOKEN or `hf auth login`
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    kind = _check_folder(folder)

    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    repo_id = repo_url.repo_id  # namespaced by the server when repo_id had no namespace
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        revision=revision,
        commit_message=commit_message or f"Upload {kind}",
        allow_patterns=ALLOW_PATTERNS,
        ignore_patterns=list(IGNORE_PATTERNS),
    )
    return str(commit.commit_url)


def _check_folder(folder: Path) -> str:
    """``"adapter"`` or ``"model"``: what ``folder`` holds; raises naming the missing files otherwise."""
    if not folder.is_dir():
        raise FileNotFoundError(f"Folder {folder} does not exist or is not a directory.")

    def missing(config: str, weights: tuple[str, ...]) -> list[str]:
        absent = [] if (folder / config).is_file() else [config]
        return absent + ([] if any((folder / name).is_file() for name in weights) else [weights[0]])

    adapter_missing, model_missing = missing(CONFIG_FILE, WEIGHT_FILES), missing(MODEL_CONFIG_FILE, MODEL_WEIGHT_FILES)
    if adapter_missing and model_missing:
        raise FileNotFoundError(
            f"{folder} is neither a saved adapter (missing {' and '.join(adapter_missing)}) nor a saved model "
            f"(missing {' and '.join(model_missing)}). Save it with `model.save_pretrained(folder)` before pushing."
        )
    kind = "model" if adapter_missing else "adapter"
    card = folder / CARD_FILE
    if not card.is_file():
        warnings.warn(
            f"{folder} has no README.md: the repository gets no model card. "
            "Write one with mona_peft.sharing.model_card.write_model_card(folder, ...).",
            stacklevel=3,
        )
        return kind
    from .model_card import is_mona_peft_card

    if not is_mona_peft_card(card.read_text(encoding="utf-8", errors="replace")):
        warnings.warn(
            f"{card} is not a mona_peft model card (PEFT's save_pretrained writes a placeholder one); it is uploaded "
            "as is. Write the real card with mona_peft.sharing.model_card.write_model_card(folder, ...) after saving.",
            stacklevel=3,
        )
    return kind
