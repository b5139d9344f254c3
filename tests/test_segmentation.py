"""Semantic segmentation: UperNet around every backbone with every method, the script, its data and its errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf
from conftest import build_tiny_model, scramble_png_pixels, truncate_image
from huggingface_hub import ModelCard
from peft import PeftModel
from PIL import Image
from safetensors.torch import load_file

from mona_peft import SUPPORTED_ARCHITECTURES
from mona_peft.backbones import backbone_path
from mona_peft.data import ImageDataError
from mona_peft.tasks.semantic_segmentation.data import (
    BACKGROUND_BANDS,
    MIN_CONTRAST,
    SCENE_CLASSES,
    SCENE_SIZE,
    _visible_colour,
    load_segmentation_task,
    scene_split,
)
from mona_peft.tasks.semantic_segmentation.model import (
    SEGMENTATION_CONFIG_FILE,
    build_upernet,
    save_segmentation_config,
)
from mona_peft.tasks.semantic_segmentation.task import SegmentationArguments, SemanticSegmentationTask
from mona_peft.training import main, parse_args
from mona_peft.tuners.architectures import head_modules
from mona_peft.tuners.methods import build_method
from mona_peft.tuners.registry import methods

REPO = Path(__file__).resolve().parents[1]
LABELS = ["background", "a", "b"]
# Three Swin stages, so the auxiliary head (on the third feature map) exists too.
BACKBONES = {
    "swin": dict(depths=[1, 1, 1], num_heads=[2, 2, 4]),
    "swinv2": dict(depths=[1, 1, 1], num_heads=[2, 2, 4]),
    "dinov2": {},
    "dinov2_with_registers": {},
    "convnext": dict(num_stages=3, depths=[1, 1, 1], hidden_sizes=[16, 32, 64]),
    "dinov3_convnext": dict(depths=[1, 1, 1], hidden_sizes=[16, 32, 64]),
}


def _backbone_checkpoint(model_type: str, folder: Path) -> str:
    path = folder / model_type
    if not path.exists():
        build_tiny_model(model_type, **BACKBONES[model_type]).save_pretrained(path)
        processor = tf.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backbones")
    return {model_type: _backbone_checkpoint(model_type, folder) for model_type in BACKBONES}


@pytest.mark.parametrize("model_type", sorted(BACKBONES))
def test_every_method_trains_its_parameters_and_the_heads_and_reloads_identically(model_type, checkpoints, tmp_path):
    upernet = build_upernet(checkpoints[model_type], LABELS, hidden_size=16)
    heads = head_modules(upernet)
    three_stages = "swin" in model_type or "convnext" in model_type  # the auxiliary head reads the third stage
    assert heads == (["decode_head", "auxiliary_head"] if three_stages else ["decode_head"])
    backbone_norms = [n for n, m in upernet.backbone.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    assert backbone_norms
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    saved = {}
    for name, spec in methods().items():
        if SUPPORTED_ARCHITECTURES[model_type].prompt_layout is None and name.startswith("vpt"):
            continue  # VPT does not support Swin v2 (its attention has no bias module to pad) nor ConvNeXt (no tokens)
        torch.manual_seed(0)
        model = build_method(build_upernet(checkpoints[model_type], LABELS, hidden_size=16), name, heads)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        for head in heads:  # every parameter of the heads trains (PEFT's frozen original copies aside)
            params = [n for n, _ in model.named_parameters() if f"{head}." in n and ".original_module." not in n]
            assert params and set(params) <= trainable, name
        norms = [n for n in trainable if ".backbone." in f".{n}" and any(f".{norm}." in n for norm in backbone_norms)]
        if name not in ("full", "ln_tuning", "bitfit", "partial1"):
            assert not norms, (name, norms[:3])  # the backbone's norms stay frozen
        if spec.saves_whole_model:
            continue
        with torch.no_grad():  # non-trivial adapter weights, so a reload that dropped them would show
            for n, p in model.named_parameters():
                if p.requires_grad and spec.is_own_parameter(n):
                    p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        model.eval()
        folder = tmp_path / name
        model.save_pretrained(folder)
        save_segmentation_config(model, folder)
        with torch.no_grad():
            torch.save(model(pixel_values=x).logits, folder / "logits.pt")
        saved[name] = folder
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch, mona_peft\n"
        "from peft import PeftModel\n"
        "from mona_peft.tasks.semantic_segmentation import load_segmentation_base\n"
        "x = torch.load(sys.argv[1])\n"
        "for folder in sys.argv[2:]:\n"
        "    model = PeftModel.from_pretrained(load_segmentation_base(folder), folder).eval()\n"
        "    with torch.no_grad():\n"
        "        torch.save(model(pixel_values=x).logits, folder + '/reloaded.pt')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "x.pt"), *map(str, saved.values())],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name, folder in saved.items():
        torch.testing.assert_close(torch.load(folder / "reloaded.pt"), torch.load(folder / "logits.pt"), msg=name)


def test_mixed_batch_of_two_segmentation_adapters(checkpoints):
    heads = ["decode_head", "auxiliary_head"]
    model = build_method(build_upernet(checkpoints["swin"], LABELS, hidden_size=16), "mona", heads)
    model.add_adapter("other", model.peft_config["default"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".other." in n:
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    model.eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        mixed = model(pixel_values=x, adapter_names=["default", "other", "__base__"]).logits
        single = {}
        for name in ("default", "other"):
            model.set_adapter(name)
            single[name] = model(pixel_values=x).logits
        with model.disable_adapter():
            base = model(pixel_values=x).logits
    torch.testing.assert_close(mixed[0], single["default"][0])
    torch.testing.assert_close(mixed[1], single["other"][1])
    assert (single["default"] - single["other"]).abs().max() > 1e-4
    assert mixed.shape == base.shape


# ---------------------------------------------------------------------------------------------------- the data


def test_offline_scenes_keep_their_splits_apart_and_masks_exact():
    data, labels = load_segmentation_task("digit-scenes", 0)
    assert labels == list(SCENE_CLASSES) and {k: len(v) for k, v in data.items()} == {
        "train": 1500,
        "validation": 200,
        "test": 200,
    }
    assert data["train"][0]["image"].size == (SCENE_SIZE, SCENE_SIZE)
    masks = np.stack([np.asarray(m) for m in data["train"]["label"]])
    fractions = np.bincount(masks.ravel(), minlength=len(labels)) / masks.size
    assert masks.max() < len(labels) and (fractions[1:] > 0.005).all() and 0.7 < fractions[0] < 0.97
    again = scene_split("train", 5, 0)
    assert [np.asarray(m).tobytes() for m in again["label"]] == [
        np.asarray(m).tobytes() for m in data["train"]["label"][:5]
    ]
    assert list(BACKGROUND_BANDS) == ["train", "validation", "test"]
    few, _ = load_segmentation_task("digit-scenes-fewshot", 0)
    assert len(few["train"]) == 100 and [np.asarray(i).tobytes() for i in few["test"]["image"][:3]] == [
        np.asarray(i).tobytes() for i in data["test"]["image"][:3]
    ]


@pytest.mark.parametrize(
    ("under", "colour"),
    [(120, [128, 128, 128]), (20, [10, 30, 0]), (240, [250, 240, 230]), (128, [200, 200, 200])],
)
def test_digit_colours_stand_out_from_the_photograph_under_them(under, colour):
    luminance = np.array([0.299, 0.587, 0.114])
    region = np.full((6, 6, 3), under, dtype=np.float32)
    chosen = _visible_colour(np.array(colour, dtype=np.float32), region)
    assert abs(chosen @ luminance - under) >= MIN_CONTRAST
    if abs(np.array(colour) @ luminance - under) >= MIN_CONTRAST:  # already visible: kept as drawn
        np.testing.assert_array_equal(chosen, colour)


def _write_folder(root: Path, count: int = 4, size=(32, 32), labels=LABELS) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        mask = rng.integers(0, len(labels), size, dtype=np.uint8)
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{i}.png")
    (root / "id2label.json").write_text(json.dumps(dict(enumerate(labels))))
    return root


def _args(model, out, *extra):
    return [
        "--model_name_or_path", model, "--output_dir", str(out), "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "4", "--report_to", "none", "--num_warmup_steps", "1",
        "--image_size", "32", "--decoder_hidden_size", "16", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda root: (root / "masks" / "1.png").unlink(), r"1\.png has no mask in"),
        (
            lambda root: Image.new("L", (20, 32)).save(root / "masks" / "2.png"),
            r"2\.png is 20x32 \(width x height\), its image 32x32",
        ),
        (
            lambda root: Image.fromarray(np.full((32, 32), 7, np.uint8), mode="L").save(root / "masks" / "3.png"),
            r"3\.png holds class id\(s\) \[7\], outside 0..2 of id2label's 3 classes \(255 is not scored\)",
        ),
        (lambda root: [p.unlink() for p in (root / "images").iterdir()], r"images holds no images"),
        (
            lambda root: Image.new("RGB", (32, 32)).save(root / "images" / "0.jpg"),
            r"images/0\.jpg and .*images/0\.png have the same stem '0'",
        ),
        # Opening reads the header only: the cut or garbled pixels used to fail inside the training loop, unnamed.
        (
            lambda root: truncate_image(root / "images" / "2.png"),
            r"images/2\.png is not a readable image \(OSError: image file is truncated",
        ),
        (
            lambda root: scramble_png_pixels(root / "images" / "1.png"),
            r"images/1\.png is not a readable image \(OSError",
        ),
        (
            lambda root: (root / "id2label.json").write_text('{"0": "background", "1": "cat",}'),
            r"id2label\.json is not valid JSON .*expected a JSON object of class ids to names",
        ),
        (
            lambda root: (root / "id2label.json").write_text('{"background": 0, "cat": 1}'),
            r"id2label\.json maps 'background': 0, 'cat': 1; expected .*label2id written instead",
        ),
        (
            lambda root: (root / "id2label.json").write_text('["background", "cat"]'),
            r"id2label\.json holds a JSON list; expected a JSON object",
        ),
    ],
)
def test_bad_segmentation_data_is_named(breakage, message, checkpoints, tmp_path):
    root = _write_folder(tmp_path / "data")
    breakage(root)
    with pytest.raises(ImageDataError, match=message):
        main(_args(checkpoints["swin"], tmp_path / "out", "--train_dir", str(root)), task=SemanticSegmentationTask)


@pytest.mark.parametrize(
    ("images", "batch", "message"),
    [
        (4, "1", r"--per_device_train_batch_size 1: UperNet's pyramid pooling .*BatchNorm.* use 2 or more"),
        (1, "2", r"the training data holds 1 image: UperNet's pyramid pooling .*give it at least 2"),
    ],
)
def test_a_batch_of_one_image_is_refused_before_training(images, batch, message, checkpoints, tmp_path):
    """BatchNorm over UperNet's 1x1 pooled maps cannot train on one image: said up front, not deep in the first step."""
    train, val = _write_folder(tmp_path / "train", images), _write_folder(tmp_path / "val", 2)
    data = ["--train_dir", str(train), "--validation_dir", str(val), "--max_train_steps", "2"]
    with pytest.raises(SystemExit, match=message):
        main(_args(checkpoints["swin"], tmp_path / "out", *data, "--per_device_train_batch_size", batch),
             task=SemanticSegmentationTask)  # fmt: skip
    assert not (tmp_path / "out" / "checkpoint-1").exists()


