"""Regenerate model_cards/examples/: the card each task's offline default run writes.

    python scripts/regenerate_example_cards.py                                 # every task: four default runs
    python scripts/regenerate_example_cards.py --tasks semantic_segmentation   # one of them

Each task's default run (its script with no arguments) trains in a temporary folder. Its card goes to
``model_cards/examples/<task>.md`` and the fields it was rendered from to ``<task>.json``; tests/test_model_cards.py
renders every example again from its fields and checks that the card is what the renderer writes today. The shipped
backbone is recorded as ``mona_peft:<name>``, so the examples read the same on every machine.
"""

import argparse
import json
import tempfile
from pathlib import Path

import mona_peft.tasks
from mona_peft.backbones import portable_checkpoint
from mona_peft.sharing.model_card import framework_versions_table, render_model_card
from mona_peft.training import FineTuningRun, parse_args

EXAMPLES = Path(__file__).resolve().parents[1] / "model_cards" / "examples"


def default_run_card_fields(task_name: str, output_dir: Path) -> dict:
    """Train ``task_name``'s offline default run into ``output_dir``; the fields its card was rendered from."""
    task = mona_peft.tasks.tasks()[task_name]
    argv = ["--output_dir", str(output_dir), "--report_to", "none"]
    parsed = parse_args(argv, extra=task.arguments_class, defaults=task.run_defaults)
    config, arguments = parsed if task.arguments_class else (parsed, None)
    run = FineTuningRun(config, task(arguments) if task.arguments_class else task())
    run.execute()
    fields = dict(run.card_fields, labels_file=(output_dir / "labels.json").is_file())
    fields["base_model"] = portable_checkpoint(fields["base_model"])  # the card reads the same on every machine
    return {**fields, "framework_versions": framework_versions_table()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", nargs="+", default=list(mona_peft.tasks.tasks()), choices=list(mona_peft.tasks.tasks())
    )
    args = parser.parse_args()
    EXAMPLES.mkdir(parents=True, exist_ok=True)
    for name in args.tasks:
        with tempfile.TemporaryDirectory() as folder:
            fields = default_run_card_fields(name, Path(folder) / name)
        (EXAMPLES / f"{name}.json").write_text(json.dumps(fields, indent=2) + "\n")
        card = render_model_card(task=mona_peft.tasks.tasks()[name].card, **fields)
        (EXAMPLES / f"{name}.md").write_text(card, encoding="utf-8")
        print(f"{name}: {EXAMPLES / name}.md")


if __name__ == "__main__":
    main()
