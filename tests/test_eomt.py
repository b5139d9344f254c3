"""EoMT: a plain ViT whose last blocks also carry the mask queries, which join in front of the token sequence there.

EoMT has no image classifier (its model is the segmenter), so it is tested here rather than in the checklist: Mona
equals the float64 reference before and after the queries join, every method adapts it with its own heads trained in
full, and a Mona adapter reloads in a fresh process. Then EoMT built around a plain ViT checkpoint (the segmentation
script's ``--segmenter eomt``): its blocks compute the ViT's, its positions resize, its semantic scores and targets.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from conftest import build_tiny_model, run_in_fresh_process
from mona_reference import reference_monas, reference_pre_norm_block
from peft import get_peft_model

import mona_peft
from mona_peft.tasks.semantic_segmentation.model import build_eomt, mask_targets, semantic_logits
from mona_peft.tuners.architectures import head_modules
from mona_peft.tuners.methods import build_method
from mona_peft.tuners.mona.layer import MonaLayer
from mona_peft.tuners.registry import methods

#: Three blocks on a 4x4 grid, CLS and 2 registers; 5 queries join before the last block.
TINY_EOMT = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8,
    num_register_tokens=2, num_queries=5, num_blocks=1, num_upscale_blocks=1, num_labels=3,
)  # fmt: skip
HEADS = ["query", "upscale_block", "mask_head", "class_predictor"]


def _eomt(seed: int = 0) -> tf.EomtForUniversalSegmentation:
    torch.manual_seed(seed)
    return tf.EomtForUniversalSegmentation(tf.EomtConfig(**TINY_EOMT)).eval()


def _outputs(model, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(pixel_values=pixel_values)
    return torch.cat([out.class_queries_logits.flatten(1), out.masks_queries_logits.flatten(1)], dim=1)


def _randomize(model: torch.nn.Module, marker: str) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and marker in name:
                p.add_(0.2 * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("index", [0, 2], ids=["before the queries", "with the queries"])
def test_blocks_match_the_reference_before_and_after_the_queries_join_in_float64(index):
    model = get_peft_model(_eomt(), mona_peft.MonaConfig()).double().eval()
    layer = [m for m in model.modules() if isinstance(m, MonaLayer)][index]
    _randomize(layer, "mona_")
    hw = (3, 5)  # non-square
    num_prefix = 3 + (TINY_EOMT["num_queries"] if index == 2 else 0)  # queries, CLS, registers
    layer.token_grid.size = hw
    hidden = torch.randn(2, num_prefix + 15, 32, dtype=torch.float64)
    mona_attn, mona_mlp = reference_monas(layer, num_prefix=num_prefix)
    with torch.no_grad():
        expected = reference_pre_norm_block(
            layer.base_layer, hidden, hw, mona_attn, mona_mlp, "norm2", lambda b, x: b.layer_scale2(b.mlp(b.norm2(x)))
        )
        actual = layer(hidden)
    assert (actual - expected).abs().max() / expected.abs().max() < 1e-12
    assert (actual - layer.base_layer(hidden)).abs().max() > 1e-3


def test_every_method_adapts_eomt_and_trains_its_own_heads():
    """The heads are the model's own modules (declared in its spec); each method changes the queries' classes and
    masks, and the loss reaches only its parameters and the heads. VPT is refused naming the architecture."""
    assert head_modules(_eomt()) == HEADS
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = _outputs(_eomt(), x)
    for name in methods():
        if name.startswith("vpt"):
            with pytest.raises(ValueError, match="VPT does not support model_type 'eomt'"):
                build_method(_eomt(), name, HEADS)
            continue
        model = build_method(_eomt(), name, HEADS).eval()
        _randomize(model, "" if name in ("full", "bitfit", "partial1", "linear") else ".")
        assert (_outputs(model, x) - plain).abs().max() > 1e-3, name
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(pixel_values=x)
        (out.class_queries_logits.square().mean() + out.masks_queries_logits.square().mean()).backward()
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        reached = {n for n, p in model.named_parameters() if p.grad is not None}
        assert reached <= trainable, (name, sorted(reached - trainable)[:3])
        assert any("class_predictor" in n for n in reached), name


def test_a_mona_adapted_eomt_reloads_in_a_fresh_process(tmp_path):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _eomt().save_pretrained(tmp_path / "base")
    model = get_peft_model(_eomt(), mona_peft.MonaConfig(inner_dim=8, modules_to_save=HEADS)).eval()
    _randomize(model, "mona_")
    expected = _outputs(model, x)
    model.save_pretrained(tmp_path / "adapter")
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch, mona_peft\n"
        "from peft import PeftModel\n"
        "from transformers import EomtForUniversalSegmentation\n"
        "base, adapter, x = sys.argv[1:]\n"
        "model = PeftModel.from_pretrained(EomtForUniversalSegmentation.from_pretrained(base), adapter).eval()\n"
        "with torch.no_grad():\n"
        "    out = model(pixel_values=torch.load(x))\n"
        "torch.save(torch.cat([out.class_queries_logits.flatten(1), out.masks_queries_logits.flatten(1)], 1),\n"
        "           adapter + '/out.pt')\n"
    )
    run_in_fresh_process(code, tmp_path / "base", tmp_path / "adapter", tmp_path / "x.pt")
    torch.testing.assert_close(torch.load(tmp_path / "adapter" / "out.pt"), expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------- EoMT around a plain ViT


@pytest.mark.parametrize("model_type", ["vit", "dinov2_with_registers"])
def test_eomt_built_around_a_plain_vit_computes_the_vits_blocks_before_the_queries_join(model_type, tmp_path):
    """The ViT's weights land in EoMT's encoder (renamed; the ViT's CLS position folded into EoMT's CLS token): each
    block before the queries join returns exactly what the ViT's block returns on the same image."""
    build_tiny_model(model_type, num_hidden_layers=6).save_pretrained(tmp_path)
    eomt = build_eomt(str(tmp_path), ["a", "b"], num_queries=4).eval()
    vit = tf.AutoModel.from_pretrained(tmp_path).eval()
    assert eomt.config.num_blocks == 2 and eomt.config.backbone_checkpoint == str(tmp_path)
    outputs = {}
    for index, block in enumerate(eomt.layers):
        block.register_forward_hook(lambda _m, _a, out, i=index: outputs.__setitem__(i, out))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = vit(pixel_values=x, output_hidden_states=True).hidden_states[1:]
        eomt(pixel_values=x)
    for index in range(4):
        torch.testing.assert_close(outputs[index], expected[index], rtol=0, atol=1e-6)
    assert outputs[4].shape[1] == expected[4].shape[1] + 4  # the queries joined


