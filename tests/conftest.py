"""Shared tiny-model builders for the test suite (CPU, a few milliseconds per forward pass).

One factory, ``build_tiny_model(model_type)``, builds a seeded tiny classifier of every architecture in
``mona_peft.SUPPORTED_ARCHITECTURES``; fixtures return *factories* so that each test can build as many fresh, seeded
models as it needs:

    def test_something(tiny_model, tiny_swin, tiny_pixel_values):
        base = tiny_model("dinov2")      # Dinov2ForImageClassification, seed 0, eval mode
        other = tiny_swin(seed=1)        # different weights
        x = tiny_pixel_values(batch=2)   # (2, 3, 32, 32), seeded
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from torch import nn

import mona_peft  # noqa: F401  (registers Mona with PEFT)
from mona_peft.classifiers import DINOv3ConvNextForImageClassification, DINOv3ViTForImageClassification

# The benchmark harness lives outside the package (benchmarks/harness); the tests import it as `harness`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

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

#: The vision tower of a composite config (CLIP, SigLIP): their classifiers take the text config too, as a stub.
TINY_TOWER_CONFIG = dict(
    vision_config={key: value for key, value in TINY_VIT_CONFIG.items() if key != "num_labels"},
    text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
    num_labels=3,
)

# layer_scale_init_value=1: the default 1e-6 scales each block's MLP branch to nothing, which no trained ConvNeXt does
# (an adapter inside the branch would then change the logits by about 1e-7).
TINY_CONVNEXT_CONFIG = dict(
    num_stages=2,
    hidden_sizes=[16, 32],
    depths=[1, 1],
    image_size=TINY_IMAGE_SIZE,
    num_labels=3,
    layer_scale_init_value=1.0,
)

# Hiera: a 16x16 patch grid (stride 2) in 4x4 mask units; the second stage pools it to 8x8 and widens 16 -> 32 in its
# first block.
TINY_HIERA_CONFIG = dict(
    embed_dim=16, image_size=[TINY_IMAGE_SIZE] * 2, patch_size=[3, 3], patch_stride=[2, 2], patch_padding=[1, 1],
    depths=[1, 2], num_heads=[1, 2], query_stride=[2, 2], masked_unit_size=[4, 4], num_query_pool=1, mlp_ratio=2.0,
    num_labels=3,
)  # fmt: skip

# timm needs torchvision, whose only wheels here replace this environment's CPU torch (README: "timm models"): the timm
# cases run in their own venv (scripts/test_timm.sh) and skip where timm cannot be imported.
try:
    import timm  # noqa: F401

    TIMM_MISSING = None
except Exception as error:  # ImportError, or torchvision's "operator torchvision::nms does not exist" (RuntimeError)
    TIMM_MISSING = f"timm cannot be imported here ({type(error).__name__}: {error}); scripts/test_timm.sh runs it"

#: timm models inside transformers' TimmWrapperForImageClassification (the classifier is timm's own `head`), as
#: ``TimmWrapperConfig`` kwargs: ViT with a CLS and 2 register tokens, Swin, ConvNeXt with LayerScale 1 (as above).
TINY_TIMM_MODELS = {
    "timm:VisionTransformer": dict(
        architecture="vit_tiny_patch16_224",
        model_args=dict(img_size=TINY_IMAGE_SIZE, patch_size=8, embed_dim=32, depth=2, num_heads=2, reg_tokens=2),
    ),
    "timm:SwinTransformer": dict(
        architecture="swin_tiny_patch4_window7_224",
        model_args=dict(
            img_size=TINY_IMAGE_SIZE, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4, drop_path_rate=0.0
        ),
    ),
    "timm:ConvNeXt": dict(
        architecture="convnext_tiny",
        model_args=dict(depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), ls_init_value=1.0, drop_path_rate=0.0),
    ),
}

#: Registered architectures with no image classifier in transformers: DPT's ViT (tested inside
#: ``DPTForSemanticSegmentation`` by tests/test_segmentation.py) and MaskFormer's Swin (tested inside
#: ``MaskFormerForInstanceSegmentation`` by tests/test_detection_models.py), SAM's vision encoder (tested inside
#: ``SamModel``, under SAM's own mask decoder, by tests/test_sam.py) and EoMT (a segmenter: tests/test_eomt.py); and
#: SigLIP 2, whose classifier takes patches and a grid per image rather than images (tests/test_siglip2.py).
WITHOUT_CLASSIFIER = frozenset({"dpt", "maskformer-swin", "sam_vision_model", "eomt", "siglip2_vision_model"})
#: model_type -> (config class, model class with a ``classifier`` head, config kwargs). Every architecture of
#: ``mona_peft.SUPPORTED_ARCHITECTURES`` but ``WITHOUT_CLASSIFIER`` needs an entry (tests/test_peft_checklist.py
#: fails without one).
TINY_MODELS: dict[str, tuple[type, type, dict[str, Any]]] = {
    "swin": (tf.SwinConfig, tf.SwinForImageClassification, TINY_SWIN_CONFIG),
    "swinv2": (tf.Swinv2Config, tf.Swinv2ForImageClassification, TINY_SWIN_CONFIG),
    "vit": (tf.ViTConfig, tf.ViTForImageClassification, TINY_VIT_CONFIG),
    "deit": (tf.DeiTConfig, tf.DeiTForImageClassification, TINY_VIT_CONFIG),
    "dinov2": (tf.Dinov2Config, tf.Dinov2ForImageClassification, TINY_VIT_CONFIG),
    "dinov2_with_registers": (
        tf.Dinov2WithRegistersConfig,
        tf.Dinov2WithRegistersForImageClassification,
        {**TINY_VIT_CONFIG, "num_register_tokens": 2},
    ),
    # transformers has no DINOv3 classifier: mona_peft registers one (mona_peft.classifiers). pos_embed_rescale=None:
    # the default (2.0) rescales the rotary coordinates at random in training mode, like Swin's stochastic depth.
    "dinov3_vit": (
        tf.DINOv3ViTConfig,
        DINOv3ViTForImageClassification,
        {**TINY_VIT_CONFIG, "num_register_tokens": 2, "pos_embed_rescale": None},
    ),
    "convnext": (tf.ConvNextConfig, tf.ConvNextForImageClassification, TINY_CONVNEXT_CONFIG),
    "convnextv2": (tf.ConvNextV2Config, tf.ConvNextV2ForImageClassification, TINY_CONVNEXT_CONFIG),
    "dinov3_convnext": (
        tf.DINOv3ConvNextConfig,
        DINOv3ConvNextForImageClassification,  # registered by mona_peft, as DINOv3's ViT's
        {key: value for key, value in TINY_CONVNEXT_CONFIG.items() if key != "num_stages"},  # read off hidden_sizes
    ),
    "clip_vision_model": (tf.CLIPConfig, tf.CLIPForImageClassification, TINY_TOWER_CONFIG),
    "siglip_vision_model": (tf.SiglipConfig, tf.SiglipForImageClassification, TINY_TOWER_CONFIG),
    "hiera": (tf.HieraConfig, tf.HieraForImageClassification, TINY_HIERA_CONFIG),
    **{
        key: (tf.TimmWrapperConfig, tf.TimmWrapperForImageClassification, {**kwargs, "num_labels": 3})
        for key, kwargs in TINY_TIMM_MODELS.items()
    },
}
#: Transformer blocks of each tiny model.
TINY_NUM_BLOCKS = {
    model_type: 4 if model_type.startswith("swin") or model_type in ("timm:SwinTransformer", "timm:ConvNeXt") else 2
    for model_type in TINY_MODELS
} | {"hiera": 3}


def build_tiny_model(model_type: str, seed: int = 0, model_class: type | None = None, **overrides: Any) -> nn.Module:
    """A seeded tiny classifier of ``model_type`` (3 labels, 32x32 images), in eval mode.

    ``overrides`` change the config (``num_hidden_layers=3``); ``model_class`` picks another head class of the same
    config (``DeiTForImageClassificationWithTeacher``).
    """
    if model_type not in TINY_MODELS:
        raise KeyError(
            f"No tiny model for model_type {model_type!r}: add one to TINY_MODELS in tests/conftest.py "
            f"(known: {', '.join(sorted(TINY_MODELS))})."
        )
    config_class, default_class, kwargs = TINY_MODELS[model_type]
    if model_type.startswith("timm:") and TIMM_MISSING:
        pytest.skip(TIMM_MISSING)
    if "vision_config" in kwargs:  # the overrides are the tower's
        kwargs = {**kwargs, "vision_config": {**kwargs["vision_config"], **overrides}}
    elif "model_args" in kwargs:  # timm's
        kwargs = {**kwargs, "model_args": {**kwargs["model_args"], **overrides}}
    else:
        kwargs = {**kwargs, **overrides}
    torch.manual_seed(seed)
    return (model_class or default_class)(config_class(**kwargs)).eval()


def build_tiny_swin(seed: int = 0, **overrides: Any) -> tf.SwinForImageClassification:
    """A seeded two-stage Swin classifier (3 labels, 32x32 images), in eval mode."""
    return build_tiny_model("swin", seed=seed, **overrides)


def build_tiny_vit(seed: int = 0, **overrides: Any) -> tf.ViTForImageClassification:
    """A seeded two-layer ViT classifier (3 labels, 32x32 images, CLS token), in eval mode."""
    return build_tiny_model("vit", seed=seed, **overrides)


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
    """Factory: ``tiny_model(model_type, seed=0, model_class=None, **config_overrides)``, any supported type."""
    return build_tiny_model


@pytest.fixture
def tiny_pixel_values():
    """Factory: ``tiny_pixel_values(batch=2, seed=1234, size=32)`` -> seeded random images."""
    return build_tiny_pixel_values


def run_in_fresh_process(code: str, *argv: object) -> None:
    """Run ``python -c code argv...`` offline, with this checkout importable (as a user's process that installed it),
    and fail with its stderr unless it exits 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


def card_snippet(card: Path, marker: str) -> str:
    """The card's first ```python block that contains ``marker`` (the loading snippet a user copies)."""
    blocks = card.read_text().split("```python\n")[1:]
    return next(block.split("```")[0] for block in blocks if marker in block)


def save_tiny_backbone_checkpoint(path: Path) -> str:
    """A tiny pretrained-like Swin checkpoint with three stages (the detectors and Mask2Former read three feature
    maps) and a 32x32 image processor, saved to ``path``; returns the path."""
    build_tiny_model("swin", depths=[1, 1, 1], num_heads=[2, 2, 4]).save_pretrained(path)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        path
    )
    return str(path)


