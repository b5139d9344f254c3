"""Export an adapted model to ONNX, for serving where PyTorch is not wanted.

Mona, VPT, the Houlsby adapter and AdaptFormer are not linear in the backbone's weights, so they cannot be merged away:
the exported graph holds the adapters beside the frozen backbone. LoRA and LN tuning, which PEFT merges, are merged
first (``merge_and_unload`` on a copy), so their graph is the plain model's. The exporter is PyTorch's dynamo exporter
(``torch.onnx.export(..., dynamo=True)``), which needs ``onnx`` and ``onnxscript``; the parity checks run the graph
with ``onnxruntime``. Install them with ``pip install "mona-peft[onnx]"``.

Example (needs the ``onnx`` extra):

    ```py
    >>> import torch
    >>> import mona_peft
    >>> from mona_peft.backbones import backbone_path
    >>> from mona_peft.export import export_onnx
    >>> from peft import get_peft_model
    >>> from transformers import AutoModelForImageClassification
    >>> model = get_peft_model(AutoModelForImageClassification.from_pretrained(backbone_path("swin")),
    ...                        mona_peft.MonaConfig(modules_to_save=["classifier"]))
    >>> export_onnx(model, "mona-swin.onnx", torch.randn(2, 3, 32, 32))  # inputs: pixel_values; outputs: logits
    PosixPath('mona-swin.onnx')
    ```
"""

from __future__ import annotations

import builtins
import copy
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

#: What each task's exported graph returns, by the names of the model output's fields.
TASK_OUTPUTS: dict[str, tuple[str, ...]] = {
    "image_classification": ("logits",),
    "semantic_segmentation": ("logits",),
    "object_detection": ("logits", "pred_boxes"),
    "instance_segmentation": ("class_queries_logits", "masks_queries_logits"),
}


class ExportError(RuntimeError):
    """A model that did not export, with the module or operator that stopped it."""


class _NamedOutputs(nn.Module):
    """``pixel_values`` in, the model output's fields ``names`` out (in that order): the graph's inputs and outputs."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(pixel_values=pixel_values)
        return tuple(getattr(output, name) for name in self.names)


def output_names(model: nn.Module, task: str) -> tuple[str, ...]:
    """The output fields the graph of ``model`` returns for ``task`` (:data:`TASK_OUTPUTS`; a semantic segmenter that
    classifies masks, EoMT, returns its queries' class and mask logits)."""
    if task == "semantic_segmentation" and getattr(model.config, "model_type", None) == "eomt":
        return TASK_OUTPUTS["instance_segmentation"]
    return TASK_OUTPUTS[task]


def load_adapted(folder: str | Path, base_model: str | None = None) -> tuple[nn.Module, str]:
    """The adapted model a training run saved in ``folder``, and its task: a dense adapter on the model it was trained
    in (the folder's ``segmentation_config.json``, ``detection_config.json`` or
    ``instance_segmentation_config.json`` says which), else a classification adapter on its base model
    (``base_model``, default ``base_model_name_or_path`` of ``adapter_config.json``) with the trained class names
    (``labels.json``)."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    from .tasks.instance_segmentation.model import INSTANCE_SEGMENTATION_CONFIG_FILE, load_instance_segmentation_base
    from .tasks.object_detection.model import DETECTION_CONFIG_FILE, load_detection_base
    from .tasks.semantic_segmentation.model import SEGMENTATION_CONFIG_FILE, load_segmentation_base

    folder = Path(folder)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no adapter_config.json: it is not an adapter folder.")
    dense = {
        SEGMENTATION_CONFIG_FILE: ("semantic_segmentation", load_segmentation_base),
        DETECTION_CONFIG_FILE: ("object_detection", load_detection_base),
        INSTANCE_SEGMENTATION_CONFIG_FILE: ("instance_segmentation", load_instance_segmentation_base),
    }
    for file_name, (task, load_base) in dense.items():
        if (folder / file_name).is_file():
            return PeftModel.from_pretrained(load_base(folder), folder).eval(), task
    from .sharing.labels import load_labels

    base_model = base_model or json.loads(config_file.read_text())["base_model_name_or_path"]
    if not _is_loadable(base_model):
        raise FileNotFoundError(
            f"The base model {base_model} recorded in {config_file} is not here: pass the base checkpoint (--base)."
        )
    labels = load_labels(folder) if (folder / "labels.json").is_file() else {}
    base = AutoModelForImageClassification.from_pretrained(base_model, **labels, ignore_mismatched_sizes=True)
    return PeftModel.from_pretrained(base, folder).eval(), "image_classification"


def _is_loadable(checkpoint: str) -> bool:
    """A local folder that exists, or a name that is not a path (a Hub id)."""
    return Path(checkpoint).is_dir() or not (checkpoint.startswith(("/", ".", "~")) or Path(checkpoint).exists())


def deployable(model: nn.Module) -> nn.Module:
    """``model`` ready to trace, as a copy in eval mode: a PEFT model whose adapters all merge (LoRA) is merged, so the
    graph is the plain model's; any other keeps its adapters (Mona, VPT, ...), part of the graph, with Mona in its
    inference form (:func:`mona_peft.prepare_for_inference`: its fused kernels computed once, constants of the
    graph)."""
    from peft import PeftModel

    from .tuners.mona.inference import prepare_for_inference

    model = copy.deepcopy(model).eval()
    if isinstance(model, PeftModel) and all(_mergeable(config) for config in model.peft_config.values()):
        return model.merge_and_unload().eval()
    return prepare_for_inference(model)


@contextmanager
def _traceable(model: nn.Module) -> Iterator[None]:
    """``model`` (a copy) made traceable by PyTorch's exporter, for the time of the export.

    Its transformers models take eager attention (Swin's SDPA path reshapes a transposed view the exporter cannot
    trace), and a ``len(tensor)`` in their modules' code gives the tensor's first dimension as the exporter sees it:
    transformers' RT-DETR reads its batch size with ``len``, which the exporter would otherwise fix to the example's.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "set_attn_implementation"):
        base.set_attn_implementation("eager")
    names = {type(m).__module__ for m in model.modules() if type(m).__module__.startswith("transformers.models.")}
    patched = [sys.modules[name] for name in names if "len" not in vars(sys.modules[name])]
    for module in patched:
        module.len = _first_dimension_len
    try:
        yield
    finally:
        for module in patched:
            del module.len