def test_do_reduce_labels_leaves_0_unscored_on_folders_and_the_offline_scenes(checkpoints, tmp_path):
    """Masks of 1..N with 0 unscored, as --help says: the check reads them so, and the processor gets a writable mask
    to rewrite (it used to fail on every run with "assignment destination is read-only")."""
    train, val = _write_folder(tmp_path / "train"), _write_folder(tmp_path / "val", 2)  # mask values 0..2
    (tmp_path / "train" / "id2label.json").write_text(json.dumps({"0": "a", "1": "b"}))
    # one step after one warm-up step: the polynomial schedule used to divide by zero there
    data = ["--train_dir", str(train), "--validation_dir", str(val), "--max_train_steps", "1"]
    with pytest.raises(ImageDataError, match=r"holds class id\(s\) \[2\], outside 0..1 of id2label's 2 classes"):
        main(_args(checkpoints["swin"], tmp_path / "plain", *data), task=SemanticSegmentationTask)
    out = tmp_path / "reduced"
    results = main(_args(checkpoints["swin"], out, *data, "--do_reduce_labels"), task=SemanticSegmentationTask)
    assert len(results["eval_per_category_iou"]) == 2
    assert json.loads((out / "run_args.json").read_text())["do_reduce_labels"] is True
    Image.fromarray(np.full((32, 32), 3, np.uint8), mode="L").save(val / "masks" / "1.png")
    with pytest.raises(ImageDataError, match=r"outside 1..2 of id2label's 2 classes \(255 and 0 are not scored"):
        main(_args(checkpoints["swin"], tmp_path / "bad", *data, "--do_reduce_labels"), task=SemanticSegmentationTask)
    # The offline scenes: their background becomes "not scored", the digits the classes.
    task = SemanticSegmentationTask(SegmentationArguments(do_reduce_labels=True))
    config = parse_args(["--model_name_or_path", task.default_model()], defaults=SemanticSegmentationTask.run_defaults)
    scenes, labels = task.load_data(config)
    assert labels == list(SCENE_CLASSES[1:])
    batch = task.transform(task.load_processor(config), train=False)(scenes["validation"][:2])
    mask = np.array(scenes["validation"][0]["label"])
    expected = np.where(mask == 0, 255, mask.astype(np.int64) - 1)
    np.testing.assert_array_equal(batch["labels"][0].numpy(), expected)


