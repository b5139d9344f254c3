"""ONNX export of adapted models: parity with PyTorch in onnxruntime, LoRA merged away, and refusals that say why."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model

from mona_peft.export import ExportError, export_onnx
from mona_peft.tuners.methods import build_method

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")
onnxruntime = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra is not installed")


def _run(path, pixel_values: torch.Tensor) -> torch.Tensor:
    """The graph's first output (a classifier's or UperNet's logits)."""
    return _onnx_outputs(path, pixel_values)[0]


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).abs().max() / expected.abs().max())


# One case per kind of graph: Mona on windows (Swin), VPT's prompts in the token sequence (ViT), Mona on maps
# (ConvNeXt, whose graph also takes other sizes), LoRA merged away.
CASES = [("swin", "mona", False), ("vit", "vpt_deep", False), ("convnext", "mona", True), ("swin", "lora", False)]


@pytest.mark.parametrize(("arch", "method", "dynamic_size"), CASES)
def test_the_graph_gives_pytorchs_logits_at_other_batch_sizes(arch, method, dynamic_size, tmp_path):
    model = build_method(build_tiny_model(arch), method, ["classifier"]).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # trained-looking adapter weights: an exported identity would hide a dropped adapter
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and "classifier" not in name:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    path = export_onnx(model, tmp_path / "model.onnx", torch.randn(2, 3, 32, 32), dynamic_size=dynamic_size)
    sizes = [(1, 32), (3, 32)] + ([(2, 48), (1, 64)] if dynamic_size else [])
    bare = build_tiny_model(arch)
    for batch, side in sizes:
        x = torch.randn(batch, 3, side, side, generator=generator)
        with torch.no_grad():
            expected, plain = model(pixel_values=x).logits, bare(pixel_values=x).logits
        assert _relative_error(plain, expected) > 1e-3  # the adapter matters: a graph without it would fail below
        assert _relative_error(_run(path, x), expected) <= 1e-4, (batch, side)
    if method == "lora":  # merged into the backbone's weights before tracing: a plain Swin graph
        assert not any("lora" in tensor.name for tensor in onnx.load(str(path)).graph.initializer)


def test_a_graph_that_bakes_its_grid_is_refused_for_other_sizes(tmp_path):
    """transformers' Swin fixes its window partition to the traced grid: asking for free sizes names the shape where
    the graph stops answering like PyTorch, instead of writing a graph that is silently wrong there. (A one-stage
    Swin: its graph runs at 64 px and answers wrongly; deeper ones fail to run there, which is refused the same way.)"""
    from mona_peft.export import _check_onnx, _NamedOutputs

    model = build_method(build_tiny_model("swin", depths=[1], num_heads=[2]), "mona", ["classifier"]).eval()
    with pytest.raises(ExportError, match=r"differs from PyTorch's by .* at shape \(2, 3, 64, 64\)"):
        export_onnx(model, tmp_path / "model.onnx", torch.randn(2, 3, 32, 32), dynamic_size=True)
    # at 40 px the grid (10x10) needs window padding, which the graph's baked reshapes cannot do: it fails to run
    with pytest.raises(ExportError, match=r"does not run on pixel_values of shape \(2, 3, 40, 40\): "):
        _check_onnx(_NamedOutputs(model, ["logits"]), tmp_path / "model.onnx", [torch.randn(2, 3, 40, 40)])


