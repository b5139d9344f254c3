"""The training script: outputs, resumption, distributed launch, and clear errors on bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from conftest import build_tiny_model, scramble_png_pixels
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

import mona_peft
import mona_peft.backbones
from mona_peft.data import ImageDataError
from mona_peft.sharing.model_card import BASE_MODEL_PLACEHOLDER
from mona_peft.tasks.image_classification import main

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_image_classification.py"


def _save_with_processor(model, path):
    model.save_pretrained(path)
    processor = tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_swin(tmp_path_factory):
    torch.manual_seed(0)
    config = tf.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)
    return _save_with_processor(tf.SwinForImageClassification(config), tmp_path_factory.mktemp("tiny-swin"))


def _args(model, output_dir, *extra):
    return [
        "--model_name_or_path", model, "--output_dir", str(output_dir), "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "128", "--report_to", "none", "--num_warmup_steps", "1", *extra,
    ]  # fmt: skip


def test_run_writes_adapter_results_and_card(tiny_swin, tmp_path):
    out = tmp_path / "run"
    results = main(_args(tiny_swin, out, "--max_train_steps", "3", "--report_to", "tensorboard"))
    assert {"adapter_config.json", "adapter_model.safetensors", "all_results.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    saved = json.loads((out / "all_results.json").read_text())
    assert saved["completed_steps"] == 3 and 0 <= saved["eval_top1"] <= saved["eval_top5"] <= 1
    assert saved["adapter_bytes"] == (out / "adapter_model.safetensors").stat().st_size < 2_000_000
    assert results["eval_top1"] == saved["eval_top1"]
    keys = load_file(out / "adapter_model.safetensors")
    assert keys and all(".mona_" in k or "classifier" in k for k in keys)
    assert json.loads((out / "adapter_config.json").read_text())["gradient_checkpointing"] is False  # classification
    card = ModelCard((out / "README.md").read_text()).data
    assert card.library_name == "peft" and "mona" in card.tags and "image-classification" in card.tags
    assert card.eval_results[0].metric_value == pytest.approx(saved["eval_top1"])
    assert list((out / "mona_peft").rglob("events.out.tfevents.*"))  # TensorBoard logs


def test_resumed_run_ends_where_the_uninterrupted_one_does(tiny_swin, tmp_path):
    steps = ["--max_train_steps", "4", "--checkpointing_steps", "2", "--seed", "3"]
    main(_args(tiny_swin, tmp_path / "full", *steps))
    # Interrupted after step 2: only its output dir up to that checkpoint survives.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(tmp_path / "full" / "run_args.json", resumed)
    shutil.copytree(tmp_path / "full" / "checkpoint-2", resumed / "checkpoint-2")
    main(_args(tiny_swin, resumed, *steps, "--resume_from_checkpoint", "latest"))
    full = load_file(tmp_path / "full" / "adapter_model.safetensors")
    again = load_file(resumed / "adapter_model.safetensors")
    assert full.keys() == again.keys()
    for key in full:
        torch.testing.assert_close(again[key], full[key], rtol=1e-5, atol=1e-6)
    first = load_file(tmp_path / "full" / "checkpoint-2" / "adapter" / "adapter_model.safetensors")
    assert any(not torch.equal(first[k], full[k]) for k in full)  # steps 3-4 really trained
    assert sum(f.stat().st_size for f in (resumed / "checkpoint-2").rglob("*")) < 5_000_000  # no frozen backbone


def test_image_folders_with_mixed_modes_train(tiny_swin, tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                mode, shape = ("L", (20, 24)) if i % 2 else ("RGB", (24, 20, 3))
                Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(folder / f"{i}.png")
    folders = ["--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val")]
    results = main(_args(tiny_swin, tmp_path / "out", *folders, "--max_train_steps", "2"))
    assert "eval_top1" in results and "eval_top5" not in results  # two classes: no top-5


@pytest.mark.parametrize(
    ("folders", "dataset", "evaluated_on"),
    [
        (["data/train", "data/val"], "data", "the validation folder `val` of **data** (4 images)"),
        (["pets"], "pets", "2 images (25%) held out from the training data of **pets** (seed 42) and not trained on"),
        ([], "sklearn-digits", "360 images (20%) held out from the training data of **sklearn-digits** (seed 42)"),
    ],
)
def test_the_card_names_the_data_its_results_come_from(folders, dataset, evaluated_on, tmp_path):
    """Never the training folder ("train") as the evaluation set: the validation folder, or the held-out share."""
    from mona_peft.tasks.image_classification import ImageClassificationTask
    from mona_peft.training import parse_args

    rng = np.random.default_rng(0)
    argv = []
    for flag, split, count in zip(("--train_dir", "--validation_dir"), folders, (4, 2), strict=False):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(count):
                image = Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8))
                image.save(tmp_path / split / label / f"{i}.png")
        argv += [flag, str(tmp_path / split)]
    config = parse_args(argv)
    task = ImageClassificationTask()
    data, _ = task.load_data(config)
    assert task.dataset_label(config) == dataset
    assert task.evaluated_on(config, data).startswith(evaluated_on)


@pytest.mark.parametrize(
    "backbone", ["shipped", "swin", "dinov3_vit", "clip_vision_model", "siglip_vision_model", "convnext"]
)
def test_class_names_come_back_through_the_cards_snippet_and_the_pipeline(backbone, tiny_swin, tmp_path):
    """The script trains each family's classifier; its card's snippet reloads it in a fresh process. The card holds no
    path of this machine: the shipped backbone is `backbone_path("swin")`, another local base a placeholder."""
    if backbone == "shipped":
        model = str(mona_peft.backbones.backbone_path("swin"))
    else:
        model = (
            tiny_swin if backbone == "swin" else _save_with_processor(build_tiny_model(backbone), tmp_path / backbone)
        )
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
                    tmp_path / split / label / f"{i}.png"
                )
    out = tmp_path / "out"
    folders = ["--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val")]
    main(_args(model, out, *folders, "--max_train_steps", "1"))
    assert json.loads((out / "labels.json").read_text()) == {"id2label": {"0": "cat", "1": "dog"}}
    # Run the card's own loading snippet, as a user would, in a fresh process.
    card = (out / "README.md").read_text()
    assert str(tmp_path) not in card and str(REPO) not in card
    snippet = card.split("## How to load", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "load_labels" in snippet and 'pipeline("image-classification"' in snippet
    script = snippet.replace("path/to/this/adapter", str(out))
    if backbone == "shipped":
        assert 'from_pretrained(backbone_path("swin"))' in script  # runs as written, the adapter path aside
    else:  # the card asks the reader to put their copy of the base checkpoint there
        assert f'Replace `"{BASE_MODEL_PLACEHOLDER}"`' in card
        script = script.replace(BASE_MODEL_PLACEHOLDER, model)
    image = tmp_path / "val" / "dog" / "0.png"
    script = f"from PIL import Image\nimage = Image.open({str(image)!r})\n{script}\n"
    script += "import json\nprint(json.dumps({'id2label': model.config.id2label, 'top': predictions[0]['label']}))\n"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["id2label"] == {"0": "cat", "1": "dog"} and answer["top"] in {"cat", "dog"}


def test_folder_without_class_folders_is_refused(tiny_swin, tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ImageDataError, match="no class folders: expected .*flat/<class name>/<image files>"):
        main(_args(tiny_swin, tmp_path / "out", "--train_dir", str(tmp_path / "flat")))


def test_corrupt_image_is_reported_by_name(tiny_swin, tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "a" / "good.png")
    (tmp_path / "data" / "a" / "broken.jpg").write_bytes(b"not really a jpeg")
    # verify() passes on these pixels (their checksum is right); only decoding them finds the damage
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "a" / "garbled.png")
    scramble_png_pixels(tmp_path / "data" / "a" / "garbled.png")
    with pytest.raises(ImageDataError, match=r"(?s)Unreadable image.*broken\.jpg is not a readable image") as raised:
        main(_args(tiny_swin, tmp_path / "out", "--train_dir", str(tmp_path / "data")))
    assert "garbled.png is not a readable image (OSError" in str(raised.value)


def test_unknown_method_lists_the_available_ones(tiny_swin, tmp_path):
    with pytest.raises(SystemExit, match="unknown --method 'lora2'; available: adapter, adaptformer, bitfit, .*mona"):
        main(_args(tiny_swin, tmp_path / "out", "--method", "lora2"))


def test_unsupported_architecture_is_named(tmp_path):
    config = tf.ResNetConfig(depths=[1, 1], hidden_sizes=[8, 16])
    model = _save_with_processor(tf.ResNetForImageClassification(config), tmp_path / "resnet")
    with pytest.raises(mona_peft.UnsupportedArchitectureError, match="resnet.*Supported model types: clip_vision_mod"):
        main(_args(model, tmp_path / "out", "--max_train_steps", "1"))


def test_resume_from_nothing_is_refused(tiny_swin, tmp_path):
    with pytest.raises(SystemExit, match="is not a checkpoint"):
        main(_args(tiny_swin, tmp_path / "out", "--resume_from_checkpoint", str(tmp_path / "missing")))
    with pytest.raises(SystemExit, match="no checkpoint-\\* folder"):
        main(_args(tiny_swin, tmp_path / "out2", "--resume_from_checkpoint", "latest"))


def test_output_dir_of_another_run_is_refused(tiny_swin, tmp_path):
    out = tmp_path / "out"
    main(_args(tiny_swin, out, "--max_train_steps", "1"))
    before = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(SystemExit, match="already holds a different run .*learning_rate.*--overwrite_output_dir"):
        main(_args(tiny_swin, out, "--max_train_steps", "1", "--learning_rate", "0.5"))
    assert (out / "adapter_model.safetensors").read_bytes() == before  # nothing lost
    main(_args(tiny_swin, out, "--max_train_steps", "1", "--learning_rate", "0.5", "--overwrite_output_dir"))


def test_accelerate_launch_with_two_cpu_processes(tiny_swin, tmp_path):
    out = tmp_path / "ddp"
    # `accelerate launch --cpu --num_processes 2` needs MPI; torchrun-style launching with the CPU forced gives
    # two gloo processes (DistributedType.MULTI_CPU).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command = [*launch, str(SCRIPT), *_args(tiny_swin, out, "--max_train_steps", "2")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "all_results.json").read_text())
    assert results["num_processes"] == 2 and results["completed_steps"] == 2
    assert len(list(out.glob("adapter_model.safetensors"))) == 1
    loaded = load_file(out / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in loaded.values())


def test_push_to_hub_uploads_adapter_and_our_card(tiny_swin, tmp_path, monkeypatch):
    from hub_server import HubServer, isolate_hf_home, patch_endpoint
    from huggingface_hub import HfApi, hf_hub_download

    from mona_peft.sharing.labels import load_labels
    from mona_peft.sharing.model_card import is_mona_peft_card

    with HubServer(tokens={"hf_test": "test-user"}) as server:
        patch_endpoint(monkeypatch, server.url)
        isolate_hf_home(monkeypatch, tmp_path / "hf_home")
        repo_id = "test-user/mona-digits"
        push = ["--push_to_hub", "--hub_model_id", repo_id, "--hub_token", "hf_test", "--max_train_steps", "1"]
        main(_args(tiny_swin, tmp_path / "out", *push))
        files = set(HfApi(endpoint=server.url, token="hf_test").list_repo_files(repo_id))
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "all_results.json"} <= files
        assert not any(name.startswith("checkpoint-") or name == "run_args.json" for name in files)
        card = Path(hf_hub_download(repo_id, "README.md", token="hf_test")).read_text()
        assert is_mona_peft_card(card) and "import mona_peft" in card
        # the class names travel with the adapter (the digits, not the base checkpoint's names)
        assert "labels.json" in files and "load_labels" in card
        labels = load_labels(repo_id, token="hf_test")
        assert labels == load_labels(tmp_path / "out") and len(labels["id2label"]) == 10
