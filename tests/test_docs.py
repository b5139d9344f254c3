"""The documentation is tested: README.md and every page of docs/.

- README.md stays short (at most 200 lines); every relative link of README.md and docs/*.md names an existing file
  (and an existing heading, for an anchor into a Markdown file).
- docs/architectures.md lists every ``model_type`` of ``SUPPORTED_ARCHITECTURES``.
- Every fenced ``python`` block runs, offline (``HF_HUB_OFFLINE=1``, an empty Hugging Face cache), in a temporary
  directory of its own and a fresh namespace, under a timeout, unless the line before its fence is
  ``<!-- needs network -->`` (docs/contributing.md documents the marker). A block after ``<!-- needs timm -->`` runs
  where timm can be imported (``scripts/test_timm.sh``; its id ends in ``-timm``) and skips elsewhere. To keep the
  whole file fast, one subprocess
  imports torch, transformers and PEFT once and forks a child per block; ``mona_peft`` is not preloaded, so a block
  that forgets ``import mona_peft`` fails as it would for a reader.
- Every fenced ``bash`` block is checked without training: each command's script must exist; the flags of a training
  script are parsed by ``mona_peft.training.parse_args`` with its task's ``arguments_class`` and recipe (``--help``
  included), and those of any other script must appear in its ``--help``; a ``bash`` script must exist. ``pip
  install`` and ``python -m ...`` (the README's two commands, which CI runs itself) are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TIMM_MISSING

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
NETWORK_MARKER = "<!-- needs network -->"
TIMM_MARKER = "<!-- needs timm -->"
README_MAX_LINES = 200
BLOCK_TIMEOUT_S = 90
# A Hub repository id in quotes ("user/repo", "microsoft/swin-base-patch4-window7-224").
HUB_ID = re.compile(r"""["'][A-Za-z0-9][\w.-]*/[\w.-]+["']""")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    needs_network: bool
    needs_timm: bool = False

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}" + ("-timm" if self.needs_timm else "")


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file (fences at the start of a line, as this repository writes them)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[index])
        if not match:
            index += 1
            continue
        start = index
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("```")), None)
        assert end is not None, f"{path.relative_to(ROOT)}:{start + 1}: unclosed code fence"
        marker = lines[start - 1].strip() if start > 0 else ""
        code = "\n".join(lines[start + 1 : end]) + "\n"
        blocks.append(Block(path, start + 1, match.group(1), code, marker == NETWORK_MARKER, marker == TIMM_MARKER))
        index = end + 1
    return blocks


def prose(path: Path) -> str:
    """The file without its fenced code blocks (links are read in prose only)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    inside = set()
    for block in fenced_blocks(path):
        inside.update(range(block.line - 1, block.line + block.code.count("\n") + 1))
    return "\n".join(line for index, line in enumerate(lines) if index not in inside)


ALL_BLOCKS = [block for page in PAGES for block in fenced_blocks(page)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.language == "python"]
BASH_BLOCKS = [block for block in ALL_BLOCKS if block.language == "bash"]


# ------------------------------------------------------------------------------------------------ pages and links


def test_docs_pages_exist():
    names = {page.name for page in PAGES}
    expected = {"methods.md", "architectures.md", "tasks.md", "sharing.md", "refused.md", "performance.md"}
    assert expected | {"contributing.md"} <= names


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_every_fence_has_a_language():
    untagged = [block.id for block in ALL_BLOCKS if block.language not in ("python", "bash", "text")]
    assert not untagged, f"fenced blocks without python/bash/text: {untagged}"


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_point_to_files(page):
    text = prose(page)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in heading_anchors(path):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files or headings: {broken}"


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lower case, punctuation dropped, spaces to hyphens;
    repeated headings get -1, -2, ...)."""
    anchors: set[str] = set()
    for line in prose(path).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            candidate, count = slug, 0
            while candidate in anchors:
                count += 1
                candidate = f"{slug}-{count}"
            anchors.add(candidate)
    return anchors


def test_architectures_page_lists_every_model_type():
    from mona_peft import SUPPORTED_ARCHITECTURES

    text = (ROOT / "docs" / "architectures.md").read_text(encoding="utf-8")
    # the first cell of each body row (a header row is followed by its |---| line)
    listed: set[str] = set()
    for body in re.findall(r"^\|---.*\n((?:\|.*\n?)+)", text, flags=re.MULTILINE):
        listed |= set(re.findall(r"^\| `([\w:-]+)`", body, flags=re.MULTILINE))
    expected = set(SUPPORTED_ARCHITECTURES)
    assert listed == expected, f"missing: {sorted(expected - listed)}, unknown: {sorted(listed - expected)}"


# -------------------------------------------------------------------------------------------------- python blocks

# Runs in a subprocess: reads the blocks as JSON on stdin, forks one child per block (its own temporary directory and
# namespace), and prints one JSON line per block: {"id", "ok", "error"}.
RUNNER = r"""
import json, multiprocessing, os, sys, tempfile, traceback
import torch, transformers, peft  # noqa: F401  (shared by every child; mona_peft is not: each block imports it)

torch.set_num_threads(1)
blocks, timeout = json.load(sys.stdin), float(sys.argv[1])
context = multiprocessing.get_context("fork")


def run(code, name, directory, error_file):
    os.chdir(directory)
    try:
        exec(compile(code, name, "exec"), {"__name__": "__main__"})
    except BaseException:
        with open(error_file, "w") as file:
            file.write(traceback.format_exc())
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0)


for block in blocks:
    with tempfile.TemporaryDirectory() as directory:
        error_file = os.path.join(directory, ".error")
        child = context.Process(target=run, args=(block["code"], block["id"], directory, error_file))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            error = f"timed out after {timeout:.0f} s"
        elif child.exitcode:
            error = open(error_file).read() if os.path.exists(error_file) else f"exit code {child.exitcode}"
        else:
            error = None
    print("RESULT " + json.dumps({"id": block["id"], "ok": error is None, "error": error}), flush=True)
"""


