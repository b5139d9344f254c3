"""The example cards in model_cards/examples/ are what the renderer writes today for each task's default run."""

import json
from pathlib import Path

import pytest

import mona_peft.tasks
from mona_peft.sharing.model_card import render_model_card

EXAMPLES = Path(__file__).resolve().parents[1] / "model_cards" / "examples"


def test_every_task_has_an_example_card():
    assert sorted(path.stem for path in EXAMPLES.glob("*.md")) == sorted(mona_peft.tasks.tasks())


@pytest.mark.parametrize("task", sorted(mona_peft.tasks.tasks()))
def test_the_example_card_is_what_the_renderer_writes_from_its_fields(task):
    fields = json.loads((EXAMPLES / f"{task}.json").read_text())
    card = render_model_card(task=mona_peft.tasks.tasks()[task].card, **fields)
    assert card == (EXAMPLES / f"{task}.md").read_text(encoding="utf-8"), (
        f"model_cards/examples/{task}.md is out of date: run python scripts/regenerate_example_cards.py --tasks {task}"
    )