def _first_dimension_len(obj: object) -> int:
    return obj.shape[0] if isinstance(obj, torch.Tensor) else builtins.len(obj)


def _mergeable(config) -> bool:
    from peft.utils import PeftType

    return config.peft_type in (PeftType.LORA, PeftType.LN_TUNING)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_inputs: torch.Tensor,
    *,
    output_names: Sequence[str] = ("logits",),
    dynamic_batch: bool = True,
    dynamic_size: bool = False,
    check: bool = True,
) -> Path:
    """Export ``model`` (adapted by any mona_peft method, or by LoRA) to the ONNX file ``path``.

    Args:
        model: a transformers model, adapted or not; called as ``model(pixel_values=...)``.
        path: the ``.onnx`` file to write.
        example_inputs: ``pixel_values`` of the shape to trace with, ``(batch, channels, height, width)``.
        output_names: fields of the model's output the graph returns, in order (:data:`TASK_OUTPUTS` per task).
        dynamic_batch: the batch size is free in the graph (else fixed to the example's).
        dynamic_size: height and width are free too. ConvNeXt's graphs take other sizes; transformers' Swin and ViTs
            bake their patch grid into the graph (Swin's window partition, ViT's position table), so for them the
            check below refuses it; so does RT-DETR (its anchors come from the feature maps' sizes).
        check: run the graph with onnxruntime (when installed) against PyTorch at the example, with one more image
            (dynamic batch) and at twice the height and width (dynamic size); a dimension the graph does not take,
            or a relative error above ``1e-4``, raises. Give real images where choices can tie (docs/deploy.md).

    Raises:
        ImportError: ``onnx`` or ``onnxscript`` is missing (the ``onnx`` extra).
        ValueError: a dynamic batch traced on one image (the exporter would fix the batch to 1).
        ExportError: the exporter refused the model (the message names the operator or module it stopped at), or the
            check failed (naming the inputs' shape).
    """
    _require_exporter()
    if dynamic_batch and len(example_inputs) < 2:  # torch.export fixes a dimension of size 1 to 1
        raise ValueError("A dynamic batch needs an example of at least 2 images: one image fixes the batch to 1.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _NamedOutputs(deployable(model), output_names).eval()
    dims = {0: torch.export.Dim("batch")} if dynamic_batch else {}
    if dynamic_size:
        dims |= {2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    try:
        with torch.no_grad(), _traceable(wrapper.model):
            torch.onnx.export(
                wrapper,
                (example_inputs,),
                str(path),
                dynamo=True,
                input_names=["pixel_values"],
                output_names=list(output_names),
                dynamic_shapes={"pixel_values": dims},
                verbose=False,
            )
    except Exception as error:  # the exporter's errors are deep tracebacks: name what stopped it, keep the cause
        reason = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise ExportError(f"{type(model).__name__} did not export to ONNX: {reason}") from error
    if check:
        _check_onnx(wrapper, path, _check_inputs(example_inputs, dynamic_batch, dynamic_size))
    return path


def _require_exporter() -> None:
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError as error:
            raise ImportError(f'export_onnx needs {package}: pip install "mona-peft[onnx]"') from error


def _check_inputs(example: torch.Tensor, dynamic_batch: bool, dynamic_size: bool) -> list[torch.Tensor]:
    """The example, the example with its first image once more (dynamic batch) and the example at twice its height and
    width (dynamic size): what the user traced with, so real images check the graph on real images."""
    inputs = [example]
    inputs += [torch.cat([example, example[:1]])] if dynamic_batch else []
    if dynamic_size:
        inputs.append(torch.nn.functional.interpolate(example, scale_factor=2.0, mode="bilinear", align_corners=False))
    return inputs


def _check_onnx(model: _NamedOutputs, path: Path, inputs: Sequence[torch.Tensor], tolerance: float = 1e-4) -> None:
    """Run the ONNX file ``path`` with onnxruntime on each of ``inputs`` and compare every output with ``model``'s
    (the module :func:`export_onnx` traced); skipped when onnxruntime is not installed.

    Raises ``ExportError`` naming the inputs' shape where the graph fails to run or differs by more than
    ``tolerance`` (relative to the output's largest value)."""
    try:
        import onnxruntime
    except ImportError:
        return
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for pixel_values in inputs:
        shape = tuple(pixel_values.shape)
        try:
            outputs = session.run(None, {"pixel_values": pixel_values.numpy()})
        except Exception as error:  # onnxruntime's own error type; its message names the node
            reason = str(error).splitlines()[0]
            raise ExportError(f"{path} does not run on pixel_values of shape {shape}: {reason}") from error
        with torch.no_grad():
            expected = model(pixel_values)
        for name, got, want in zip(model.names, outputs, expected, strict=True):
            error = float((torch.from_numpy(got) - want).abs().max() / want.abs().max().clamp_min(1e-12))
            if error > tolerance:
                raise ExportError(f"{path}: output {name} differs from PyTorch's by {error:.2e} at shape {shape}.")


__all__ = ["TASK_OUTPUTS", "ExportError", "deployable", "export_onnx", "load_adapted", "output_names"]
