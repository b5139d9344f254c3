"""A wheel of mona_peft carries what the package reads at run time besides its modules."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_card_templates_metric_scripts_and_backbones(tmp_path):
    """The templates come from model_cards/ at the top of the repository, mapped (not copied) into the package."""
    # Built from a copy: setuptools leaves build/ and *.egg-info/ in the source tree.
    source = tmp_path / "source"
    for folder in ("mona_peft", "model_cards"):
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    subprocess.run([*build, str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("mona_peft-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package_files = [
        path.relative_to(REPO_ROOT).as_posix()
        for pattern in ("tasks/*/*/*.py", "backbones/*/*")  # the tasks' metric scripts, the shipped backbones
        for path in (REPO_ROOT / "mona_peft").glob(pattern)
    ]
    templates = [f"mona_peft/model_cards/{path.name}" for path in (REPO_ROOT / "model_cards").glob("*.md")]
    assert len(package_files) >= 12 and len(templates) == 5
    assert sorted(set(package_files + templates) - names) == []
    assert not any(name.startswith("model_cards/") for name in names)  # installed inside the package only
    modules = [path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "mona_peft").rglob("*.py")]
    assert sorted(set(modules) - names) == []  # every module, in every sub-package
