"""Instance segmentation: the script end to end (Mask2Former around a Swin), its card, resumption, the card's loading
path in a fresh process, the evaluation of perfect predictions, the training targets, and a bad annotation named
through the script."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers as tf
from conftest import card_snippet
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from mona_peft.sharing.hub import ALLOW_PATTERNS, IGNORE_PATTERNS
from mona_peft.tasks.instance_segmentation import INSTANCE_SEGMENTATION_CONFIG_FILE
from mona_peft.tasks.instance_segmentation.task import (
    InstanceSegmentationArguments,
    InstanceSegmentationTask,
    instance_objects,
    instance_predictions,
    mask_labels,
)
from mona_peft.tasks.object_detection.data import INSTANCE_SCENE_SIZE, decode_mask, instance_scene_split
from mona_peft.training import main, parse_args
from mona_peft.training.run import FineTuningRun

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["digit 0", "digit 1", "digit 2"]


def _args(backbone: str, out: Path, folders: tuple[Path, Path], *extra: str) -> list[str]:
    return [
        "--model_name_or_path", backbone, "--output_dir", str(out), "--train_dir", str(folders[0]),
        "--validation_dir", str(folders[1]), "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "3",
        "--report_to", "none", "--num_warmup_steps", "1", "--image_height", "32", "--image_width", "32",
        "--hidden_dim", "32", "--num_queries", "5", *extra,
    ]  # fmt: skip


def test_script_end_to_end_card_and_resume_equals_an_uninterrupted_run(detection_backbone, coco_folders, tmp_path):
    data = ["--max_train_steps", "4", "--seed", "1", "--checkpointing_steps", "2"]
    full = tmp_path / "full"
    results = main(_args(detection_backbone, full, coco_folders, *data), task=InstanceSegmentationTask)
    assert 0 <= results["eval_mask_map"] <= 1 and 0 <= results["eval_map"] <= 1
    assert len(results["eval_mask_map_per_class"]) == 3
    files = {p.name for p in full.iterdir()}
    expected_files = {"adapter_model.safetensors", INSTANCE_SEGMENTATION_CONFIG_FILE, "preprocessor_config.json"}
    assert expected_files | {"README.md", "all_results.json"} <= files
    processor = tf.AutoImageProcessor.from_pretrained(full)
    assert type(processor).__name__.startswith("Mask2FormerImageProcessor")
    assert (processor.size["height"], processor.size["width"]) == (32, 32)
    assert list(processor.image_mean) == [0.5] * 3  # the backbone's normalisation
    config = json.loads((full / INSTANCE_SEGMENTATION_CONFIG_FILE).read_text())
    assert config["model_type"] == "mask2former" and config["backbone_checkpoint"] == detection_backbone
    assert config["backbone_config"]["out_features"] == ["stage1", "stage2", "stage3"]  # every stage
    assert config["id2label"] == {str(i): name for i, name in enumerate(CLASSES)}  # no background class

    text = (full / "README.md").read_text()
    card = ModelCard(text).data
    assert card.pipeline_tag == "image-segmentation" and card.library_name == "peft"
    mask_first = ["mask_map", "mask_map_50", "mask_map_75", "map", "map_50", "map_75"]
    assert [r.metric_type for r in card.eval_results] == mask_first
    assert {r.task_type for r in card.eval_results} == {"image-segmentation"}
    assert card.eval_results[0].metric_value == pytest.approx(results["eval_mask_map"])
    assert "load_instance_segmentation_base" in text and "post_process_instance_segmentation" in text
    uploaded = set(filter_repo_objects(sorted(files), allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS))
    assert expected_files | {"README.md", "adapter_config.json", "all_results.json"} <= uploaded  # what a push sends
    saved = json.loads((full / "all_results.json").read_text())
    assert saved["eval_mask_map"] == pytest.approx(results["eval_mask_map"])

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "run_args.json").write_text((full / "run_args.json").read_text())
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    again_results = main(
        _args(detection_backbone, resumed, coco_folders, *data, "--resume_from_checkpoint", "latest"),
        task=InstanceSegmentationTask,
    )
    assert again_results["eval_mask_map"] == pytest.approx(results["eval_mask_map"])
    expected, again = load_file(full / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert expected.keys() == again.keys()
    for key in expected:
        torch.testing.assert_close(again[key], expected[key], rtol=1e-5, atol=1e-6)


def test_the_cards_loading_path_gives_the_trained_models_masks_in_a_fresh_process(
    detection_backbone, coco_folders, tmp_path
):
    """Mona trained a few steps; the card's own snippet (load_instance_segmentation_base + PeftModel.from_pretrained
    + post_process_instance_segmentation) in a new Python gives the trained model's mask and class logits."""
    out = tmp_path / "out"
    argv = _args(detection_backbone, out, coco_folders, "--max_train_steps", "3", "--checkpointing_steps", "no")
    config, arguments = parse_args(
        argv, extra=InstanceSegmentationArguments, defaults=InstanceSegmentationTask.run_defaults
    )
    run = FineTuningRun(config, InstanceSegmentationTask(arguments))
    run.execute()
    image = next(coco_folders[1].glob("*.png"))
    model = run.accelerator.unwrap_model(run.model).eval()
    with torch.no_grad():
        pixels = tf.AutoImageProcessor.from_pretrained(out)(
            images=Image.open(image).convert("RGB"), return_tensors="pt"
        )
        trained = model(**pixels)
    snippet = card_snippet(out / "README.md", "load_instance_segmentation_base")
    snippet = snippet.replace("path/to/this/adapter", str(out))
    script = (
        "import sys\nfrom PIL import Image\nimage = Image.open(sys.argv[1]).convert('RGB')\n"
        + snippet
        + "torch.save({'masks': outputs.masks_queries_logits, 'classes': outputs.class_queries_logits, "
        "'instances': instances}, sys.argv[2])\n"
    )
    saved = tmp_path / "fresh.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(image), str(saved)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = torch.load(saved, weights_only=False)
    torch.testing.assert_close(fresh["masks"], trained.masks_queries_logits)
    torch.testing.assert_close(fresh["classes"], trained.class_queries_logits)
    assert set(fresh["instances"]) == {"segmentation", "segments_info"}


