"""The shipped Fashion-MNIST backbones: they load with the Auto classes and are really pretrained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from transformers import AutoImageProcessor, AutoModelForImageClassification

from mona_peft.backbones import BACKBONES, backbone_path, build_backbone, fashion_mnist
from mona_peft.backbones.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FashionMNISTNotFoundError,
    load_fashion_mnist,
    pixel_values_from_uint8,
)
from mona_peft.backbones.pretraining import evaluate_accuracy
from mona_peft.data import digits_tensors

ARCHS = sorted(BACKBONES)

# Linear probe (standardised features, LogisticRegression C=0.1) on scikit-learn's digits: 1,437 training
# and 360 validation images, features = mean of the last layer's patch tokens (Swin's pooler output; ViT
# without its CLS token). Measured when the checkpoints were made (validation accuracy):
#   swin: pretrained 0.817; random init seeds 0/1/2: 0.706/0.717/0.719 (0.098 above the best)
#   vit:  pretrained 0.942; random init seeds 0/1/2: 0.853/0.858/0.894 (0.048 above the best)
# The pretrained features must beat the best of three random inits by this much.
PROBE_MARGIN = 0.03
RANDOM_INIT_SEEDS = (0, 1, 2)
# Config entries that legitimately differ between a saved checkpoint and a freshly built model.
VOLATILE_CONFIG_KEYS = {"_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype"}


@pytest.fixture(scope="module")
def digits():
    return digits_tensors(image_size=32, seed=0)


@pytest.mark.parametrize("name", ARCHS)
def test_shipped_checkpoint_loads_with_auto_classes(name):
    folder = backbone_path(name)
    assert folder.name == f"{name}-fmnist"
    assert (folder / "model.safetensors").stat().st_size < 8e6
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert model.config.model_type == name
    assert [model.config.id2label[i] for i in range(10)] == list(FASHION_MNIST_CLASSES)
    assert next(model.parameters()).dtype == torch.float32

    processor = AutoImageProcessor.from_pretrained(folder)  # works without torchvision
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), mode="L")
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 32)
    # The processor applies the same transform as the training loader (PIL rounds to uint8 after resizing).
    expected = pixel_values_from_uint8(np.array(image)[None])
    assert torch.allclose(pixel_values, expected, atol=2 * 2 / 255)
    with torch.no_grad():
        assert model(pixel_values=pixel_values).logits.shape == (1, 10)


def test_training_log_is_complete():
    for name in ARCHS:
        log = json.loads((backbone_path(name) / "training_log.json").read_text())
        assert log["status"] == "finished"
        assert (
            log["arch"] == name and "seed" in log and log["command"].startswith("python scripts/pretrain_backbone.py")
        )
        assert log["epochs"] and all({"train_loss", "test_accuracy", "wall_time_s"} <= set(e) for e in log["epochs"])
        assert log["final_test_accuracy_float32"] > 0.8  # chance is 0.1
        assert (backbone_path(name) / "README.md").is_file()


@torch.no_grad()
def _features(model, pixels: torch.Tensor) -> np.ndarray:
    """Mean of the last layer's patch tokens (Swin: the pooler output; ViT: all tokens but CLS)."""
    model.eval()
    hidden = model.base_model(pixel_values=pixels).last_hidden_state
    if model.config.model_type == "vit":
        hidden = hidden[:, 1:]
    return hidden.mean(1).numpy()


def _probe_accuracy(model, digits) -> float:
    (train_x, train_y), (val_x, val_y) = digits
    train_features, val_features = _features(model, train_x), _features(model, val_x)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.1))
    # One BLAS thread: on a busy 2-core machine multithreaded lbfgs takes ~100x longer (9 s vs 0.1 s).
    with threadpool_limits(1):
        probe.fit(train_features, train_y.numpy())
        return float(probe.score(val_features, val_y.numpy()))


