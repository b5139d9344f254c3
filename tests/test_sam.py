"""SAM's vision encoder: maps laid out channels last, windowed and global attention blocks, and SAM's own prompt
encoder and mask decoder on top."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from conftest import run_in_fresh_process
from mona_reference import post_attention_stream, reference_monas
from peft import PeftModel, get_peft_model

import mona_peft
from mona_peft.tuners.architectures import head_modules
from mona_peft.tuners.methods import build_method
from mona_peft.tuners.mona.layer import MonaLayer
from mona_peft.tuners.registry import methods

#: Two blocks on an 8x8 map: the first attends in 3x3 windows (the map is padded to 9x9), the second globally.
#: initializer_range: SAM's default (1e-10) gives a random encoder whose embeddings do not depend on the image.
TINY_SAM = dict(
    vision_config=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, image_size=64, patch_size=8,
        output_channels=16, window_size=3, global_attn_indexes=[1], num_pos_feats=8, initializer_range=0.02,
    ),
    prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
    mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
                             iou_head_hidden_dim=16),
)  # fmt: skip
BOX = torch.tensor([[[8.0, 12.0, 40.0, 52.0]]])  # one box prompt per image (x0, y0, x1, y1) in pixels


def _sam(seed: int = 0) -> tf.SamModel:
    torch.manual_seed(seed)
    return tf.SamModel(tf.SamConfig(**TINY_SAM)).eval()


def _randomize(model: torch.nn.Module, prefix: str) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if prefix in name:
                p.normal_(0, 0.2, generator=generator)


def _masks(model, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=pixel_values, input_boxes=BOX.expand(len(pixel_values), -1, -1)).pred_masks


def test_blocks_match_the_reference_with_windowed_and_global_attention_in_float64():
    """The unmodified SAM block plus the reference Mona at the paper's two places, on a channels-last map."""
    model = get_peft_model(_sam(), mona_peft.MonaConfig()).double().eval()
    layers = [m for m in model.modules() if isinstance(m, MonaLayer)]
    assert [layer.base_layer.window_size for layer in layers] == [3, 0]
    hidden = torch.randn(2, 8, 8, 32, dtype=torch.float64)
    for layer in layers:
        _randomize(layer, "mona_")
        mona_attn, mona_mlp = reference_monas(layer)
        block = layer.base_layer
        with torch.no_grad():
            x = post_attention_stream(block, "layer_norm2", hidden)  # the plain block up to its attention add
            x = mona_attn(x.reshape(2, 64, 32), (8, 8)).reshape(2, 8, 8, 32)
            x = x + block.mlp(block.layer_norm2(x))
            expected = mona_mlp(x.reshape(2, 64, 32), (8, 8)).reshape(2, 8, 8, 32)
            actual = layer(hidden)
        assert (actual - expected).abs().max() / expected.abs().max() < 1e-12
        assert (actual - block(hidden)).abs().max() > 1e-3


def test_every_method_adapts_the_encoder_under_sams_own_decoder():
    """Each method on SamModel, with the mask decoder trained in full: the box prompt's masks change, and VPT (whose
    prompts are tokens) is refused naming the architecture."""
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    plain = _masks(_sam(), x)
    heads = head_modules(_sam())
    assert "mask_decoder" in heads and "vision_encoder" not in heads
    for name in methods():
        if name.startswith("vpt"):
            with pytest.raises(ValueError, match="VPT does not support model_type 'sam_vision_model'"):
                build_method(_sam(), name, ["mask_decoder"])
            continue
        model = build_method(_sam(), name, ["mask_decoder"]).eval()
        _randomize(model, "mona_" if name == "mona" else ".")  # every trainable piece moves
        masks = _masks(model, x)
        assert masks.shape == plain.shape and torch.isfinite(masks).all(), name
        assert (masks - plain).abs().max() > 1e-2 * plain.abs().max(), name  # a random decoder's masks are small


def test_a_mona_adapted_sam_reloads_in_a_fresh_process(tmp_path):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    _sam().save_pretrained(tmp_path / "base")
    model = get_peft_model(_sam(), mona_peft.MonaConfig(inner_dim=8, modules_to_save=["mask_decoder"])).eval()
    _randomize(model, "mona_")
    expected = _masks(model, x)
    model.save_pretrained(tmp_path / "adapter")
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch, mona_peft\n"
        "from peft import PeftModel\n"
        "from transformers import SamModel\n"
        "base, adapter, x = sys.argv[1:]\n"
        "model = PeftModel.from_pretrained(SamModel.from_pretrained(base), adapter).eval()\n"
        f"boxes = torch.tensor({BOX.tolist()}).expand(2, -1, -1)\n"
        "with torch.no_grad():\n"
        "    torch.save(model(pixel_values=torch.load(x), input_boxes=boxes).pred_masks, adapter + '/masks.pt')\n"
    )
    run_in_fresh_process(code, tmp_path / "base", tmp_path / "adapter", tmp_path / "x.pt")
    assert PeftModel  # the reload above is PEFT's own path, in a process that only imported mona_peft
    torch.testing.assert_close(torch.load(tmp_path / "adapter" / "masks.pt"), expected)