def test_do_reduce_labels_with_coco_folders_is_refused_not_ignored(detection_backbone, coco_folders, tmp_path):
    """COCO categories have no background id to drop: the flag used to be accepted and do nothing."""
    with pytest.raises(SystemExit, match=r"--do_reduce_labels applies to --dataset_name's semantic maps"):
        main(_args(detection_backbone, tmp_path / "out", coco_folders, "--do_reduce_labels"),
             task=InstanceSegmentationTask)  # fmt: skip
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_a_missing_mask_is_named_through_the_script(detection_backbone, coco_folders, tmp_path):
    broken = tmp_path / "train"
    shutil.copytree(coco_folders[0], broken)
    coco = json.loads((broken / "annotations.json").read_text())
    del coco["annotations"][1]["segmentation"]  # a box alone: fine for detection, not for instance segmentation
    (broken / "annotations.json").write_text(json.dumps(coco))
    annotation_id = coco["annotations"][1]["id"]
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    script = REPO / "scripts" / "train_instance_segmentation.py"
    argv = _args(detection_backbone, out, (broken, coco_folders[1]))
    done = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    assert f"{broken / 'annotations.json'}: unusable COCO annotations" in done.stderr
    assert f"annotation {annotation_id}: it has no segmentation, and masks are required" in done.stderr
    assert not (out / "adapter_model.safetensors").exists()