@pytest.mark.parametrize("name", ARCHS)
def test_pretrained_features_beat_random_init_on_a_linear_probe(name, digits):
    pretrained = AutoModelForImageClassification.from_pretrained(backbone_path(name))
    random_init = build_backbone(name, seed=0)
    saved, fresh = (
        {k: v for k, v in model.config.to_dict().items() if k not in VOLATILE_CONFIG_KEYS}
        for model in (pretrained, random_init)
    )
    assert saved == fresh  # the baseline is the same architecture, only the weights differ
    accuracy_pretrained = _probe_accuracy(pretrained, digits)
    accuracy_random = [_probe_accuracy(build_backbone(name, seed=seed), digits) for seed in RANDOM_INIT_SEEDS]
    assert accuracy_pretrained >= max(accuracy_random) + PROBE_MARGIN, (name, accuracy_pretrained, accuracy_random)


@pytest.mark.parametrize("name", ARCHS)
def test_shipped_checkpoint_classifies_fashion_mnist(name):
    """Direct evidence of pretraining where the data is installed: the first 500 test images."""
    if not all((fashion_mnist.FASHION_MNIST_DIR / f).is_file() for f in fashion_mnist.FASHION_MNIST_FILES["test"]):
        pytest.skip("dataset-fashion-mnist is not installed")
    pixels, labels = fashion_mnist.fashion_mnist_tensors("test", limit=500)
    model = AutoModelForImageClassification.from_pretrained(backbone_path(name))
    assert evaluate_accuracy(model, pixels, labels) > 0.75  # shipped: ~0.85 (swin), ~0.87 (vit)


def test_loader_reports_how_to_install_missing_data(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_DIR", tmp_path / "missing")
    with pytest.raises(FashionMNISTNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        load_fashion_mnist("test", data_dir=tmp_path)


def test_loader_reads_the_installed_test_split():
    if not all((fashion_mnist.FASHION_MNIST_DIR / f).is_file() for f in fashion_mnist.FASHION_MNIST_FILES["test"]):
        pytest.skip("dataset-fashion-mnist is not installed")
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))


def test_backbone_path_rejects_unknown_names():
    with pytest.raises(KeyError, match="swin"):
        backbone_path("resnet")


def _write_idx(path, array: np.ndarray) -> None:
    import gzip
    import struct

    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_pretraining_trains_logs_and_saves_a_loadable_backbone_with_its_card(tmp_path, arch="swin"):
    """The pretraining loop end to end on a small idx-format data set (the Fashion-MNIST file format)."""
    from mona_peft.backbones.pretraining import PretrainConfig, pretrain

    rng = np.random.default_rng(0)
    for split, count in (("train", 96), ("test", 40)):
        images_file, labels_file = fashion_mnist.FASHION_MNIST_FILES[split]
        _write_idx(tmp_path / images_file, rng.integers(0, 256, (count, 28, 28)))
        _write_idx(tmp_path / labels_file, rng.integers(0, 10, count))
    config = PretrainConfig(
        arch=arch, epochs=2, batch_size=32, compile=False, log_every=2, data_dir=str(tmp_path), augment=True
    )
    lines: list[str] = []
    record = pretrain(config, output_dir=tmp_path / "out", command=["pretrain", arch], log=lines.append)
    assert record["status"] == "finished" and record["command"] == f"pretrain {arch}"
    assert [epoch["epoch"] for epoch in record["epochs"]] == [1, 2] and len(record["steps"]) == 3  # steps 2, 4, 6
    assert record["steps"][-1]["step"] == 6 and 0.0 <= record["final_test_accuracy_float32"] <= 1.0
    assert json.loads((tmp_path / "out" / "training_log.json").read_text()) == record
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    first = build_backbone(arch, config.seed)
    assert any(
        not torch.equal(a, b) for a, b in zip(model.state_dict().values(), first.state_dict().values(), strict=True)
    )
    assert "Fashion-MNIST" in (tmp_path / "out" / "README.md").read_text() and lines
