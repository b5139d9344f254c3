"""Every supported architecture, its token grid and prefix tokens; clear errors for the rest."""

import pytest
import torch
import transformers as tf
from conftest import TINY_MODELS, TINY_NUM_BLOCKS, WITHOUT_CLASSIFIER, build_tiny_model
from peft import get_peft_model

import mona_peft
from mona_peft.tuners.mona.layer import MonaLayer

# DeiT with its distillation head (both prefix tokens reach a head); four register tokens.
OVERRIDES = {
    "deit": dict(model_class=tf.DeiTForImageClassificationWithTeacher),
    "dinov2_with_registers": dict(num_register_tokens=4),
}
PREFIX_TOKENS = {
    "swin": 0, "swinv2": 0, "vit": 1, "deit": 2, "dinov2": 1, "dinov2_with_registers": 5, "clip_vision_model": 1,
    "siglip_vision_model": 0, "dinov3_vit": 3, "convnext": 0, "convnextv2": 0,
    "dinov3_convnext": 0, "hiera": 0, "timm:VisionTransformer": 3, "timm:SwinTransformer": 0, "timm:ConvNeXt": 0,
}  # fmt: skip


def _build(model_type: str):
    return build_tiny_model(model_type, **OVERRIDES.get(model_type, {}))


def _adapt(model_type, x=None, **config):
    """Base logits on ``x`` (computed before injection, which modifies the base in place) and the adapted model."""
    base = _build(model_type)  # seed 0, eval mode
    with torch.no_grad():
        plain = None if x is None else base(pixel_values=x).logits
    return plain, get_peft_model(base, mona_peft.MonaConfig(**config)).eval()


def test_registry_covers_the_tested_architectures():
    assert set(mona_peft.supported_model_types()) == set(TINY_MODELS) | WITHOUT_CLASSIFIER


@pytest.mark.parametrize("model_type", sorted(TINY_MODELS))
def test_every_block_is_adapted_and_changes_the_output(model_type):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plain, model = _adapt(model_type, x)
    layers = [m for m in model.modules() if isinstance(m, MonaLayer)]
    blocks = [
        m for m in model.modules() if type(m).__name__ == mona_peft.SUPPORTED_ARCHITECTURES[model_type].block_class
    ]
    assert len(layers) == len(blocks) == TINY_NUM_BLOCKS[model_type]
    assert all(layer.architecture.num_prefix_tokens == PREFIX_TOKENS[model_type] for layer in layers)
    with torch.no_grad():
        adapted = model(pixel_values=x).logits
        with model.disable_adapter():
            disabled = model(pixel_values=x).logits
    assert (adapted - plain).abs().max() > 1e-6
    torch.testing.assert_close(disabled, plain)


@pytest.mark.parametrize("model_type", sorted(TINY_MODELS))
def test_identity_init_starts_as_the_base_model(model_type):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plain, model = _adapt(model_type, x, init_weights="identity")
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=x).logits, plain, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "model_type",
    ["vit", "deit", "dinov2", "dinov2_with_registers", "dinov3_vit", "clip_vision_model", "siglip_vision_model"],
)
def test_non_square_inputs_use_the_real_grid(model_type):
    _, model = _adapt(model_type)
    layer = next(m for m in model.modules() if isinstance(m, MonaLayer))
    x = torch.randn(2, 3, 24, 48)
    kwargs = {} if model_type.startswith("dinov") else {"interpolate_pos_encoding": True}
    with torch.no_grad():
        out = model(pixel_values=x, **kwargs).logits
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert layer.token_grid.size == (3, 6)


def test_swin_input_that_needs_window_padding():
    _, model = _adapt("swin")
    x = torch.randn(2, 3, 36, 28)  # 9x7 patches: not a multiple of the 4x4 window
    with torch.no_grad():
        out = model(pixel_values=x).logits
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_swin_backbone_inside_upernet():
    torch.manual_seed(0)
    backbone = tf.SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = tf.UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_in_channels=32, num_labels=4)
    base = tf.UperNetForSemanticSegmentation(config).eval()
    model = get_peft_model(base, mona_peft.MonaConfig(modules_to_save=["decode_head"])).eval()
    assert sum(isinstance(m, MonaLayer) for m in model.modules()) == 4
    assert not any(isinstance(m, MonaLayer) for m in model.base_model.model.decode_head.modules())
    with torch.no_grad():
        logits = model(pixel_values=torch.randn(1, 3, 64, 64)).logits
    assert logits.shape == (1, 4, 64, 64)


def test_unsupported_architecture_names_the_supported_ones():
    model = tf.ResNetForImageClassification(tf.ResNetConfig(depths=[1, 1], hidden_sizes=[8, 16], num_labels=2))
    with pytest.raises(mona_peft.UnsupportedArchitectureError, match="resnet") as error:
        get_peft_model(model, mona_peft.MonaConfig())
    for model_type in TINY_MODELS:
        assert model_type in str(error.value)


def test_target_modules_must_be_blocks():
    base = _build("vit")
    with pytest.raises(ValueError, match="ViTLayer.*a Linear"):
        get_peft_model(base, mona_peft.MonaConfig(target_modules=["q_proj"]))


def test_target_modules_can_select_some_blocks():
    base = _build("swin")
    model = get_peft_model(base, mona_peft.MonaConfig(target_modules=r".*layers\.1\.blocks\.\d+"))
    adapted = [name for name, m in model.named_modules() if isinstance(m, MonaLayer)]
    assert len(adapted) == 2 and all("layers.1." in name for name in adapted)


def test_grid_that_does_not_fit_the_tokens_reports_both_shapes():
    _, model = _adapt("vit")
    layer = next(m for m in model.modules() if isinstance(m, MonaLayer))
    layer.token_grid.size = (5, 5)
    with pytest.raises(ValueError, match=r"1 prefix tokens \+ a 5x5 patch grid = 26 tokens.*\(2, 17, 32\)"):
        layer(torch.randn(2, 17, 32))
