"""Object detection: the script end to end (DETR-family detectors around a Swin), its card, resumption and errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf
from conftest import card_snippet
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from mona_peft.tasks.object_detection.data import AnnotationError
from mona_peft.tasks.object_detection.model import DETECTION_CONFIG_FILE, DETECTORS
from mona_peft.tasks.object_detection.task import ObjectDetectionTask
from mona_peft.training import main


def _args(backbone: str, out: Path, folders: tuple[Path, Path], *extra: str) -> list[str]:
    return [
        "--model_name_or_path", backbone, "--output_dir", str(out), "--train_dir", str(folders[0]),
        "--validation_dir", str(folders[1]), "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "3",
        "--report_to", "none", "--num_warmup_steps", "1", "--image_square_size", "32", "--d_model", "32",
        "--num_queries", "10", *extra,
    ]  # fmt: skip


def test_script_end_to_end_card_and_resume_equals_an_uninterrupted_run(detection_backbone, coco_folders, tmp_path):
    data = ["--detector", "conditional_detr", "--max_train_steps", "4", "--seed", "1", "--checkpointing_steps", "2"]
    full = tmp_path / "full"
    results = main(_args(detection_backbone, full, coco_folders, *data), task=ObjectDetectionTask)
    assert 0 <= results["eval_map"] <= 1 and len(results["eval_map_per_class"]) == 3
    files = {p.name for p in full.iterdir()}
    assert {"adapter_model.safetensors", DETECTION_CONFIG_FILE, "preprocessor_config.json", "README.md"} <= files
    card = ModelCard((full / "README.md").read_text()).data
    assert card.pipeline_tag == "object-detection" and card.library_name == "peft"
    assert [r.metric_type for r in card.eval_results] == ["map", "map_50", "map_75"]
    assert card.eval_results[0].metric_value == pytest.approx(results["eval_map"])
    assert json.loads((full / "all_results.json").read_text())["eval_map"] == pytest.approx(results["eval_map"])

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "run_args.json").write_text((full / "run_args.json").read_text())
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    main(
        _args(detection_backbone, resumed, coco_folders, *data, "--resume_from_checkpoint", "latest"),
        task=ObjectDetectionTask,
    )
    expected, again = load_file(full / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert expected.keys() == again.keys()
    for key in expected:
        torch.testing.assert_close(again[key], expected[key], rtol=1e-5, atol=1e-6)


def test_the_cards_snippet_reloads_the_trained_detector_in_a_fresh_process(detection_backbone, coco_folders, tmp_path):
    """RT-DETR (the default detector: batch norms in its heads, anchors from the input size) trained a few steps;
    the card's own loading snippet in a new Python gives the outputs the trained model gives."""
    from mona_peft.tasks.object_detection.task import DetectionArguments
    from mona_peft.training import RunConfig
    from mona_peft.training.run import FineTuningRun

    out = tmp_path / "out"
    config = RunConfig(
        model_name_or_path=detection_backbone, train_dir=str(coco_folders[0]), validation_dir=str(coco_folders[1]),
        output_dir=str(out), max_train_steps=3, per_device_train_batch_size=2, per_device_eval_batch_size=3,
        report_to="none", num_warmup_steps=1,
    )  # fmt: skip
    run = FineTuningRun(
        config, ObjectDetectionTask(DetectionArguments(image_square_size=32, d_model=32, num_queries=10))
    )
    run.execute()
    image = next(coco_folders[1].glob("*.png"))
    model = run.accelerator.unwrap_model(run.model).eval()
    from PIL import Image

    with torch.no_grad():
        pixels = tf.AutoImageProcessor.from_pretrained(out)(
            images=Image.open(image).convert("RGB"), return_tensors="pt"
        )
        trained = model(**pixels)
    snippet = card_snippet(out / "README.md", "load_detection_base")
    snippet = snippet.replace("path/to/this/adapter", str(out))
    script = (
        "import sys\nfrom PIL import Image\nimage = Image.open(sys.argv[1]).convert('RGB')\n"
        + snippet
        + "torch.save({'logits': outputs.logits, 'pred_boxes': outputs.pred_boxes, 'detections': detections}, "
        "sys.argv[2])\n"
    )
    saved = tmp_path / "fresh.pt"
    done = subprocess.run([sys.executable, "-c", script, str(image), str(saved)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = torch.load(saved)
    torch.testing.assert_close(fresh["logits"], trained.logits)
    torch.testing.assert_close(fresh["pred_boxes"], trained.pred_boxes)
    assert set(fresh["detections"]) == {"scores", "labels", "boxes"}


def test_a_bad_annotation_is_named_before_any_training(detection_backbone, coco_folders, tmp_path):
    broken = tmp_path / "train"
    shutil.copytree(coco_folders[0], broken)
    coco = json.loads((broken / "annotations.json").read_text())
    coco["annotations"][1]["bbox"] = [40.0, 20.0, 40.0, 5.0]  # past the right edge of a 32-pixel scene
    (broken / "annotations.json").write_text(json.dumps(coco))
    annotation_id = coco["annotations"][1]["id"]
    with pytest.raises(AnnotationError, match=rf"annotations\.json[\s\S]*annotation {annotation_id}\b"):
        main(_args(detection_backbone, tmp_path / "out", (broken, coco_folders[1])), task=ObjectDetectionTask)
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_unknown_detector_names_the_choices():
    from mona_peft.tasks.object_detection.task import DetectionArguments

    with pytest.raises(ValueError, match="Unknown --detector 'yolo'; available: " + ", ".join(DETECTORS)):
        ObjectDetectionTask(DetectionArguments(detector="yolo"))