def test_eomt_at_another_resolution_resizes_the_vits_positions_and_other_checkpoints_are_refused(tmp_path):
    build_tiny_model("vit").save_pretrained(tmp_path / "vit")
    eomt = build_eomt(str(tmp_path / "vit"), ["a", "b"], image_size=48, num_queries=4)
    assert eomt.embeddings.position_embeddings.weight.shape == (36, 32)  # 6x6 patches of 8 pixels
    with torch.no_grad():
        out = eomt(pixel_values=torch.randn(1, 3, 48, 48))
    assert out.masks_queries_logits.shape == (1, 4, 24, 24)
    build_tiny_model("swin").save_pretrained(tmp_path / "swin")
    with pytest.raises(ValueError, match="'swin' checkpoint; EoMT takes these plain ViTs: vit, dinov2"):
        build_eomt(str(tmp_path / "swin"), ["a", "b"])


def test_semantic_scores_of_a_mask_classifier_and_its_targets():
    """A pixel's class scores are the queries' class probabilities (no "no object") weighted by their masks; the
    targets hold one mask per class present, and ignored pixels are in none."""
    labels = torch.tensor([[[0, 2], [255, 2]]])
    targets = mask_targets(labels, 255)
    assert targets["class_labels"][0].tolist() == [0, 2]
    assert targets["mask_labels"][0].tolist() == [[[1, 0], [0, 0]], [[0, 1], [0, 1]]]
    outputs = tf.models.eomt.modeling_eomt.EomtForUniversalSegmentationOutput(
        class_queries_logits=torch.randn(1, 3, 4), masks_queries_logits=torch.randn(1, 3, 2, 2)
    )
    scores = semantic_logits(outputs)
    probabilities = outputs.class_queries_logits.softmax(-1)[0, :, :3]
    expected = sum(probabilities[q, :, None, None] * outputs.masks_queries_logits[0, q].sigmoid() for q in range(3))
    torch.testing.assert_close(scores[0], expected)
