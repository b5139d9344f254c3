"""The package's layout holds: no import cycle (function-level imports counted), no function longer than 60 lines,
the benchmark harness outside the wheel, the project's top level, and the import paths older cards use."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "mona_peft"
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _imports(name: str, path: Path, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its body, and the packages above them (importing
    ``a.b.c`` runs ``a`` and ``a.b`` first); its own parent packages are left out (they are running already)."""
    package = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
    found = set()
    for target in targets & known:
        parts = target.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {module for module in found & known if module != name and not name.startswith(module + ".")}


def test_no_import_cycle_counting_function_level_imports():
    modules = _modules()
    graph = {name: _imports(name, path, is_package, set(modules)) for name, (path, is_package) in modules.items()}
    cycles, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the current path, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state[target] == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif state[target] == 0:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if state[name] == 0:
            visit(name, [name])
    assert cycles == []


def test_no_function_in_the_package_is_longer_than_60_lines():
    long = [
        f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_the_benchmark_harness_is_outside_the_package_and_the_top_level_is_the_design_cards():
    assert not (PACKAGE / "benchmarking").exists() and (REPO_ROOT / "benchmarks" / "harness" / "runner.py").is_file()
    importing = [
        str(p) for p in PACKAGE.rglob("*.py") if "harness" in p.read_text() and "import harness" in p.read_text()
    ]
    assert importing == []
    tracked = {path.name for path in REPO_ROOT.iterdir() if not path.name.startswith(".")}
    expected = {"pyproject.toml", "setup.py", "mona_peft", "scripts", "tests", "model_cards", "README.md", "docs"}
    assert expected | {"benchmarks"} >= tracked - {"build", "outputs", "mona_peft.egg-info"}, tracked


def test_the_import_paths_of_cards_already_on_the_hub_still_work():
    old_and_new = {
        ("mona_peft.labels", "load_labels"): "mona_peft.sharing.labels",
        ("mona_peft.segmentation", "load_segmentation_base"): "mona_peft.tasks.semantic_segmentation",
        ("mona_peft.detection", "load_detection_base"): "mona_peft.tasks.object_detection",
        ("mona_peft.detection", "load_instance_segmentation_base"): "mona_peft.tasks.instance_segmentation",
    }
    for (old, name), new in old_and_new.items():
        assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name), (old, name)
