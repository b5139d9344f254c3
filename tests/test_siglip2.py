"""SigLIP 2 (NaFlex): every image of a batch has a patch grid of its own, its patches first, then padding.

Its classifier takes patches, pixel_attention_mask and spatial_shapes rather than images, so it is tested here rather
than in the checklist: Mona filters each image on its own grid (a batch of two aspect ratios answers as each image
alone), equals a float64 reference per image, routes mixed batches with the right grid per row, every method adapts
it, and a Mona adapter reloads in a fresh process.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from conftest import run_in_fresh_process
from mona_reference import reference_monas, reference_pre_norm_block
from peft import get_peft_model

import mona_peft
from mona_peft.tuners.methods import build_method
from mona_peft.tuners.mona.layer import MonaLayer
from mona_peft.tuners.registry import methods

TINY_SIGLIP2 = dict(
    vision_config=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=4, num_patches=16
    ),
    text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
    num_labels=3,
)
SHAPES = torch.tensor([[3, 5], [4, 4]])  # a 3x5 image padded to 16 patches, and a full 4x4 one
LENGTH = 16


def _siglip2(seed: int = 0) -> tf.Siglip2ForImageClassification:
    torch.manual_seed(seed)
    return tf.Siglip2ForImageClassification(tf.Siglip2Config(**TINY_SIGLIP2)).eval()


def _inputs(shapes: torch.Tensor = SHAPES, length: int = LENGTH, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(shapes), length, dtype=torch.long)
    for row, (height, width) in enumerate(shapes.tolist()):
        mask[row, : height * width] = 1
    patches = torch.randn(len(shapes), length, 3 * 4 * 4, generator=generator) * mask[..., None]
    return {"pixel_values": patches, "pixel_attention_mask": mask, "spatial_shapes": shapes}


def _logits(model, inputs: dict[str, torch.Tensor], **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


def _randomize(model: torch.nn.Module, marker: str = "mona_", seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and marker in name:
                p.add_(0.2 * torch.randn(p.shape, generator=generator))


def _alone(inputs: dict[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
    """Image ``row`` of the batch on its own, without padding."""
    height, width = inputs["spatial_shapes"][row].tolist()
    return {
        "pixel_values": inputs["pixel_values"][row : row + 1, : height * width],
        "pixel_attention_mask": inputs["pixel_attention_mask"][row : row + 1, : height * width],
        "spatial_shapes": inputs["spatial_shapes"][row : row + 1],
    }


def test_each_image_is_filtered_on_its_own_grid():
    inputs = _inputs()
    plain = _logits(_siglip2(), inputs)
    model = get_peft_model(_siglip2(), mona_peft.MonaConfig(modules_to_save=["classifier"])).eval()
    _randomize(model)
    batched = _logits(model, inputs)
    assert (batched - plain).abs().max() > 1e-2
    for row in range(len(SHAPES)):
        torch.testing.assert_close(_logits(model, _alone(inputs, row)), batched[row : row + 1], rtol=0, atol=1e-5)


def test_blocks_match_the_reference_per_image_in_float64():
    """Each image's tokens through the unmodified block (padding masked as keys) plus the reference Mona on that
    image's grid equal the adapted block's output on those tokens: padding never reaches an image's filter."""
    model = get_peft_model(_siglip2(), mona_peft.MonaConfig()).double().eval()
    layer = next(m for m in model.modules() if isinstance(m, MonaLayer))
    _randomize(layer)
    grids = [tuple(shape) for shape in SHAPES.tolist()]
    layer.token_grid.size = grids
    hidden = torch.randn(2, LENGTH, 32, dtype=torch.float64)
    mask = torch.zeros(2, 1, LENGTH, LENGTH, dtype=torch.float64)
    for row, (height, width) in enumerate(grids):
        mask[row, :, :, height * width :] = torch.finfo(torch.float64).min
    mona_attn, mona_mlp = reference_monas(layer)
    with torch.no_grad():
        actual = layer(hidden, mask)
        for row, (height, width) in enumerate(grids):
            tokens = hidden[row : row + 1, : height * width]
            expected = reference_pre_norm_block(
                layer.base_layer, tokens, (height, width), mona_attn, mona_mlp, "layer_norm2",
                lambda block, x: block.mlp(block.layer_norm2(x)), None,
            )  # fmt: skip
            got = actual[row : row + 1, : height * width]
            assert (got - expected).abs().max() / expected.abs().max() < 1e-12
    assert (actual - layer.base_layer(hidden, mask)).abs().max() > 1e-3


def test_a_mixed_batch_routes_each_row_with_its_own_grid():
    inputs = _inputs(torch.tensor([[3, 5], [4, 4], [2, 6], [4, 4]]))
    model = get_peft_model(_siglip2(), mona_peft.MonaConfig(modules_to_save=["classifier"]), adapter_name="a")
    model.add_adapter("b", mona_peft.MonaConfig(modules_to_save=["classifier"]))
    _randomize(model, ".a.", seed=1)
    _randomize(model, ".b.", seed=2)
    model.eval()
    alone = {}
    for name in ("a", "b"):
        model.set_adapter(name)
        alone[name] = _logits(model, inputs)
    routing = ["b", "a", "a", "b"]
    mixed = _logits(model, inputs, adapter_names=routing)
    for row, name in enumerate(routing):
        torch.testing.assert_close(mixed[row], alone[name][row], rtol=0, atol=1e-5)


def test_every_method_adapts_the_tower():
    inputs = _inputs()
    plain = _logits(_siglip2(), inputs)
    for name in methods():
        if name.startswith("vpt"):
            with pytest.raises(ValueError, match="VPT does not support model_type 'siglip2_vision_model'"):
                build_method(_siglip2(), name, ["classifier"])
            continue
        model = build_method(_siglip2(), name, ["classifier"]).eval()
        _randomize(model, "" if name in ("full", "bitfit", "partial1", "linear") else ".")
        assert (_logits(model, inputs) - plain).abs().max() > 1e-3, name


def test_a_mona_adapted_siglip2_reloads_in_a_fresh_process(tmp_path):
    inputs = _inputs()
    _siglip2().save_pretrained(tmp_path / "base")
    model = get_peft_model(_siglip2(), mona_peft.MonaConfig(inner_dim=8, modules_to_save=["classifier"])).eval()
    _randomize(model)
    expected = _logits(model, inputs)
    model.save_pretrained(tmp_path / "adapter")
    torch.save(inputs, tmp_path / "inputs.pt")
    code = (
        "import sys, torch, mona_peft\n"
        "from peft import PeftModel\n"
        "from transformers import Siglip2ForImageClassification\n"
        "base, adapter, inputs = sys.argv[1:]\n"
        "model = PeftModel.from_pretrained(Siglip2ForImageClassification.from_pretrained(base), adapter).eval()\n"
        "with torch.no_grad():\n"
        "    torch.save(model(**torch.load(inputs)).logits, adapter + '/logits.pt')\n"
    )
    run_in_fresh_process(code, tmp_path / "base", tmp_path / "adapter", tmp_path / "inputs.pt")
    torch.testing.assert_close(torch.load(tmp_path / "adapter" / "logits.pt"), expected, rtol=1e-6, atol=1e-6)
