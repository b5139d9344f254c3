"""Mona's module and placement equal an independent reference written from the paper."""

import pytest
import torch
from conftest import build_tiny_model
from mona_reference import (
    post_attention_stream,
    reference_cnn_block,
    reference_monas,
    reference_pre_norm_block,
    reference_swin_block,
    reference_vit_block,
)
from peft import get_peft_model
from transformers import SwinConfig, SwinModel, ViTConfig, ViTModel

import mona_peft
from mona_peft.tuners.mona.layer import MonaLayer


def _close(actual, expected, rtol=1e-5):
    scale = expected.abs().max().clamp_min(1e-6)
    assert (actual - expected).abs().max() / scale < rtol, (actual - expected).abs().max()


@pytest.mark.parametrize("init_weights", ["official", "identity"])
def test_swin_block_matches_official_placement(init_weights):
    torch.manual_seed(0)
    config = SwinConfig(image_size=32, patch_size=4, embed_dim=32, depths=[2], num_heads=[2], window_size=4)
    model = get_peft_model(SwinModel(config), mona_peft.MonaConfig(init_weights=init_weights)).eval()
    layers = [m for m in model.modules() if isinstance(m, MonaLayer)]
    assert len(layers) == 2
    for layer in layers:  # perturb every parameter so no piece is accidentally inert (zero up, tiny gamma)
        for name, p in layer.named_parameters():
            if "mona_" in name:
                p.data.normal_(0, 0.2)
    hw = (8, 8)
    hidden = torch.randn(3, 64, 32)
    for layer in layers:  # the second block is shifted: both window modes are covered
        mona_attn, mona_mlp = reference_monas(layer)
        with torch.no_grad():
            expected = reference_swin_block(layer.base_layer, hidden, hw, mona_attn, mona_mlp)
            actual = layer(hidden, hw)[0]
        _close(actual, expected)
        # mona_attn really feeds the MLP: dropping it changes the result
        mona_attn.project2.bias.data += 1.0
        with torch.no_grad():
            changed = reference_swin_block(layer.base_layer, hidden, hw, mona_attn, mona_mlp)
        assert not torch.allclose(changed, actual, atol=1e-3)


@pytest.mark.parametrize("prefix_mode", ["adapt", "skip"])
def test_vit_block_matches_reference(prefix_mode):
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    model = get_peft_model(ViTModel(config), mona_peft.MonaConfig(prefix_tokens=prefix_mode)).eval()
    (layer,) = [m for m in model.modules() if isinstance(m, MonaLayer)]
    for name, p in layer.named_parameters():
        if "mona_" in name:
            p.data.normal_(0, 0.2)
    hw = (3, 5)  # non-square grid
    hidden = torch.randn(2, 1 + 15, 32)
    layer.token_grid.size = hw
    mona_attn, mona_mlp = reference_monas(layer, num_prefix=1, prefix_mode=prefix_mode)
    with torch.no_grad():
        expected = reference_vit_block(layer.base_layer, hidden, hw, mona_attn, mona_mlp)
        actual = layer(hidden)
    _close(actual, expected)
    # In one block, a skipped CLS token sees only the base block (attention reads the block input);
    # an adapted one does not.
    with torch.no_grad():
        base_cls = layer.base_layer(hidden)[:, 0]
    assert torch.allclose(actual[:, 0], base_cls, atol=1e-6) == (prefix_mode == "skip")


def _rope(model, hw):
    """DINOv3's rotary position embeddings of an ``hw`` patch grid (every block gets them from the model)."""
    embeddings = next(m for m in model.modules() if type(m).__name__ == "DINOv3ViTRopePositionEmbedding")
    patch = model.config.patch_size
    return None, embeddings(torch.zeros(1, 3, hw[0] * patch, hw[1] * patch, dtype=torch.float64))


#: Per architecture: prefix tokens, the second norm of a block, its MLP branch (what the block adds to the stream after
#: the attention residual add) and the arguments after the hidden states in its call, from the model and the grid.
TOWERS = {
    "clip_vision_model": (1, "layer_norm2", lambda block, x: block.mlp(block.layer_norm2(x)), lambda m, hw: (None,)),
    "siglip_vision_model": (0, "layer_norm2", lambda block, x: block.mlp(block.layer_norm2(x)), lambda m, hw: (None,)),
    # LayerScale scales the MLP branch; RoPE rotates the patch tokens inside the attention
    "dinov3_vit": (3, "norm2", lambda block, x: block.layer_scale2(block.mlp(block.norm2(x))), _rope),
}