@pytest.mark.parametrize("task", ["image_classification", "semantic_segmentation"])
def test_the_script_exports_a_training_runs_adapter_folder(task, tmp_path):
    """The default run of each task (one step), then scripts/export_onnx.py on its folder in a fresh process: the task
    comes from the folder's files, and the graph answers like the adapter loaded with PEFT."""
    import importlib
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mona_peft.export import load_adapted

    out = tmp_path / "run"
    importlib.import_module(f"mona_peft.tasks.{task}").main(
        ["--output_dir", str(out), "--max_train_steps", "1", "--report_to", "none"]
    )
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(repo / "scripts" / "export_onnx.py"), "--adapter", str(out)]
    done = subprocess.run([*command, "--output", str(tmp_path / "m.onnx")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{task}: {tmp_path / 'm.onnx'}" in done.stdout
    model, loaded_task = load_adapted(out)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    assert loaded_task == task and _relative_error(_run(tmp_path / "m.onnx", x), expected) <= 1e-4


def _trained_looking_run(task: str, folder, markers: tuple[str, ...], scale: float) -> None:
    """The offline default run of a dense task, one (warm-up) step, into ``folder``, then its adapter saved again with
    the parameters whose names hold one of ``markers`` moved by ``scale`` times Gaussian noise: at their
    initialisation, Mask2Former's heads predict no mask."""
    import importlib

    from mona_peft.export import load_adapted

    argv = ["--output_dir", str(folder), "--max_train_steps", "1", "--report_to", "none"]
    importlib.import_module(f"mona_peft.tasks.{task}").main(argv)
    model, _ = load_adapted(folder)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and any(marker in name for marker in markers):
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    model.save_pretrained(folder)


def _real_scenes(folder, count: int = 3) -> list:
    """``count`` validation scenes of the offline instance task (digits on real photographs), also written to
    ``folder`` as PNG files."""
    from mona_peft.tasks.object_detection.data import load_detection_task

    folder.mkdir()
    images = [row["image"].convert("RGB") for row in load_detection_task("digit-instances")[0]["validation"]][:count]
    for index, image in enumerate(images):
        image.save(folder / f"{index}.png")
    return images


def _export_with_the_script(run, output, images) -> None:
    """scripts/export_onnx.py on a run's folder, tracing and checking with ``images``, in a fresh process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(repo / "scripts" / "export_onnx.py"), "--adapter", str(run), "--output", str(output)]
    done = subprocess.run([*command, "--images", str(images)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def _onnx_outputs(path, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(x) for x in session.run(None, {"pixel_values": pixel_values.numpy()})]


def _same_outputs(path, model, pixel_values: torch.Tensor, names: tuple[str, ...]) -> tuple[list, list]:
    """The graph's and PyTorch's outputs ``names`` on ``pixel_values``, checked to agree to 1e-4 relative."""
    with torch.no_grad():
        output = model(pixel_values=pixel_values)
    expected, got = [getattr(output, name) for name in names], _onnx_outputs(path, pixel_values)
    for name, mine, theirs in zip(names, expected, got, strict=True):
        assert _relative_error(theirs, mine) <= 1e-4, (tuple(pixel_values.shape), name)
    return expected, got


def test_the_script_exports_an_instance_segmentation_folder_with_the_same_masks_on_real_images(tmp_path):
    """Mask2Former with Mona, from a training run's folder through the script: on real scenes, at another batch size
    than the traced one, the graph's query logits are PyTorch's and the task's post-processing (the one its
    evaluation scores) draws the same instance masks from both."""
    import numpy as np
    from transformers import AutoImageProcessor

    from mona_peft.export import TASK_OUTPUTS, load_adapted
    from mona_peft.tasks.instance_segmentation.task import instance_predictions

    _trained_looking_run("instance_segmentation", tmp_path / "run", ("mona_", "decoder", "predictor"), 0.05)
    images = _real_scenes(tmp_path / "images")
    _export_with_the_script(tmp_path / "run", tmp_path / "m.onnx", tmp_path / "images")
    model, task = load_adapted(tmp_path / "run")
    pixel_values = AutoImageProcessor.from_pretrained(tmp_path / "run")(images=images * 2, return_tensors="pt")
    sizes = [image.size[::-1] for image in images * 2]
    expected, got = _same_outputs(tmp_path / "m.onnx", model, pixel_values["pixel_values"], TASK_OUTPUTS[task])
    for mine, theirs in zip(instance_predictions(*expected, sizes), instance_predictions(*got, sizes), strict=True):
        assert len(mine["masks"]) and np.array_equal(mine["masks"], theirs["masks"])
        assert np.array_equal(mine["labels"], theirs["labels"])


def test_a_detection_adapter_exports_with_the_same_boxes_at_two_resolutions(tmp_path):
    """RT-DETR around a Swin with Mona: a dynamic batch (transformers reads RT-DETR's batch size with len(), which
    the export keeps symbolic), one resolution per graph (its anchors come from the feature maps' sizes). At 64 and
    96 px, on real scenes at another batch size than the traced one, the graph's logits and boxes are PyTorch's, and
    so are the post-processed detections. The detector's weights are spread as a trained one's: its score head's
    bias (the class prior) far below what its features add, so no two proposals score exactly alike (a barely
    trained RT-DETR scores many alike, and PyTorch and onnxruntime break the tie of its top-k differently)."""
    import numpy as np
    import torch.nn.functional as F
    from test_detection_models import base_facts, build
    from transformers import RTDetrImageProcessorPil
    from transformers.models.rt_detr.modeling_rt_detr import RTDetrObjectDetectionOutput

    from mona_peft.export import TASK_OUTPUTS

    model = build_method(build("rt_detr"), "mona", base_facts("rt_detr").heads).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
        model.get_base_model().model.enc_score_head.bias.fill_(-10.0)
    scenes = _real_scenes(tmp_path / "images")
    pixels = torch.from_numpy(np.stack([np.asarray(image) for image in scenes])).permute(0, 3, 1, 2) / 127.5 - 1
    names, processor = TASK_OUTPUTS["object_detection"], RTDetrImageProcessorPil()
    for side in (64, 96):
        pixel_values = F.interpolate(pixels, size=(side, side), mode="bilinear", align_corners=False)
        export_onnx(model, tmp_path / f"{side}.onnx", pixel_values[:2], output_names=names)
        expected, got = _same_outputs(tmp_path / f"{side}.onnx", model, pixel_values, names)
        found = [
            processor.post_process_object_detection(
                RTDetrObjectDetectionOutput(**dict(zip(names, outputs, strict=True))),
                threshold=0.0,
                target_sizes=[(side, side)] * len(pixel_values),
            )
            for outputs in (expected, got)
        ]
        for mine, theirs in zip(*found, strict=True):
            assert torch.equal(mine["labels"], theirs["labels"])
            torch.testing.assert_close(mine["boxes"], theirs["boxes"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["swin", "vit", "convnext"])
def test_the_inference_form_gives_the_eager_outputs_and_refuses_to_train(arch):
    """Mona's fused kernels and folded norm, computed once: the same logits to round-off; training it would train
    nothing, so a training-mode or grad-enabled forward raises."""
    import mona_peft

    model = build_method(build_tiny_model(arch), "mona", ["classifier"]).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "mona_" in name:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = model(pixel_values=x).logits
    frozen = mona_peft.prepare_for_inference(model)
    with torch.inference_mode():
        got = frozen(pixel_values=x).logits
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
    assert not any("frozen" in key for key in frozen.state_dict())  # the saved adapter is unchanged
    with pytest.raises(RuntimeError, match="prepared for inference .* grad-enabled forward would train nothing"):
        frozen(pixel_values=x)  # gradients enabled
    frozen.train()
    with torch.no_grad(), pytest.raises(RuntimeError, match="training-mode"):
        frozen(pixel_values=x)


def test_the_export_benchmark_reports_every_ratio_side_by_side(tmp_path):
    """benchmarks/harness/export_speed.py on a tiny Swin: both runtimes, both thread counts, file sizes."""
    from harness.export_speed import measure_export

    rows = measure_export(lambda: build_tiny_model("swin"), 32, tmp_path, ["classifier"], warmup=1, repeats=2)
    assert rows["file_mb"]["mona"] > rows["file_mb"]["bare"] > 0
    for count in (1, 2):
        ratios = rows[f"threads_{count}"]
        assert set(ratios) == {"onnxruntime_mona_over_bare", "torch_mona_over_bare", "mona_onnxruntime_over_torch"}
        assert all(row["ratio"] > 0 for row in ratios.values())


def test_the_serving_benchmark_compares_a_mixed_batch_with_one_batch_per_adapter():
    """benchmarks/harness/export_speed.py's serving part on a tiny Swin: 4 adapters, both thread counts."""
    from harness.export_speed import measure_serving

    rows = measure_serving(lambda: build_tiny_model("swin"), 32, ["classifier"], warmup=1, repeats=2)
    assert (rows["adapters"], rows["images"]) == (4, 8)
    for count in (1, 2):
        ratios = rows[f"threads_{count}"]
        assert set(ratios) == {"mixed_over_separate_latency", "mixed_over_bare_latency"}
        assert all(row["ratio"] > 0 for row in ratios.values())


def test_the_profile_sums_each_graphs_kernel_time_by_operator(tmp_path):
    """onnxruntime's own profile of the bare and the Mona graph (tiny Swin): Mona's depthwise filter adds Conv time."""
    from harness.export_speed import profile_onnx

    rows = profile_onnx(lambda: build_tiny_model("swin"), 32, tmp_path, ["classifier"], repeats=2, warmup=1)
    assert rows["kernel_total_ms"]["mona"] > rows["kernel_total_ms"]["bare"] > 0
    assert rows["profiled_run_median_ms"]["mona"] > 0
    by_op = {row["op"]: row for row in rows["by_operator_ms"]}
    assert "Conv" in by_op and by_op["Conv"]["mona"] > by_op["Conv"]["bare"]


def test_each_models_graph_returns_its_tasks_outputs():
    """EoMT segments semantically by classifying masks: its graph returns its queries' logits, as Mask2Former's."""
    import transformers as tf

    from mona_peft.export import TASK_OUTPUTS, output_names

    eomt = tf.EomtForUniversalSegmentation(tf.EomtConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2))
    assert output_names(eomt, "semantic_segmentation") == TASK_OUTPUTS["instance_segmentation"]
    assert output_names(build_tiny_model("swin"), "semantic_segmentation") == ("logits",)


def test_a_dynamic_batch_traced_on_one_image_is_refused_before_exporting(tmp_path):
    with pytest.raises(ValueError, match="at least 2 images: one image fixes the batch to 1"):
        export_onnx(build_tiny_model("swin"), tmp_path / "m.onnx", torch.randn(1, 3, 32, 32))
    assert not (tmp_path / "m.onnx").exists()