def test_the_script_trains_upernet_around_convnext(checkpoints, tmp_path):
    """transformers' UperNet takes ConvNeXt's backbone natively; Mona sits after each ConvNeXt block's residual add."""
    train, val = _write_folder(tmp_path / "train", 4), _write_folder(tmp_path / "val", 2)
    data = ["--train_dir", str(train), "--validation_dir", str(val), "--max_train_steps", "2"]
    out = tmp_path / "out"
    results = main(_args(checkpoints["convnext"], out, *data), task=SemanticSegmentationTask)
    assert len(results["eval_per_category_iou"]) == 3
    config = json.loads((out / SEGMENTATION_CONFIG_FILE).read_text())
    assert config["backbone_config"]["model_type"] == "convnext"
    assert json.loads((out / "adapter_config.json").read_text())["base_model_type"] == "convnext"


def test_the_script_trains_eomt_around_the_shipped_vit(tmp_path):
    """A plain ViT becomes EoMT's encoder (the default segmenter for it): the queries and heads train, the config
    beside the adapter rebuilds it, and the saved processor is EoMT's windowed one, for the pipeline."""
    train, val = _write_folder(tmp_path / "train", 4), _write_folder(tmp_path / "val", 2)
    data = ["--train_dir", str(train), "--validation_dir", str(val), "--max_train_steps", "2", "--num_queries", "6"]
    out = tmp_path / "out"
    results = main(_args(str(backbone_path("vit")), out, *data), task=SemanticSegmentationTask)
    assert len(results["eval_per_category_iou"]) == 3
    config = json.loads((out / SEGMENTATION_CONFIG_FILE).read_text())
    assert (config["model_type"], config["num_queries"], config["backbone_checkpoint"]) == ("eomt", 6, "mona_peft:vit")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_type"] == "eomt"
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert (processor["image_processor_type"], processor["do_split_image"]) == ("EomtImageProcessor", True)
    saved = load_file(out / "adapter_model.safetensors")
    assert any("mona" in key for key in saved) and any("class_predictor" in key for key in saved)


