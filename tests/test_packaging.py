"""A wheel of mona_peft carries what the package reads at run time besides its modules."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_card_templates_metric_scripts_and_backbones(tmp_path):
    # Built from a copy: setuptools leaves build/ and *.egg-info/ in the source tree.
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT / "mona_peft", source / "mona_peft", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
    subprocess.run([*build, str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("mona_peft-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = [
        path.relative_to(REPO_ROOT).as_posix()
        for pattern in ("card_templates/*.md", "metrics/*/*.py", "backbones/*/*")
        for path in (REPO_ROOT / "mona_peft").glob(pattern)
    ]
    assert len(expected) >= 12
    assert sorted(set(expected) - names) == []
