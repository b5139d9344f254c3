"""Downstream benchmark of the fine-tuning methods: offline tasks, the methods x tasks x seeds runner, speed."""

from ..data import TASKS, load_task

__all__ = ["TASKS", "load_task"]