@pytest.mark.parametrize(
    ("model_type", "segmenter", "message"),
    [
        ("swin", "eomt", r"--segmenter eomt around a 'swin' checkpoint: .*eomt \(vit, dinov2"),
        ("vit", "upernet", r"--segmenter upernet around a 'vit' checkpoint: .*upernet \(swin, swinv2"),
        ("vit", "fcn", r"--segmenter fcn around a 'vit' checkpoint: the segmenters"),
    ],
)
def test_a_segmenter_that_does_not_take_the_backbone_is_named(model_type, segmenter, message, checkpoints, tmp_path):
    path = str(backbone_path("vit")) if model_type == "vit" else checkpoints[model_type]
    train = _write_folder(tmp_path / "train", 2)
    with pytest.raises(SystemExit, match=message):
        main(
            _args(path, tmp_path / "out", "--train_dir", str(train), "--segmenter", segmenter),
            task=SemanticSegmentationTask,
        )


def test_script_end_to_end_and_resume_equals_an_uninterrupted_run(checkpoints, tmp_path):
    train, val = _write_folder(tmp_path / "train", 6), _write_folder(tmp_path / "val", 3)
    data = ["--train_dir", str(train), "--validation_dir", str(val), "--max_train_steps", "4", "--seed", "1"]
    full = tmp_path / "full"
    results = main(_args(checkpoints["swin"], full, *data, "--checkpointing_steps", "2"), task=SemanticSegmentationTask)
    assert 0 <= results["eval_mean_iou"] <= 1 and len(results["eval_per_category_iou"]) == 3
    files = {p.name for p in full.iterdir()}
    assert {"adapter_model.safetensors", SEGMENTATION_CONFIG_FILE, "preprocessor_config.json", "README.md"} <= files
    card = ModelCard((full / "README.md").read_text()).data
    assert card.pipeline_tag == "image-segmentation" and card.library_name == "peft"
    assert card.eval_results[0].metric_type == "mean_iou"
    assert card.eval_results[0].metric_value == pytest.approx(results["eval_mean_iou"])
    assert "load_segmentation_base" in (full / "README.md").read_text()
    # The metrics come from the validation folder, and the card says so (not "Evaluated on **train**").
    text = (full / "README.md").read_text()
    assert f"Evaluated on the validation folder `val` of **{tmp_path.name}** (3 images)." in text
    assert "**train**" not in text and "train" not in card.tags
    # The task's own flags are part of the run: other ones neither replace the finished run nor resume its checkpoint.
    with pytest.raises(SystemExit, match=r"already holds a different run \(differs in image_size\)"):
        again = [*data, "--checkpointing_steps", "2", "--image_size", "48"]
        main(_args(checkpoints["swin"], full, *again), task=SemanticSegmentationTask)
    assert json.loads((full / "all_results.json").read_text())["run_id"] == results["run_id"]
    other = [*data, "--resume_from_checkpoint", str(full / "checkpoint-2"), "--decoder_hidden_size", "32"]
    with pytest.raises(SystemExit, match="was written by a run with other settings"):
        main(_args(checkpoints["swin"], tmp_path / "other", *other), task=SemanticSegmentationTask)
    # dense tasks recompute Mona's inside by default; the resumed run below turns it off and must match
    assert json.loads((full / "adapter_config.json").read_text())["gradient_checkpointing"] is True

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "run_args.json").write_text((full / "run_args.json").read_text())
    import shutil

    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    main(
        _args(checkpoints["swin"], resumed, *data, "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest")
        + ["--mona_gradient_checkpointing", "false"],
        task=SemanticSegmentationTask,
    )
    assert json.loads((resumed / "adapter_config.json").read_text())["gradient_checkpointing"] is False
    expected, again = load_file(full / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert expected.keys() == again.keys()
    for key in expected:
        torch.testing.assert_close(again[key], expected[key], rtol=1e-5, atol=1e-6)

    # The card's loading path, in this process: the adapter over the rebuilt base gives the run's predictions.
    from mona_peft.tasks.semantic_segmentation.model import load_segmentation_base

    model = PeftModel.from_pretrained(load_segmentation_base(full), full).eval()
    assert model(pixel_values=torch.zeros(1, 3, 32, 32)).logits.shape[1] == 3


DPT = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
    neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16, backbone_out_indices=[0, 1, 2, 3], num_labels=3,
)  # fmt: skip