@pytest.mark.parametrize("model_type", sorted(TOWERS))
def test_block_matches_reference_in_float64(model_type):
    """The unmodified transformers block plus the reference Mona at the paper's two places, in float64: round-off."""
    num_prefix, norm, mlp, args = TOWERS[model_type]
    model = get_peft_model(build_tiny_model(model_type, num_hidden_layers=1), mona_peft.MonaConfig()).double().eval()
    (layer,) = [m for m in model.modules() if isinstance(m, MonaLayer)]
    for name, p in layer.named_parameters():
        if "mona_" in name:
            p.data.normal_(0, 0.2)
    hw = (3, 5)  # non-square
    layer.token_grid.size = hw
    hidden = torch.randn(2, num_prefix + 15, layer.channels, dtype=torch.float64)
    args = args(model.base_model.model, hw)
    mona_attn, mona_mlp = reference_monas(layer, num_prefix=num_prefix)
    with torch.no_grad():
        expected = reference_pre_norm_block(layer.base_layer, hidden, hw, mona_attn, mona_mlp, norm, mlp, *args)
        actual = layer(hidden, *args)
    _close(actual, expected, rtol=1e-12)
    plain = layer.base_layer(hidden, *args)
    assert (actual - plain).abs().max() > 1e-3  # Mona changed the block


@pytest.mark.parametrize("model_type", ["convnext", "convnextv2", "dinov3_convnext"])
def test_convnext_block_gets_one_mona_after_its_residual_add_in_float64(model_type):
    """The authors' placement for CNNs: one Mona after each residual block, on the map's pixels as tokens."""
    model = get_peft_model(build_tiny_model(model_type), mona_peft.MonaConfig()).double().eval()
    layers = [m for m in model.modules() if isinstance(m, MonaLayer)]
    assert len(layers) == 2 and all(not layer.has_mona("default", "attn") for layer in layers)
    for layer in layers:
        for name, p in layer.named_parameters():
            if "mona_" in name:
                p.data.normal_(0, 0.2)
        (mona,) = reference_monas(layer, sites=("mlp",))
        features = torch.randn(2, layer.channels, 3, 5, dtype=torch.float64)  # non-square map
        with torch.no_grad():
            expected = reference_cnn_block(layer.base_layer, features, mona)
            actual = layer(features)
        _close(actual, expected, rtol=1e-12)
        assert (actual - layer.base_layer(features)).abs().max() > 1e-3


@pytest.mark.parametrize("index", [0, 1], ids=["first stage", "pooling block of the second stage"])
def test_hiera_block_matches_the_reference_on_the_rerolled_grid_in_float64(index):
    """Hiera's tokens are unrolled: the reference puts the block's stream in row-major order with transformers' own
    ``reroll`` (independent of mona_peft's order), applies Mona on that grid and the MLP per token, and compares with
    the adapted block's output rerolled the same way. The second case pools 16x16 to 8x8 and widens 16 -> 32."""
    model = get_peft_model(build_tiny_model("hiera"), mona_peft.MonaConfig()).double().eval()
    layer = [m for m in model.modules() if isinstance(m, MonaLayer)][index]
    for name, p in layer.named_parameters():
        if "mona_" in name:
            p.data.normal_(0, 0.2)
    encoder = model.base_model.model.hiera.encoder
    layer.token_grid.size = (16, 16)
    hidden = torch.randn(2, 256, 16, dtype=torch.float64)  # the first stage's 16x16 tokens, unrolled
    mona_attn, mona_mlp = reference_monas(layer)
    block = layer.base_layer
    with torch.no_grad():
        stream = encoder.reroll(post_attention_stream(block, "layernorm_after", hidden), stage_idx=index)
        height, width = stream.shape[1:3]
        x = mona_attn(stream.flatten(1, 2), (height, width))
        x = mona_mlp(x + block.mlp(block.layernorm_after(x)), (height, width))
        actual = encoder.reroll(layer(hidden)[0], stage_idx=index).flatten(1, 2)
        plain = encoder.reroll(block(hidden)[0], stage_idx=index).flatten(1, 2)
    assert (height, width) == ((16, 16), (8, 8))[index] and layer.channels == (16, 32)[index]
    _close(actual, x, rtol=1e-12)
    assert (actual - plain).abs().max() > 1e-3