@pytest.fixture(scope="module")
def python_results(request, tmp_path_factory) -> dict[str, dict]:
    """Run every offline python block this run selected once, in one subprocess; block id -> result."""
    offline = [
        item.callspec.params["block"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_python_block_runs_offline"
        and not item.get_closest_marker("skip")
    ]
    home = tmp_path_factory.mktemp("hf_home")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(home),  # an empty cache: a block that needs the Hub cannot pass on a warm cache
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    payload = json.dumps([{"id": block.id, "code": block.code} for block in offline])
    process = subprocess.run(
        [sys.executable, "-c", RUNNER, str(BLOCK_TIMEOUT_S)],
        input=payload,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path_factory.mktemp("docs_run"),
        timeout=BLOCK_TIMEOUT_S * len(offline) + 60,
    )
    results = {}
    for line in process.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            results[result["id"]] = result
    missing = [block.id for block in offline if block.id not in results]
    assert not missing, f"the runner stopped before {missing}:\n{process.stderr[-4000:]}"
    return results


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(block, marks=pytest.mark.skip(reason="marked as needing network"))
        if block.needs_network
        else pytest.param(block, marks=pytest.mark.skip(reason=TIMM_MISSING))
        if block.needs_timm and TIMM_MISSING
        else block
        for block in PYTHON_BLOCKS
    ],
    ids=lambda block: block.id,
)
def test_python_block_runs_offline(block, python_results):
    result = python_results[block.id]
    assert result["ok"], f"{block.id} failed:\n{result['error']}"


@pytest.mark.parametrize("block", [b for b in PYTHON_BLOCKS if b.needs_network], ids=lambda block: block.id)
def test_network_blocks_really_need_the_hub(block):
    assert HUB_ID.search(block.code), f"{block.id} is marked as needing network but names no Hub repository"


# ---------------------------------------------------------------------------------------------------- bash blocks


def commands(code: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, split at ``&&`` and ``;``."""
    result = []
    for line in code.replace("\\\n", " ").splitlines():
        tokens = shlex.split(line, comments=True)
        command: list[str] = []
        for token in [*tokens, "&&"]:
            if token in ("&&", ";", "||"):
                if command:
                    result.append(command)
                command = []
            elif command or not re.match(r"^\w+=", token):  # leading VAR=value assignments
                command.append(token)
    return result


def script_and_flags(command: list[str]) -> tuple[str | None, list[str]]:
    """``(script, its arguments)`` of ``python script.py ...`` / ``accelerate launch [options] script.py ...``;
    ``(None, [])`` for what is not checked here (``pip``, ``python -m``)."""
    program = command[0]
    if program == "pip" or (program == "python" and command[1] == "-m"):
        return None, []
    if program in ("python", "bash"):
        return command[1], command[2:]
    if program == "accelerate" and command[1] == "launch":
        index = next((i for i, token in enumerate(command) if token.endswith(".py")), None)
        assert index is not None, f"no script in {shlex.join(command)}"
        return command[index], command[index + 1 :]
    raise AssertionError(f"tests/test_docs.py does not know how to check {shlex.join(command)!r}")


def task_of(script: Path):
    """The training task a script runs (``from mona_peft.tasks.<task> import main``), or None."""
    match = re.search(r"^from mona_peft\.tasks\.(\w+) import main$", script.read_text(encoding="utf-8"), re.MULTILINE)
    if match is None:
        return None
    from mona_peft.tasks import tasks

    return tasks()[match.group(1)]


def check_training_flags(task, argv: list[str]) -> None:
    from mona_peft.training import parse_args

    try:
        parse_args(argv, extra=task.arguments_class, defaults=task.run_defaults)
    except SystemExit as exit_:
        if not (exit_.code in (0, None) and "--help" in argv):
            raise AssertionError(f"flags rejected: {shlex.join(argv)} ({exit_.code})") from None
    except ValueError as error:  # HfArgumentParser's answer to an unknown flag
        raise AssertionError(f"flags rejected: {shlex.join(argv)} ({error})") from None


def check_flags_in_help(script: Path, argv: list[str]) -> None:
    help_text = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    ).stdout
    unknown = [flag.split("=")[0] for flag in argv if flag.startswith("--") and flag.split("=")[0] not in help_text]
    assert not unknown, f"{script.relative_to(ROOT)} --help does not list {unknown}"


@pytest.mark.parametrize("block", BASH_BLOCKS, ids=lambda block: block.id)
def test_bash_block_commands(block, capsys):
    for command in commands(block.code):
        script, argv = script_and_flags(command)
        if script is None:
            continue
        path = ROOT / script
        assert path.is_file(), f"{block.id}: {script} does not exist"
        if path.suffix == ".sh":
            continue
        task = task_of(path)
        if task is not None:
            check_training_flags(task, argv)
        else:
            check_flags_in_help(path, argv)