def test_dpt_vit_takes_every_method_and_reloads_identically_in_a_fresh_process(tmp_path):
    """DPT's heads are named 'head' (holding 'head.head') and 'auxiliary_head': PEFT's suffix matching of
    modules_to_save would wrap them twice and the adapter would not load, so that is refused by name; the ViT's
    adapters (with the neck) save and reload."""
    torch.manual_seed(0)
    base = tf.DPTForSemanticSegmentation(tf.DPTConfig(**DPT)).eval()
    base.save_pretrained(tmp_path / "base")
    heads = head_modules(base)
    assert heads == ["neck", "head", "auxiliary_head"]
    with pytest.raises(ValueError, match=r"'head' also matches 'head.head'.*auxiliary_head"):
        build_method(base, "mona", heads)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    saved = []
    for name, spec in methods().items():
        if spec.saves_whole_model:
            continue
        model = build_method(tf.DPTForSemanticSegmentation.from_pretrained(tmp_path / "base"), name, ["neck"])
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        own = [n for n in trainable if spec.is_own_parameter(n)]
        assert own and all(".dpt." in n for n in own), name  # the method acts inside the ViT
        if name != "ln_tuning":  # the ViT's norms stay frozen
            assert not [n for n in trainable if ".dpt." in n and "layernorm" in n], name
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.requires_grad and spec.is_own_parameter(n):
                    p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        model.eval()
        model.save_pretrained(tmp_path / name)
        with torch.no_grad():
            torch.save(model(pixel_values=x).logits, tmp_path / name / "logits.pt")
        saved.append(str(tmp_path / name))
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch, mona_peft\n"
        "from peft import PeftModel\n"
        "from transformers import DPTForSemanticSegmentation\n"
        "x = torch.load(sys.argv[1])\n"
        "for folder in sys.argv[3:]:\n"
        "    base = DPTForSemanticSegmentation.from_pretrained(sys.argv[2])\n"
        "    model = PeftModel.from_pretrained(base, folder).eval()\n"
        "    with torch.no_grad():\n"
        "        torch.save(model(pixel_values=x).logits, folder + '/reloaded.pt')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", code, str(tmp_path / "x.pt"), str(tmp_path / "base"), *saved]
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    for folder in saved:
        torch.testing.assert_close(torch.load(f"{folder}/reloaded.pt"), torch.load(f"{folder}/logits.pt"))


def test_ln_tuning_tunes_the_stage_norms_the_heads_read(checkpoints):
    """A Swin backbone normalises each returned stage with `hidden_states_norms` (its final `layernorm` is never
    applied there): LN tuning must tune those."""
    upernet = build_upernet(checkpoints["swin"], LABELS, hidden_size=16)
    model = build_method(upernet, "ln_tuning", head_modules(upernet))
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    for stage in ("stage1", "stage2", "stage3"):
        assert any(f"hidden_states_norms.{stage}." in name for name in trainable), stage
