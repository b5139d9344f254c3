"""The validation split every task's loaders fall back on, and how the model card learns where it came from."""

from __future__ import annotations

from datasets import Dataset, DatasetDict

#: Written into a carved validation split's ``info.description``: the card then says the split was held out.
HELD_OUT = "mona_peft: held out from the training split"


def hold_out_validation(
    data: DatasetDict, fraction: float, seed: int, stratify_by_column: str | None = None
) -> DatasetDict:
    """``data`` with a ``validation`` split: its own, or a seeded ``fraction`` of ``train`` held out (and marked, see
    :func:`is_held_out`). A ``test`` split is kept as it is."""
    if "validation" in data:
        return data
    split = data["train"].train_test_split(test_size=fraction, seed=seed, stratify_by_column=stratify_by_column)
    split["test"].info.description = HELD_OUT
    return DatasetDict(
        train=split["train"], validation=split["test"], **({"test": data["test"]} if "test" in data else {})
    )


def is_held_out(validation: Dataset) -> bool:
    """Whether ``validation`` was carved from the training split by :func:`hold_out_validation`."""
    return validation.info.description == HELD_OUT
