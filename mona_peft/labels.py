"""Kept for the cards on the Hub whose snippets import ``mona_peft.labels``: see :mod:`mona_peft.sharing.labels`."""

from .sharing.labels import LABELS_FILE, load_labels, save_labels

__all__ = ["LABELS_FILE", "load_labels", "save_labels"]