def write_digit_coco_folders(root: Path, train: int = 6, validation: int = 3) -> tuple[Path, Path]:
    """Small COCO folders (images + annotations.json with boxes and RLE masks) of offline digit scenes."""
    from mona_peft.tasks.object_detection.data import DETECTION_CLASSES, instance_scene_split, write_coco_folder

    write_coco_folder(instance_scene_split("train", train, seed=0), list(DETECTION_CLASSES), root / "train")
    write_coco_folder(
        instance_scene_split("validation", validation, seed=0), list(DETECTION_CLASSES), root / "validation"
    )
    return root / "train", root / "validation"


def truncate_image(path: Path) -> None:
    """Cut the image file at ``path`` to half its bytes (an interrupted copy): its header still opens."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def scramble_png_pixels(path: Path) -> None:
    """Garble the compressed pixels of the PNG at ``path`` and mend the chunk's checksum: ``Image.verify`` (which
    checks checksums) passes, decoding fails."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT")
    length = struct.unpack(">I", data[start - 4 : start])[0]
    for i in range(start + 6, start + 4 + length):
        data[i] ^= 0x5A
    data[start + 4 + length : start + 8 + length] = struct.pack(
        ">I", zlib.crc32(bytes(data[start : start + 4 + length]))
    )
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def detection_backbone(tmp_path_factory) -> str:
    """``save_tiny_backbone_checkpoint`` in a folder of the test module."""
    return save_tiny_backbone_checkpoint(tmp_path_factory.mktemp("backbone") / "swin")


