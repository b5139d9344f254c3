"""Metric modules for ``evaluate`` that ship with mona_peft.

``evaluate.load("accuracy")`` fetches its script from the Hub, which fails offline; these modules
load from the installed package instead: ``evaluate.load(metric_path("top_k_accuracy"))``.
"""

from __future__ import annotations

from pathlib import Path


def metric_path(name: str) -> str:
    """Directory of the shipped ``evaluate`` metric module ``name``."""
    path = Path(__file__).parent / name
    if not (path / f"{name}.py").is_file():
        available = sorted(p.name for p in Path(__file__).parent.iterdir() if (p / f"{p.name}.py").is_file())
        raise ValueError(f"No shipped metric module named {name!r}; available: {available}.")
    return str(path)
