"""Shared tiny-model builders for the test suite (CPU, a few milliseconds per forward pass).

Fixtures return *factories* so that each test can build as many fresh, seeded models as it needs:

    def test_something(tiny_swin, tiny_pixel_values):
        base = tiny_swin()               # SwinForImageClassification, seed 0, eval mode
        other = tiny_swin(seed=1)        # different weights
        x = tiny_pixel_values(batch=2)   # (2, 3, 32, 32), seeded
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import SwinConfig, SwinForImageClassification, ViTConfig, ViTForImageClassification

import mona_peft  # noqa: F401  (registers Mona with PEFT)

TINY_IMAGE_SIZE = 32

# drop_path_rate=0: Swin's default stochastic depth (0.1) would make train-mode outputs random.
TINY_SWIN_CONFIG = dict(
    image_size=TINY_IMAGE_SIZE,
    patch_size=4,
    embed_dim=16,
    depths=[2, 2],
    num_heads=[2, 4],
    window_size=4,
    num_labels=3,
    drop_path_rate=0.0,
)
TINY_VIT_CONFIG = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=TINY_IMAGE_SIZE,
    patch_size=8,
    num_labels=3,
)


def build_tiny_swin(seed: int = 0, **overrides) -> SwinForImageClassification:
    """A seeded two-stage Swin classifier (3 labels, 32x32 images), in eval mode."""
    torch.manual_seed(seed)
    return SwinForImageClassification(SwinConfig(**{**TINY_SWIN_CONFIG, **overrides})).eval()


def build_tiny_vit(seed: int = 0, **overrides) -> ViTForImageClassification:
    """A seeded two-layer ViT classifier (3 labels, 32x32 images, CLS token), in eval mode."""
    torch.manual_seed(seed)
    return ViTForImageClassification(ViTConfig(**{**TINY_VIT_CONFIG, **overrides})).eval()


TINY_BUILDERS = {"swin": build_tiny_swin, "vit": build_tiny_vit}


def build_tiny_pixel_values(batch: int = 2, seed: int = 1234, size: int = TINY_IMAGE_SIZE) -> torch.Tensor:
    """Seeded random ``pixel_values`` of shape ``(batch, 3, size, size)``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator)


@pytest.fixture
def tiny_swin():
    """Factory: ``tiny_swin(seed=0, **config_overrides)`` -> eval-mode ``SwinForImageClassification``."""
    return build_tiny_swin


@pytest.fixture
def tiny_vit():
    """Factory: ``tiny_vit(seed=0, **config_overrides)`` -> eval-mode ``ViTForImageClassification``."""
    return build_tiny_vit


@pytest.fixture
def tiny_model():
    """Factory: ``tiny_model("swin" | "vit", seed=0, **config_overrides)``."""

    def build(arch: str, seed: int = 0, **overrides):
        return TINY_BUILDERS[arch](seed=seed, **overrides)

    return build


@pytest.fixture
def tiny_pixel_values():
    """Factory: ``tiny_pixel_values(batch=2, seed=1234, size=32)`` -> seeded random images."""
    return build_tiny_pixel_values


_FRESH_PROCESS_RELOAD = """
import sys
import torch
import mona_peft  # noqa: F401  (registers the methods with PEFT)
from peft import PeftModel
from transformers import AutoModelForImageClassification

config_class, x_path, *rest = sys.argv[1:]
for base_dir, adapter_dir, out_path in zip(*[iter(rest)] * 3):
    base = AutoModelForImageClassification.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    assert type(model.peft_config["default"]).__name__ == config_class
    with torch.no_grad():
        torch.save(model(pixel_values=torch.load(x_path)).logits, out_path)
"""


def logits_after_fresh_process_reload(
    tmp_path: Path, saved: dict[str, tuple[Path, Path]], pixel_values: torch.Tensor, config_class: str
) -> dict[str, torch.Tensor]:
    """Logits of each ``name: (base_dir, adapter_dir)`` reloaded with ``PeftModel.from_pretrained`` in a new process.

    The new process only gets ``import mona_peft`` and the saved files, as a user would (offline).
    """
    torch.save(pixel_values, tmp_path / "x.pt")
    argv = [config_class, str(tmp_path / "x.pt")]
    for name, (base_dir, adapter_dir) in saved.items():
        argv += [str(base_dir), str(adapter_dir), str(tmp_path / f"{name}_logits.pt")]
    repo_root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")])}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS_RELOAD, *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {name: torch.load(tmp_path / f"{name}_logits.pt") for name in saved}