def test_training_targets_are_the_processors_with_every_class_id(tmp_path):
    """``mask_labels`` equals what Mask2Former's processor makes of an instance-id map with
    ``instance_id_to_semantic_id`` (non-overlapping masks), class ids unchanged; crowds and vanished masks drop."""
    rows = instance_scene_split("validation", 8, seed=0)
    for height, width in [(64, 64), (32, 32), (48, 96)]:
        processor = tf.Mask2FormerImageProcessorPil(
            size={"height": height, "width": width}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
        for row in rows:
            objects = row["objects"]
            masks = [decode_mask(counts, row["height"], row["width"]) for counts in objects["segmentation"]]
            instance_map = np.zeros((row["height"], row["width"]), dtype=np.uint8)
            for k, mask in enumerate(masks):
                instance_map[mask] = k + 1
            encoded = processor(
                images=[row["image"]],
                segmentation_maps=[instance_map],
                instance_id_to_semantic_id={k + 1: c for k, c in enumerate(objects["category"])},
                ignore_index=0,  # the background: no instance
                return_tensors="pt",
            )
            size = tuple(encoded["pixel_values"].shape[-2:])  # rounded up to a multiple of 32 (size_divisor)
            assert size == (64 if height == 48 else height, width)
            ours = mask_labels(masks, objects["category"], objects["iscrowd"], size)
            torch.testing.assert_close(ours["mask_labels"], encoded["mask_labels"][0])
            assert ours["class_labels"].tolist() == encoded["class_labels"][0].tolist()
            if (height, width) == (row["height"], row["width"]):  # the scenes' size: every instance, with its class
                assert ours["class_labels"].tolist() == objects["category"]
    square = np.zeros((64, 64), dtype=bool)
    square[10:30, 10:30] = True
    dot = np.zeros((64, 64), dtype=bool)
    dot[41, 41] = True  # vanishes at 8x8
    kept = mask_labels([square, square, dot], [2, 1, 0], [0, 1, 0], (8, 8))
    assert kept["class_labels"].tolist() == [2] and kept["mask_labels"].shape == (1, 8, 8)


class _Oracle(nn.Module):
    """Returns, batch after batch, logits that predict the ground truth (one query per instance, the rest "no
    object")."""

    def __init__(self, outputs: list) -> None:
        super().__init__()
        self.outputs = iter(outputs)

    def forward(self, pixel_values: torch.Tensor):
        return next(self.outputs)


def test_perfect_predictions_score_one_mask_and_box_ap():
    """The evaluation path (post-processing, binary maps, boxes of the masks, COCO mask and box AP) gives AP 1 to
    logits that reproduce the ground-truth masks and classes."""
    from accelerate import Accelerator

    from mona_peft.training.config import RunConfig

    task = InstanceSegmentationTask()
    processor = task.load_processor(RunConfig(model_name_or_path=task.default_model()))  # the scenes' size
    rows = instance_scene_split("validation", 6, seed=0)
    loader = DataLoader(
        rows.with_transform(task.transform(processor, train=False)), batch_size=3, collate_fn=task.collate
    )
    queries, outputs = 5, []
    for batch in loader:
        masks = torch.full((3, queries, INSTANCE_SCENE_SIZE, INSTANCE_SCENE_SIZE), -10.0)
        classes = torch.full((3, queries, len(CLASSES) + 1), -10.0)
        classes[..., -1] = 10.0  # "no object"
        for i, labels in enumerate(batch["labels"]):
            for q, (mask, label) in enumerate(zip(labels["mask_labels"], labels["class_labels"], strict=True)):
                masks[i, q][mask.bool()] = 10.0
                classes[i, q] = -10.0
                classes[i, q, label] = 10.0
        outputs.append(SimpleNamespace(class_queries_logits=classes, masks_queries_logits=masks))
    results = task.evaluate(_Oracle(outputs), loader, Accelerator(), CLASSES)
    assert list(results)[0] == "mask_map"
    assert results["mask_map"] == pytest.approx(1.0, abs=1e-6) and results["map"] == pytest.approx(1.0, abs=1e-6)
    assert results["mask_map_per_class"] == pytest.approx([1.0] * 3, abs=1e-6)


def test_predictions_are_transformers_post_processing_at_its_own_size():
    """At 384x384 (where transformers' post-processing does not resample its masks) ``instance_predictions`` keeps
    the same (query, class) pairs with the same scores, labels and masks as ``post_process_instance_segmentation``."""
    generator = torch.Generator().manual_seed(0)
    classes = 3 * torch.randn(2, 6, len(CLASSES) + 1, generator=generator)
    masks = 4 * torch.randn(2, 6, 12, 12, generator=generator)
    masks[1, :, :, :6] = -20.0  # some masks lose half their pixels, ...
    masks[0, 2] = -20.0  # ... one all of them (left out by both)
    processor = tf.Mask2FormerImageProcessorPil()
    outputs = SimpleNamespace(class_queries_logits=classes, masks_queries_logits=masks)
    reference = processor.post_process_instance_segmentation(
        outputs, threshold=0.0, target_sizes=[(384, 384)] * 2, return_binary_maps=True
    )
    ours = instance_predictions(classes, masks, [(384, 384)] * 2)
    for theirs, mine in zip(reference, ours, strict=True):
        info = theirs["segments_info"]
        order = np.lexsort((np.array([s["score"] for s in info]), np.array([s["label_id"] for s in info])))
        own = np.lexsort((mine["scores"], mine["labels"]))
        assert len(info) == len(mine["scores"]) and 0 < len(own) < 6 * len(CLASSES)
        assert mine["labels"][own].tolist() == [info[i]["label_id"] for i in order]
        np.testing.assert_allclose(mine["scores"][own], [info[i]["score"] for i in order], atol=1e-6)
        np.testing.assert_array_equal(mine["masks"][own], theirs["segmentation"].bool().numpy()[order])
        ys, xs = np.nonzero(mine["masks"][own[0]])
        assert mine["boxes"][own[0]].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_hub_annotation_maps_become_instances():
    """run_instance_segmentation.py's layout: semantic ids in the first channel, instance ids in the second; each
    pair is one instance, and --do_reduce_labels drops semantic 0 and shifts the classes down."""
    annotation = np.zeros((6, 8, 3), dtype=np.uint8)
    annotation[0:2, 0:3] = (2, 1, 0)
    annotation[3:6, 4:8] = (2, 2, 0)  # a second instance of class 2
    annotation[3:5, 0:2] = (1, 1, 0)  # instance id 1 again, but of class 1: another instance
    reduced = instance_objects(annotation, do_reduce_labels=True)
    assert reduced["category"] == [0, 1, 1]
    assert reduced["bbox"] == [[0.0, 3.0, 2.0, 2.0], [0.0, 0.0, 3.0, 2.0], [4.0, 3.0, 4.0, 3.0]]
    assert reduced["area"] == [4.0, 6.0, 12.0]
    assert decode_mask(reduced["segmentation"][2], 6, 8).sum() == 12
    kept = instance_objects(annotation, do_reduce_labels=False)
    assert kept["category"] == [0, 1, 2, 2] and kept["area"][0] == 48 - 22  # the background is class 0
    with pytest.raises(ValueError, match="semantic and an instance channel"):
        instance_objects(np.zeros((6, 8), dtype=np.uint8), do_reduce_labels=False)