@pytest.fixture(scope="module")
def coco_folders(tmp_path_factory) -> tuple[Path, Path]:
    """``write_digit_coco_folders`` (6 training and 3 validation scenes) in a folder of the test module."""
    return write_digit_coco_folders(tmp_path_factory.mktemp("coco"))


_FRESH_PROCESS_RELOAD = """
import sys
import traceback
import torch
import mona_peft  # noqa: F401  (registers the methods with PEFT)
from peft import PeftModel
from transformers import AutoModelForImageClassification

x_path, *rest = sys.argv[1:]
for config_class, base_dir, adapter_dir, out_path in zip(*[iter(rest)] * 4):
    try:
        base = AutoModelForImageClassification.from_pretrained(base_dir)
        model = PeftModel.from_pretrained(base, adapter_dir).eval()
        got = type(model.peft_config["default"]).__name__
        assert got == config_class, f"reloaded a {got}, expected a {config_class}"
        with torch.no_grad():
            torch.save(model(pixel_values=torch.load(x_path)).logits, out_path)
    except Exception:
        torch.save(traceback.format_exc(), out_path)
"""


def logits_after_fresh_process_reload(
    tmp_path: Path,
    saved: Mapping[str, tuple[Path, Path]],
    pixel_values: torch.Tensor,
    config_class: str | Mapping[str, str],
    processes: int = 1,
    strict: bool = True,
) -> dict[str, torch.Tensor | str]:
    """Logits of each ``name: (base_dir, adapter_dir)`` reloaded with ``PeftModel.from_pretrained`` in a new process.

    The new process only gets ``import mona_peft`` and the saved files, as a user would (offline). ``config_class``
    names the config class every reload must produce, or one per name. The cases are split over ``processes``
    processes that run at the same time (starting one costs seconds, one case milliseconds). A case that fails in
    the new process fails the call, or with ``strict=False`` comes back as its traceback (a ``str``).
    """
    torch.save(pixel_values, tmp_path / "x.pt")
    names = list(saved)
    chunks = [names[i::processes] for i in range(processes) if names[i::processes]]
    repo_root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")])}
    env["HF_HUB_OFFLINE"] = "1"
    running = []
    for chunk in chunks:
        argv = [str(tmp_path / "x.pt")]
        for name in chunk:
            expected = config_class if isinstance(config_class, str) else config_class[name]
            base_dir, adapter_dir = saved[name]
            argv += [expected, str(base_dir), str(adapter_dir), str(tmp_path / f"{name}_logits.pt")]
        running.append(
            subprocess.Popen(
                [sys.executable, "-c", _FRESH_PROCESS_RELOAD, *argv],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for process in running:
            _, stderr = process.communicate(timeout=300)
            assert process.returncode == 0, stderr[-3000:]
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.wait()
    results = {name: torch.load(tmp_path / f"{name}_logits.pt") for name in names}
    if strict:
        failed = {name: result for name, result in results.items() if isinstance(result, str)}
        assert not failed, "\n".join(f"{name}:\n{trace}" for name, trace in failed.items())
    return results
